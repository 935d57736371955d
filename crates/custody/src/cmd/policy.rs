//! `custody policy check|reload`.

use std::path::PathBuf;

use clap::Subcommand;
use custody_policy::PolicyEngine;
use custody_server::DataDir;

use crate::Format;
use crate::admin_client;
use crate::config::Settings;
use crate::exit::{Exit, fail};

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCmd {
    /// Parse and validate a policy directory against custody's Cedar schema, without installing it
    Check {
        /// Directory of .cedar files [default: the configured policy dir]
        dir: Option<PathBuf>,
    },
    /// Make a running server reload its policy directory (same as sending it SIGHUP)
    Reload,
    /// Print custody's Cedar schema, to write and validate policies against
    Schema,
}

pub(crate) fn run(settings: &Settings, format: Format, cmd: PolicyCmd) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Schema => {
            print!("{}", custody_policy::CEDAR_SCHEMA);
            Ok(())
        }
        PolicyCmd::Check { dir } => {
            let dir = match dir {
                Some(d) => d,
                None => DataDir::prepare(&settings.server).map_err(|e| fail(Exit::Error, e.to_string()))?.policies,
            };
            let engine = PolicyEngine::load_dir(settings.server.jurisdiction.clone(), &dir)
                .map_err(|e| fail(Exit::BadInput, e.to_string()))?;
            let set = engine.current();
            match format {
                Format::Json => {
                    println!("{}", serde_json::json!({"policy_set": set.hash().to_string(), "policies": set.ids()}))
                }
                Format::Human => println!("ok: {} policies, set {}", set.ids().len(), set.hash()),
            }
            Ok(())
        }
        PolicyCmd::Reload => {
            let dirs = DataDir::prepare(&settings.server).map_err(|e| fail(Exit::Error, e.to_string()))?;
            let rt = super::runtime()?;
            if !rt.block_on(admin_client::server_running(&dirs.admin_socket)) {
                return Err(fail(
                    Exit::Error,
                    format!("no custody server is running on data dir `{}`", dirs.root.display()),
                ));
            }
            let a = rt.block_on(admin_client::call(&dirs.admin_socket, "POST", "/admin/policy/reload", None))?;
            if a.status != 200 {
                let detail = a.body.get("detail").and_then(|d| d.as_str()).unwrap_or("reload failed").to_string();
                return Err(fail(Exit::BadInput, format!("{detail}; the previous policy set stays in force")));
            }
            match format {
                Format::Json => println!("{}", a.body),
                Format::Human => println!(
                    "reloaded: {} policies, set {}",
                    a.body.get("policies").unwrap_or(&serde_json::Value::Null).as_array().map_or(0, Vec::len),
                    a.body.get("policy_set").unwrap_or(&serde_json::Value::Null).as_str().unwrap_or("")
                ),
            }
            Ok(())
        }
    }
}
