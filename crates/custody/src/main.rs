//! `custody`: the trusted-provider data boundary's server and command line.
//!
//! One binary: `custody serve` runs the guarded API; the other subcommands administer a data
//! dir (principals, policies) either through a running server's operator socket or, when no
//! server runs, directly.

mod admin_client;
mod cmd;
mod config;
mod exit;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::SettingArgs;
use crate::exit::Exit;

/// mimalloc as the process allocator: faster than glibc's for the many small, cross-thread
/// allocations of request handling (see the workspace Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// custody: a jurisdiction's user data, held by a trusted provider, every access decided by
/// Cedar policy and recorded before anything is released.
#[derive(Debug, Parser)]
#[command(name = "custody", version, propagate_version = true, max_term_width = 100)]
#[command(after_help = "Settings come from flags, then CUSTODY_* environment variables, then custody.toml, \
then defaults. Start with `custody demo` or `custody serve`; add principals with `custody principal add`.")]
struct Cli {
    #[command(flatten)]
    settings: SettingArgs,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Human, global = true, env = "CUSTODY_FORMAT")]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

/// How commands print their results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Readable text.
    Human,
    /// One JSON document.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Play the whole model end to end: custody, the clips app, seeded users, and the story
    Demo(cmd::demo::DemoArgs),
    /// Run the guarded API (creates and seeds the data dir on first start)
    Serve,
    /// Create the data dir, its key file and the sample schema and policies, then exit
    Init,
    /// Register, revoke and list principals
    #[command(subcommand)]
    Principal(cmd::principal::PrincipalCmd),
    /// Check and reload Cedar policy sets
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCmd),
    /// Subject rights: export everything about a subject, or erase them
    #[command(subcommand)]
    Subject(cmd::subject::SubjectCmd),
    /// Export data across the boundary through the egress gateway (transformed, budgeted, logged)
    Export(cmd::export::ExportArgs),
    /// Key custody: KEK status and rotation
    #[command(subcommand)]
    Keys(cmd::keys::KeysCmd),
    /// Measure guarded vs unguarded reads over loopback HTTP
    Bench(cmd::bench::BenchArgs),
    /// Review commits for trusted deployment (reviewer keys, approvals)
    #[command(subcommand)]
    Review(cmd::deploy::ReviewCmd),
    /// Build a reviewed commit in a clean checkout and attest it (in-toto/SLSA in DSSE)
    Build(cmd::deploy::BuildArgs),
    /// Measure a workload binary, get a short-lived credential for it, and exec it
    Run(cmd::deploy::RunArgs),
    /// Revoke attested artifacts
    #[command(subcommand)]
    Artifact(cmd::deploy::ArtifactCmd),
    /// Create TLS certificates: a provider CA, node and client certificates
    #[command(subcommand)]
    Tls(cmd::tls::TlsCmd),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match config::Settings::resolve(&cli.settings) {
        Ok(s) => s,
        Err(problems) => {
            eprint!("custody: {problems}");
            return Exit::BadInput.into();
        }
    };
    let result = match cli.command {
        Command::Demo(a) => cmd::demo::run(&settings, a),
        Command::Serve => cmd::serve::run(&settings),
        Command::Init => cmd::serve::init(&settings, cli.format),
        Command::Principal(c) => cmd::principal::run(&settings, cli.format, c),
        Command::Policy(c) => cmd::policy::run(&settings, cli.format, c),
        Command::Subject(c) => cmd::subject::run(&settings, cli.format, c),
        Command::Export(a) => cmd::export::run(&settings, cli.format, a),
        Command::Keys(c) => cmd::keys::run(&settings, cli.format, c),
        Command::Bench(a) => cmd::bench::run(&settings, cli.format, a),
        Command::Review(c) => cmd::deploy::review(&settings, cli.format, c),
        Command::Build(a) => cmd::deploy::build_cmd(&settings, cli.format, a),
        Command::Run(a) => cmd::deploy::run(&settings, a),
        Command::Artifact(c) => cmd::deploy::artifact(&settings, cli.format, c),
        Command::Tls(c) => cmd::tls::run(cli.format, c),
    };
    match result {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            let code = e.downcast_ref::<exit::Failure>().map_or(Exit::Error, |f| f.0);
            eprintln!("custody: {e:#}");
            code.into()
        }
    }
}
