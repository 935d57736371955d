//! `custody serve` and `custody init`.

use anyhow::Context;
use custody_server::{DataDir, ServerState};

use crate::Format;
use crate::config::Settings;
use crate::exit::{Exit, fail};

/// Runs the server until SIGINT or SIGTERM; SIGHUP reloads the policy directory.
pub(crate) fn run(settings: &Settings) -> anyhow::Result<()> {
    super::init_tracing(&settings.log);
    let rt = super::runtime()?;
    rt.block_on(async {
        let cfg = settings.server.clone();
        let state = ServerState::open(cfg.clone()).map_err(|e| fail(Exit::BadInput, e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "serving plaintext HTTP on a non-loopback address; put TLS in front of it");
        }
        let policies = state.policy.current();
        tracing::info!(
            %addr,
            data_dir = %state.dirs.root.display(),
            jurisdiction = %cfg.jurisdiction,
            policy_set = %policies.hash(),
            policies = policies.ids().len(),
            "custody serving"
        );
        eprintln!(
            "custody serving http://{addr} (jurisdiction {}, data dir {})",
            cfg.jurisdiction,
            state.dirs.root.display()
        );
        eprintln!("  API description: http://{addr}/openapi.json   metrics: http://{addr}/metrics");
        if state.auth.store().principals().map(|p| p.is_empty()).unwrap_or(false) {
            eprintln!("  no principals yet; in another terminal try:");
            eprintln!("    custody principal add --id alice --kind engineer --location US --employer provider");
        }
        let hup_state = state.clone();
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                let _ = hup_state.reload_and_log().await;
            }
        });
        custody_server::setup::serve(state, listener, shutdown_signal()).await?;
        tracing::info!("custody stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}

/// Creates and seeds the data dir and its key material, then exits.
pub(crate) fn init(settings: &Settings, format: Format) -> anyhow::Result<()> {
    let cfg = settings.server.clone();
    let dirs = DataDir::prepare(&cfg).map_err(|e| fail(Exit::Error, e.to_string()))?;
    // Opening the state creates the KEK, the databases and the system keys.
    let state = ServerState::open(cfg).map_err(|e| fail(Exit::BadInput, e.to_string()))?;
    let hash = state.policy.current().hash().to_string();
    drop(state);
    match format {
        Format::Json => println!(
            "{}",
            serde_json::json!({
                "data_dir": dirs.root, "schema": dirs.schema, "policies": dirs.policies,
                "kek": dirs.kek, "events": dirs.events, "policy_set": hash,
            })
        ),
        Format::Human => {
            println!("initialised {}", dirs.root.display());
            println!("  schema      {}", dirs.schema.display());
            println!("  policies    {} (set {hash})", dirs.policies.display());
            println!("  KEK         {} (mode 0600; keep it apart from backups of records)", dirs.kek.display());
            println!("  events      {}", dirs.events.display());
        }
    }
    Ok(())
}
