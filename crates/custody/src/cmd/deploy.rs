//! `custody review`, `custody build`, `custody run` and `custody artifact`: trusted deployment.
//!
//! Reviews are signed here with the reviewer's own key file; build provenance is signed by the
//! server with the provider's build key (it never leaves the server); credentials are issued
//! by the server. With a server running these go through `admin.sock`; without one the CLI
//! opens the data dir and does the same, logged the same way.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use custody_deploy::attest::{Attester, FileHash};
use custody_deploy::build::{BuildRequest, build, resolve};
use custody_deploy::statement::{self, Statement};
use custody_deploy::{dsse, keys};
use custody_server::admin::AdminError;
use custody_server::deploy::{self as server_deploy, CredentialRequest};
use custody_server::{DataDir, ServerState};
use serde_json::Value;

use crate::Format;
use crate::admin_client;
use crate::config::Settings;
use crate::exit::{Exit, fail};

/// `custody review …`
#[derive(Debug, Subcommand)]
pub(crate) enum ReviewCmd {
    /// Create a reviewer's Ed25519 key file (mode 0600) and print its public key, which the
    /// operator registers as the reviewer's `review_key` attribute
    Keygen {
        /// Where to write the key
        #[arg(long)]
        out: PathBuf,
    },
    /// Approve one commit: sign a review statement with your key and record it in the log
    Approve {
        /// The repository
        #[arg(long)]
        repo: PathBuf,
        /// The commit to approve
        #[arg(long)]
        commit: String,
        /// Your reviewer principal id
        #[arg(long)]
        reviewer: String,
        /// Your key file (from `custody review keygen`)
        #[arg(long)]
        key: PathBuf,
        /// What you checked
        #[arg(long, default_value = "")]
        notes: String,
    },
}

/// `custody build …`
#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// The repository
    #[arg(long)]
    repo: PathBuf,
    /// The commit to build (must have an approved review)
    #[arg(long)]
    commit: String,
    /// Where the outputs and the attestation go
    #[arg(long)]
    out: PathBuf,
    /// A declared output, relative to the checkout (repeatable)
    #[arg(long = "output", required = true)]
    outputs: Vec<PathBuf>,
    /// The build command, after `--`
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// `custody run …`
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The workload binary to measure and run
    #[arg(long)]
    artifact: PathBuf,
    /// Roles for the workload principal (repeatable; default app-backend)
    #[arg(long = "role")]
    roles: Vec<String>,
    /// Credential lifetime in seconds
    #[arg(long, default_value_t = 900)]
    ttl_secs: u64,
    /// Arguments for the workload, after `--`
    #[arg(last = true)]
    args: Vec<String>,
}

/// `custody artifact …`
#[derive(Debug, Subcommand)]
pub(crate) enum ArtifactCmd {
    /// Revoke an artifact: no new credential, and every credential it holds stops working
    Revoke {
        /// Its SHA-256 (hex)
        sha256: String,
    },
}

/// The server, reached through its socket, or the data dir opened here.
enum Via {
    Online(PathBuf),
    Offline(Arc<ServerState>),
}

fn via(settings: &Settings, rt: &tokio::runtime::Runtime) -> anyhow::Result<Via> {
    let dirs = DataDir::prepare(&settings.server).map_err(|e| fail(Exit::Error, e.to_string()))?;
    if rt.block_on(admin_client::server_running(&dirs.admin_socket)) {
        return Ok(Via::Online(dirs.admin_socket));
    }
    let state = ServerState::open(settings.server.clone()).map_err(|e| fail(Exit::Error, e.to_string()))?;
    rt.block_on(state.announce()).map_err(|e| fail(Exit::Error, format!("cannot record in the log: {e}")))?;
    Ok(Via::Offline(state))
}

fn admin_fail(e: AdminError) -> anyhow::Error {
    match e {
        AdminError::Invalid(m) => fail(Exit::BadInput, m),
        AdminError::Exists(_) | AdminError::NotFound(_) | AdminError::Refused(_) => fail(Exit::Refused, e.to_string()),
        other => fail(Exit::Error, other.to_string()),
    }
}

fn answer(a: admin_client::Answer) -> anyhow::Result<Value> {
    if (200..300).contains(&a.status) {
        return Ok(a.body);
    }
    let detail = a.body.get("detail").and_then(Value::as_str).unwrap_or("request failed").to_owned();
    let code = match a.status {
        400 | 422 => Exit::BadInput,
        403 | 404 | 409 => Exit::Refused,
        _ => Exit::Error,
    };
    Err(fail(code, detail))
}

impl Via {
    fn call(
        &self,
        rt: &tokio::runtime::Runtime,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        match self {
            Via::Online(sock) => answer(rt.block_on(admin_client::call(sock, method, path, body))?),
            Via::Offline(s) => {
                let body = body.unwrap_or(Value::Null);
                let parse = |e: serde_json::Error| fail(Exit::BadInput, e.to_string());
                let v = match (method, path) {
                    ("POST", "/admin/reviews") => {
                        let env = serde_json::from_value(body).map_err(parse)?;
                        serde_json::to_value(rt.block_on(server_deploy::record_review(s, env)).map_err(admin_fail)?)?
                    }
                    ("POST", "/admin/attestations") => {
                        let st = serde_json::from_value(body).map_err(parse)?;
                        serde_json::to_value(rt.block_on(server_deploy::attest(s, st)).map_err(admin_fail)?)?
                    }
                    ("POST", "/admin/credentials") => {
                        let req = serde_json::from_value(body).map_err(parse)?;
                        serde_json::to_value(rt.block_on(server_deploy::issue_credential(s, req)).map_err(admin_fail)?)?
                    }
                    ("GET", p) if p.starts_with("/admin/reviews/") => {
                        let commit = p.trim_start_matches("/admin/reviews/");
                        let r = s.deploy.registry().review(commit).map_err(|e| admin_fail(e.into()))?;
                        let r = r.ok_or_else(|| fail(Exit::Refused, format!("no approved review of {commit}")))?;
                        serde_json::to_value(r)?
                    }
                    ("POST", p) if p.starts_with("/admin/artifacts/") => {
                        let digest = p.trim_start_matches("/admin/artifacts/").trim_end_matches("/revoke");
                        serde_json::to_value(
                            rt.block_on(server_deploy::revoke_artifact(s, digest)).map_err(admin_fail)?,
                        )?
                    }
                    _ => anyhow::bail!("no offline route for {method} {path}"),
                };
                Ok(v)
            }
        }
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn print(format: Format, v: &Value, human: impl FnOnce(&Value) -> String) {
    match format {
        Format::Json => println!("{v}"),
        Format::Human => println!("{}", human(v)),
    }
}

/// `custody review`.
pub(crate) fn review(settings: &Settings, format: Format, cmd: ReviewCmd) -> anyhow::Result<()> {
    match cmd {
        ReviewCmd::Keygen { out } => {
            if out.exists() {
                return Err(fail(Exit::Refused, format!("`{}` exists; not overwriting a key", out.display())));
            }
            let key = keys::load_or_create(&out).map_err(|e| fail(Exit::Error, e.to_string()))?;
            let public = keys::public_b64(&key.verifying_key());
            print(format, &serde_json::json!({ "key": out, "public_key": public }), |_| {
                format!("wrote {}\nregister it: --attr review_key={public}", out.display())
            });
            Ok(())
        }
        ReviewCmd::Approve { repo, commit, reviewer, key, notes } => {
            let (commit, tree) = resolve(&repo, &commit).map_err(|e| fail(Exit::BadInput, e.to_string()))?;
            let key = keys::load_or_create(&key).map_err(|e| fail(Exit::BadInput, e.to_string()))?;
            let repo_name = repo.canonicalize().unwrap_or(repo).to_string_lossy().into_owned();
            let st = statement::review(&repo_name, &commit, &tree, &reviewer, &notes, &now());
            let env = dsse::sign(&key, &reviewer, dsse::IN_TOTO, &serde_json::to_vec(&st)?);
            let rt = super::runtime()?;
            let v = via(settings, &rt)?.call(&rt, "POST", "/admin/reviews", Some(serde_json::to_value(env)?))?;
            print(format, &v, |v| {
                format!("review of {commit} recorded at log index {}", v.pointer("/log_index").unwrap_or(&Value::Null))
            });
            Ok(())
        }
    }
}

/// `custody build`.
pub(crate) fn build_cmd(settings: &Settings, format: Format, args: BuildArgs) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    let (commit, _) = resolve(&args.repo, &args.commit).map_err(|e| fail(Exit::BadInput, e.to_string()))?;
    let via = via(settings, &rt)?;
    // Refuse before building; the server checks again when it attests.
    via.call(&rt, "GET", &format!("/admin/reviews/{commit}"), None)
        .with_context(|| format!("commit {commit} has no approved review; refusing to build it"))?;
    let built = build(&BuildRequest {
        repo: args.repo,
        commit,
        out: args.out.clone(),
        outputs: args.outputs,
        command: args.command,
        builder: format!("https://custody.dev/builder/{}", settings.server.jurisdiction),
    })
    .map_err(|e| fail(Exit::Error, e.to_string()))?;
    let st: Statement = statement::provenance(&built.facts, built.outputs.iter().map(|(d, _)| d.clone()).collect());
    let env = via.call(&rt, "POST", "/admin/attestations", Some(serde_json::to_value(&st)?))?;
    let path = args.out.join("attestation.intoto.dsse.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&env)?).with_context(|| format!("writing {}", path.display()))?;
    let summary = serde_json::json!({
        "commit": built.facts.commit,
        "outputs": built.outputs.iter().map(|(d, p)| serde_json::json!({"name": d.name, "sha256": d.digest.get("sha256"), "path": p})).collect::<Vec<_>>(),
        "attestation": path,
    });
    print(format, &summary, |s| {
        let mut out = format!("built {} and attested it ({})", built.facts.commit, path.display());
        for o in s.pointer("/outputs").and_then(Value::as_array).into_iter().flatten() {
            out.push_str(&format!(
                "\n  {}  sha256:{}",
                o.pointer("/name").and_then(Value::as_str).unwrap_or(""),
                o.pointer("/sha256").and_then(Value::as_str).unwrap_or("")
            ));
        }
        out
    });
    Ok(())
}

/// `custody run`: measure, get a credential, exec.
pub(crate) fn run(settings: &Settings, args: RunArgs) -> anyhow::Result<()> {
    let m = FileHash.measure(&args.artifact).map_err(|e| fail(Exit::BadInput, e.to_string()))?;
    let rt = super::runtime()?;
    let req = CredentialRequest { sha256: m.sha256.clone(), roles: args.roles, ttl_secs: Some(args.ttl_secs) };
    let issued = via(settings, &rt)?.call(&rt, "POST", "/admin/credentials", Some(serde_json::to_value(req)?))?;
    let token =
        issued.pointer("/token").and_then(Value::as_str).ok_or_else(|| fail(Exit::Error, "no token in the answer"))?;
    let principal = issued.pointer("/principal/id").and_then(Value::as_str).unwrap_or_default();
    let mut cmd = std::process::Command::new(&args.artifact);
    cmd.args(&args.args)
        .env("CUSTODY_TOKEN", token)
        .env("CUSTODY_PRINCIPAL", principal)
        .env("CUSTODY_URL", format!("http://{}", settings.server.listen))
        .env("CUSTODY_ARTIFACT_SHA256", &m.sha256);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = cmd.exec();
        Err(fail(Exit::Error, format!("cannot exec `{}`: {err}", args.artifact.display())))
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status()?;
        if status.success() { Ok(()) } else { Err(fail(Exit::Error, format!("workload exited with {status}"))) }
    }
}

/// `custody artifact`.
pub(crate) fn artifact(settings: &Settings, format: Format, cmd: ArtifactCmd) -> anyhow::Result<()> {
    let ArtifactCmd::Revoke { sha256 } = cmd;
    let rt = super::runtime()?;
    let v = via(settings, &rt)?.call(&rt, "POST", &format!("/admin/artifacts/{sha256}/revoke"), None)?;
    print(format, &v, |v| format!("revoked {sha256}; credentials ended: {}", v.as_array().map_or(0, Vec::len)));
    Ok(())
}
