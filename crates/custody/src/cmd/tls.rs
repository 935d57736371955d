//! `custody tls init`: a provider CA, a node certificate and client certificates, so TLS and
//! mTLS work without outside tooling. Keys are written mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

use crate::Format;
use crate::exit::{Exit, fail};

/// `custody tls …`
#[derive(Debug, Subcommand)]
pub(crate) enum TlsCmd {
    /// Create a CA, a node certificate for the given host names and addresses, and a client
    /// certificate per principal id (its common name), as PEM files in DIR
    Init {
        /// Directory for ca.pem, ca.key, node.pem, node.key, client-ID.pem (cert + key)
        #[arg(long)]
        out: PathBuf,
        /// A DNS name or IP address the node answers on (repeatable)
        #[arg(long = "host", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
        hosts: Vec<String>,
        /// A principal id to issue a client certificate for (repeatable)
        #[arg(long = "client")]
        clients: Vec<String>,
    },
}

fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// `custody tls`.
pub(crate) fn run(format: Format, cmd: TlsCmd) -> anyhow::Result<()> {
    let TlsCmd::Init { out, hosts, clients } = cmd;
    if out.join("ca.pem").exists() {
        return Err(fail(Exit::Refused, format!("`{}` already holds a CA; not overwriting it", out.display())));
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bad = |e: rcgen::Error| fail(Exit::BadInput, e.to_string());

    let ca_key = KeyPair::generate().map_err(bad)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "custody provider CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).map_err(bad)?;
    write(&out.join("ca.pem"), &ca_cert.pem(), false)?;
    write(&out.join("ca.key"), &ca_key.serialize_pem(), true)?;

    let node_key = KeyPair::generate().map_err(bad)?;
    let mut node = CertificateParams::new(hosts.clone()).map_err(bad)?;
    node.distinguished_name.push(DnType::CommonName, hosts.first().map_or("custody node", String::as_str));
    node.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let node_cert = node.signed_by(&node_key, &ca_cert, &ca_key).map_err(bad)?;
    write(&out.join("node.pem"), &node_cert.pem(), false)?;
    write(&out.join("node.key"), &node_key.serialize_pem(), true)?;

    for id in &clients {
        custody_core::PrincipalId::new(id).map_err(|e| fail(Exit::BadInput, e.to_string()))?;
        let key = KeyPair::generate().map_err(bad)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
        p.distinguished_name.push(DnType::CommonName, id.as_str());
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(bad)?;
        write(&out.join(format!("client-{id}.pem")), &format!("{}{}", cert.pem(), key.serialize_pem()), true)?;
    }
    match format {
        Format::Json => println!("{}", serde_json::json!({ "dir": out, "hosts": hosts, "clients": clients })),
        Format::Human => {
            println!(
                "wrote a CA, a node certificate for {} and {} client certificate(s) to {}",
                hosts.join(", "),
                clients.len(),
                out.display()
            );
            println!(
                "serve with: --tls-cert {0}/node.pem --tls-key {0}/node.key --tls-client-ca {0}/ca.pem",
                out.display()
            );
        }
    }
    Ok(())
}
