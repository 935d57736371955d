//! TLS and mutual TLS against a real `custody serve`, with certificates from `custody tls init`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

mod common;

use std::path::Path;

use common::Server;

fn client(ca: &Path, identity: Option<&Path>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap());
    if let Some(id) = identity {
        b = b.identity(reqwest::Identity::from_pem(&std::fs::read(id).unwrap()).unwrap());
    }
    b.build().unwrap()
}

fn tls_init(dir: &Path, clients: &[&str]) {
    let mut args = vec!["tls", "init", "--out", dir.to_str().unwrap()];
    for c in clients {
        args.extend(["--client", c]);
    }
    let out = std::process::Command::new(common::BIN).args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the CA key is private");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_identifies_principals_and_refuses_clients_without_a_certificate() {
    let certs = tempfile::tempdir().unwrap();
    tls_init(certs.path(), &["clips-backend", "stranger"]);
    let p = |f: &str| certs.path().join(f).to_str().unwrap().to_owned();
    let s = Server::start_with(&[
        "--tls-cert",
        &p("node.pem"),
        "--tls-key",
        &p("node.key"),
        "--tls-client-ca",
        &p("ca.pem"),
        "--tls-require-client-cert",
    ]);
    let https = s.base.replace("http://", "https://");
    s.principal("clips-backend", "workload", "US", &["--role", "app-backend"]);

    // The client certificate is the credential: no bearer token needed.
    let c = client(&certs.path().join("ca.pem"), Some(&certs.path().join("client-clips-backend.pem")));
    let r = c
        .post(format!("{https}/v1/collections/profiles/records"))
        .json(&serde_json::json!({"id": "u1", "subject": "s1", "fields": {"handle": "@tls"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = c.get(format!("{https}/v1/collections/profiles/records/u1")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // A certificate for a principal that does not exist authenticates nobody.
    let stranger = client(&certs.path().join("ca.pem"), Some(&certs.path().join("client-stranger.pem")));
    let r = stranger.get(format!("{https}/v1/collections/profiles/records/u1")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Without a client certificate the handshake is refused.
    let anon = client(&certs.path().join("ca.pem"), None);
    assert!(anon.get(format!("{https}/healthz")).send().await.is_err(), "a client without a certificate got in");
    // Plaintext is not served on the TLS port.
    assert!(reqwest::get(format!("{}/healthz", s.base)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_bearer_tokens_and_plaintext_refused_off_loopback() {
    let certs = tempfile::tempdir().unwrap();
    tls_init(certs.path(), &[]);
    let p = |f: &str| certs.path().join(f).to_str().unwrap().to_owned();
    let s = Server::start_with(&["--tls-cert", &p("node.pem"), "--tls-key", &p("node.key")]);
    let https = s.base.replace("http://", "https://");
    let token = s.principal("app", "workload", "US", &["--role", "app-backend"]);
    let c = client(&certs.path().join("ca.pem"), None);
    let r = c.get(format!("{https}/v1/collections/profiles/records/none")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c.get(format!("{https}/v1/collections/profiles/records/none")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Plaintext on a non-loopback address is a configuration error naming the fix.
    let out = std::process::Command::new(common::BIN)
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(certs.path().join("data"))
        .arg("init")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plaintext") && err.contains("tls_cert"), "{err}");
}
