//! One module per subcommand.

pub(crate) mod bench;
pub(crate) mod bench_egress;
pub(crate) mod bench_rotate;
pub(crate) mod demo;
pub(crate) mod deploy;
pub(crate) mod export;
pub(crate) mod keys;
pub(crate) mod policy;
pub(crate) mod principal;
pub(crate) mod serve;
pub(crate) mod subject;
pub(crate) mod tls;

/// A multi-threaded runtime for one command.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Logs to stderr with the configured filter.
pub(crate) fn init_tracing(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
