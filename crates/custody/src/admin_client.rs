//! A minimal HTTP/1 client for the operator socket (`admin.sock` in the data dir).
//!
//! reqwest has no unix-socket transport, so this speaks HTTP/1.1 through hyper directly.

use std::path::Path;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// An answer from the operator API.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: serde_json::Value,
}

/// Whether a server is answering on `socket`.
pub(crate) async fn server_running(socket: &Path) -> bool {
    tokio::net::UnixStream::connect(socket).await.is_ok()
}

/// Sends one request to the operator socket.
pub(crate) async fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Answer> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot reach the server's operator socket `{}`", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let bytes = body.map(|b| serde_json::to_vec(&b)).transpose()?.unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "custody-admin")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let raw = resp.into_body().collect().await?.to_bytes();
    let body = serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
    Ok(Answer { status, body })
}
