//! `custody keys status|rotate-kek|log-keys|rotate-log-key`: KEK and log signing-key
//! rotation, online through the operator socket or offline on the data dir.

use clap::Subcommand;
use custody_server::admin::{self, AdminError, KekRotation, LogKeyRotation};
use custody_server::{DataDir, ServerState};

use crate::Format;
use crate::admin_client;
use crate::config::Settings;
use crate::exit::{Exit, fail};

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCmd {
    /// Show the current KEK version and any rotation in progress
    Status,
    /// Rotate the KEK: a new KEK becomes current, every DEK is rewrapped under it online in
    /// batches (resumable: run again after an interruption), then the old KEK is destroyed.
    /// Each stage is logged.
    RotateKek {
        /// Subject keys rewrapped per durable step
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// List the transparency log's checkpoint signing keys, oldest first
    LogKeys,
    /// Rotate the log's checkpoint signing key: a new Ed25519 key is announced in an entry
    /// signed by the old key, a handover checkpoint is signed by the old key, then the new key
    /// signs. Checkpoints signed before still verify under the old key.
    RotateLogKey,
}

enum Target {
    Online(std::path::PathBuf),
    Offline(std::sync::Arc<ServerState>),
}

fn admin_fail(e: AdminError) -> anyhow::Error {
    match e {
        AdminError::Invalid(m) => fail(Exit::Refused, m),
        other => fail(Exit::Error, other.to_string()),
    }
}

impl Target {
    fn call(
        &self,
        rt: &tokio::runtime::Runtime,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<KekRotation> {
        match self {
            Target::Online(sock) => {
                let method = if path == "/admin/keys/kek" { "GET" } else { "POST" };
                let a = rt.block_on(admin_client::call(sock, method, path, body))?;
                if !(200..300).contains(&a.status) {
                    let detail = a.body.get("detail").and_then(|d| d.as_str()).unwrap_or("request failed").to_string();
                    return Err(fail(if a.status == 400 { Exit::Refused } else { Exit::Error }, detail));
                }
                Ok(serde_json::from_value(a.body)?)
            }
            Target::Offline(state) => {
                let r = match path {
                    "/admin/keys/kek" => rt.block_on(admin::kek_rotation_status(state)),
                    "/admin/keys/kek/rotate" => rt.block_on(admin::kek_rotation_begin(state)),
                    "/admin/keys/kek/rotate/finish" => rt.block_on(admin::kek_rotation_finish(state)),
                    _ => {
                        let batch = body.and_then(|b| b.get("batch").and_then(|v| v.as_u64())).unwrap_or(1000);
                        rt.block_on(admin::kek_rotation_step(state, usize::try_from(batch).unwrap_or(1000)))
                    }
                };
                r.map_err(admin_fail)
            }
        }
    }
}

pub(crate) fn run(settings: &Settings, format: Format, cmd: KeysCmd) -> anyhow::Result<()> {
    let dirs = DataDir::prepare(&settings.server).map_err(|e| fail(Exit::Error, e.to_string()))?;
    let rt = super::runtime()?;
    let target = if rt.block_on(admin_client::server_running(&dirs.admin_socket)) {
        Target::Online(dirs.admin_socket.clone())
    } else {
        let state = ServerState::open(settings.server.clone()).map_err(|e| fail(Exit::Error, e.to_string()))?;
        rt.block_on(state.announce()).map_err(|e| fail(Exit::Error, format!("cannot record in the log: {e}")))?;
        Target::Offline(state)
    };
    let result = match cmd {
        KeysCmd::Status => target.call(&rt, "/admin/keys/kek", None)?,
        KeysCmd::RotateKek { batch } => rotate(&rt, &target, batch, format)?,
        KeysCmd::LogKeys => return log_keys(&rt, &target, format, false),
        KeysCmd::RotateLogKey => return log_keys(&rt, &target, format, true),
    };
    if format == Format::Json {
        println!("{}", serde_json::to_string(&result)?);
    } else if result.in_progress {
        println!(
            "KEK rotation to version {} in progress: {}/{} keys scanned, {} rewrapped",
            result.target, result.scanned, result.total, result.rewrapped
        );
    } else if !result.retired.is_empty() {
        let old: Vec<String> = result.retired.iter().map(u32::to_string).collect();
        println!("KEK rotated to version {}; destroyed version(s) {}", result.target, old.join(", "));
    } else {
        println!("KEK version {} is current; no rotation in progress", result.target);
    }
    Ok(())
}

fn rotate(rt: &tokio::runtime::Runtime, target: &Target, batch: usize, format: Format) -> anyhow::Result<KekRotation> {
    let mut p = target.call(rt, "/admin/keys/kek/rotate", None)?;
    let bar = if format == Format::Human {
        indicatif::ProgressBar::new(p.total.max(1))
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} keys ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("rewrapping DEKs under KEK {}", p.target));
    while !p.scanned_all {
        p = target.call(rt, "/admin/keys/kek/rotate/step", Some(serde_json::json!({ "batch": batch })))?;
        bar.set_length(p.total.max(1));
        bar.set_position(p.scanned);
    }
    bar.finish_with_message(format!("rewrapped {} DEKs under KEK {}", p.rewrapped, p.target));
    target.call(rt, "/admin/keys/kek/rotate/finish", None)
}

fn log_keys(rt: &tokio::runtime::Runtime, target: &Target, format: Format, rotate: bool) -> anyhow::Result<()> {
    let keys: LogKeyRotation = match target {
        Target::Online(sock) => {
            let (method, path) = if rotate { ("POST", "/admin/keys/log/rotate") } else { ("GET", "/admin/keys/log") };
            let a = rt.block_on(admin_client::call(sock, method, path, None))?;
            if !(200..300).contains(&a.status) {
                let detail = a.body.get("detail").and_then(|d| d.as_str()).unwrap_or("request failed").to_string();
                return Err(fail(if a.status == 400 { Exit::Refused } else { Exit::Error }, detail));
            }
            serde_json::from_value(a.body)?
        }
        Target::Offline(state) if rotate => rt.block_on(admin::log_key_rotation(state)).map_err(admin_fail)?,
        Target::Offline(state) => admin::log_key_status(state).map_err(admin_fail)?,
    };
    if format == Format::Json {
        println!("{}", serde_json::to_string(&keys)?);
        return Ok(());
    }
    if let Some(index) = keys.announced_at {
        println!("log signing key rotated; announced in entry {index}");
    }
    for (i, k) in keys.keys.iter().enumerate() {
        let mark = if *k == keys.current { " (current)" } else { "" };
        println!("  {} {k}{mark}", i + 1);
    }
    Ok(())
}
