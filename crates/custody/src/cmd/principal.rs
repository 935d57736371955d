//! `custody principal add|change|revoke|list`.

use std::collections::BTreeMap;

use clap::Subcommand;
use custody_server::admin::{self, AdminError, ChangePrincipal, NewPrincipal};
use custody_server::{DataDir, ServerState};

use crate::Format;
use crate::admin_client;
use crate::config::Settings;
use crate::exit::{Exit, fail};

#[derive(Debug, Subcommand)]
pub(crate) enum PrincipalCmd {
    /// Register a principal and print its bearer token (shown once; only its hash is kept)
    Add {
        /// Principal id, e.g. `alice` or `svc:clips`
        #[arg(long)]
        id: String,
        /// engineer, workload, subject or monitor
        #[arg(long)]
        kind: String,
        /// Where the principal is: a jurisdiction code such as US
        #[arg(long)]
        location: String,
        /// Employer, e.g. `provider` or `platform`
        #[arg(long, default_value = "")]
        employer: String,
        /// A role; repeat for several
        #[arg(long = "role")]
        roles: Vec<String>,
        /// For subject principals: the subject id they are
        #[arg(long)]
        subject: Option<String>,
        /// Further attribute for policies as KEY=VALUE (a Cedar tag); repeat for several
        #[arg(long = "attr", value_parser = parse_attr)]
        attrs: Vec<(String, String)>,
    },
    /// Change a principal's attributes (logged before it takes effect); omitted ones stay
    Change {
        /// Principal id
        id: String,
        /// New location: a jurisdiction code such as US
        #[arg(long)]
        location: Option<String>,
        /// New employer
        #[arg(long)]
        employer: Option<String>,
        /// A role, replacing all current roles; repeat for several
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Remove every role
        #[arg(long, conflicts_with = "roles")]
        no_roles: bool,
        /// Further attribute as KEY=VALUE, replacing all current ones; repeat for several
        #[arg(long = "attr", value_parser = parse_attr)]
        attrs: Vec<(String, String)>,
    },
    /// Revoke a principal; its next request is refused
    Revoke {
        /// Principal id
        id: String,
    },
    /// List principals
    List,
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

fn admin_fail(e: AdminError) -> anyhow::Error {
    match e {
        AdminError::Invalid(m) => fail(Exit::BadInput, m),
        AdminError::Exists(_) | AdminError::NotFound(_) => fail(Exit::Refused, e.to_string()),
        other => fail(Exit::Error, other.to_string()),
    }
}

/// Opens the data dir as the server would when none is running, so an offline change is
/// recorded in the transparency log (with the key and policy-set entries a fresh data dir
/// owes) exactly as an online one is.
fn offline(settings: &Settings, rt: &tokio::runtime::Runtime) -> anyhow::Result<std::sync::Arc<ServerState>> {
    let state = ServerState::open(settings.server.clone()).map_err(|e| fail(Exit::Error, e.to_string()))?;
    rt.block_on(state.announce()).map_err(|e| fail(Exit::Error, format!("cannot record in the log: {e}")))?;
    Ok(state)
}

fn answer(a: admin_client::Answer) -> anyhow::Result<serde_json::Value> {
    if (200..300).contains(&a.status) {
        return Ok(a.body);
    }
    let detail = a.body.get("detail").and_then(|d| d.as_str()).unwrap_or("request failed").to_string();
    let code = match a.status {
        400 | 422 => Exit::BadInput,
        404 | 409 => Exit::Refused,
        _ => Exit::Error,
    };
    Err(fail(code, detail))
}

pub(crate) fn run(settings: &Settings, format: Format, cmd: PrincipalCmd) -> anyhow::Result<()> {
    let dirs = DataDir::prepare(&settings.server).map_err(|e| fail(Exit::Error, e.to_string()))?;
    let rt = super::runtime()?;
    let online = rt.block_on(admin_client::server_running(&dirs.admin_socket));
    let value = match cmd {
        PrincipalCmd::Add { id, kind, location, employer, roles, subject, attrs } => {
            let req = NewPrincipal {
                id,
                kind,
                location,
                employer,
                roles,
                subject,
                tags: attrs.into_iter().collect::<BTreeMap<_, _>>(),
            };
            if online {
                answer(rt.block_on(admin_client::call(
                    &dirs.admin_socket,
                    "POST",
                    "/admin/principals",
                    Some(serde_json::to_value(&req)?),
                ))?)?
            } else {
                let state = offline(settings, &rt)?;
                serde_json::to_value(rt.block_on(admin::add_logged(&state, req)).map_err(admin_fail)?)?
            }
        }
        PrincipalCmd::Change { id, location, employer, roles, no_roles, attrs } => {
            let req = ChangePrincipal {
                location,
                employer,
                roles: if no_roles { Some(Vec::new()) } else { Some(roles).filter(|r| !r.is_empty()) },
                tags: Some(attrs.into_iter().collect::<BTreeMap<_, _>>()).filter(|t| !t.is_empty()),
            };
            if online {
                answer(rt.block_on(admin_client::call(
                    &dirs.admin_socket,
                    "PATCH",
                    &format!("/admin/principals/{id}"),
                    Some(serde_json::to_value(&req)?),
                ))?)?
            } else {
                let state = offline(settings, &rt)?;
                serde_json::to_value(rt.block_on(admin::change_logged(&state, &id, req)).map_err(admin_fail)?)?
            }
        }
        PrincipalCmd::Revoke { id } => {
            if online {
                answer(rt.block_on(admin_client::call(
                    &dirs.admin_socket,
                    "POST",
                    &format!("/admin/principals/{id}/revoke"),
                    None,
                ))?)?
            } else {
                let state = offline(settings, &rt)?;
                serde_json::to_value(rt.block_on(admin::revoke_logged(&state, &id)).map_err(admin_fail)?)?
            }
        }
        PrincipalCmd::List => {
            if online {
                answer(rt.block_on(admin_client::call(&dirs.admin_socket, "GET", "/admin/principals", None))?)?
            } else {
                let store = custody_server::open_principal_store(&settings.server, &dirs)?;
                serde_json::to_value(admin::list_principals(store.as_ref()).map_err(admin_fail)?)?
            }
        }
    };
    print(format, &value);
    Ok(())
}

fn print(format: Format, v: &serde_json::Value) {
    if format == Format::Json {
        println!("{v}");
        return;
    }
    if let Some(token) = v.get("token").and_then(|t| t.as_str()) {
        let p = &v.get("principal").unwrap_or(&serde_json::Value::Null);
        println!(
            "added {} {} (location {})",
            p.get("kind").unwrap_or(&serde_json::Value::Null).as_str().unwrap_or(""),
            p.get("id").unwrap_or(&serde_json::Value::Null).as_str().unwrap_or(""),
            p.pointer("/attrs/location").unwrap_or(&serde_json::Value::Null).as_str().unwrap_or("")
        );
        println!("token (shown once, store it now):");
        println!("{token}");
    } else if let Some(list) = v.as_array() {
        for p in list {
            println!(
                "{:<24} {:<9} {:<4} {:<10} {}{}",
                p.get("id").unwrap_or(&serde_json::Value::Null).as_str().unwrap_or(""),
                p.get("kind").unwrap_or(&serde_json::Value::Null).as_str().unwrap_or(""),
                p.pointer("/attrs/location").unwrap_or(&serde_json::Value::Null).as_str().unwrap_or(""),
                p.pointer("/attrs/employer").unwrap_or(&serde_json::Value::Null).as_str().unwrap_or(""),
                p.pointer("/attrs/roles")
                    .unwrap_or(&serde_json::Value::Null)
                    .as_array()
                    .map(|r| r.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                if p.get("revoked").unwrap_or(&serde_json::Value::Null).as_bool() == Some(true) {
                    "  (revoked)"
                } else {
                    ""
                },
            );
        }
    } else if v.get("revoked").and_then(serde_json::Value::as_bool) == Some(true) {
        println!("revoked {}", v.get("id").unwrap_or(&serde_json::Value::Null).as_str().unwrap_or(""));
    } else if let Some(id) = v.get("id").and_then(serde_json::Value::as_str) {
        println!("changed {id}: {}", v.get("attrs").unwrap_or(&serde_json::Value::Null));
    } else {
        println!("{v}");
    }
}
