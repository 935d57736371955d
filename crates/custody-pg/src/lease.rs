//! The log's sequencer lease: which one of several nodes on one database appends to the log.
//!
//! A Merkle log needs a single writer: two nodes appending at once would fork it. The lease is
//! a session-level advisory lock held on a dedicated connection. PostgreSQL releases it the
//! moment that connection ends, and a killed node's socket closes with it, so failover needs
//! no timeout tuned against clock skew. Taking the lease bumps an epoch in
//! `custody_log.leader`; every write of a [`crate::PgLogStorage`] made
//! [`fenced`](crate::PgLogStorage::fenced) with that epoch checks it under a row lock, so a node
//! that lost its lease without noticing (a paused process, a partition) cannot append after
//! another took over.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::PgError;

/// The advisory lock's key pair: custody's class (as for migrations) and "the log sequencer".
const LOCK_CLASS: i32 = 7301;
const LOCK_SEQUENCER: i32 = 2;
/// How often a lease holder checks that its connection still answers.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long a probe may take before the lease counts as lost.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Who sequences the log right now, as seen from [`Election::poll`].
#[derive(Debug)]
pub enum Seen {
    /// This node took the lease: it must open the log (fenced with the lease's epoch) and
    /// sequence for every node.
    Elected(Lease),
    /// Another node holds the lease; it announced itself at `url`.
    Follower {
        /// The leader's epoch.
        epoch: i64,
        /// Where the leader accepts forwarded entries and serves the log.
        url: String,
    },
    /// The lease is held but the holder has not yet announced itself (it is taking over).
    Vacant,
}

/// A node's standing candidacy for the lease, on one connection of its own.
#[derive(Debug)]
pub struct Election {
    url: String,
    node_url: String,
    client: Option<(Client, tokio::sync::watch::Receiver<bool>)>,
}

async fn connect(url: &str) -> Result<(Client, tokio::sync::watch::Receiver<bool>), PgError> {
    let (client, conn) =
        tokio_postgres::connect(url, NoTls).await.map_err(|e| PgError::Connect(crate::error::describe(&e)))?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %crate::error::describe(&e), "sequencer-lease connection ended");
        }
        let _ = tx.send(true);
    });
    Ok((client, rx))
}

impl Election {
    /// A candidate that announces itself as `node_url` when elected.
    pub fn new(url: impl Into<String>, node_url: impl Into<String>) -> Self {
        Self { url: url.into(), node_url: node_url.into(), client: None }
    }

    /// Tries to take the lease once; otherwise reports who holds it.
    ///
    /// # Errors
    /// [`PgError::Connect`] or [`PgError::Query`]: the database is unreachable (the caller
    /// retries; a node that cannot reach it cannot sequence either).
    pub async fn poll(&mut self) -> Result<Seen, PgError> {
        let (client, closed) = match self.client.take() {
            Some((c, rx)) if !c.is_closed() => (c, rx),
            _ => connect(&self.url).await?,
        };
        let got: bool =
            client.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&LOCK_CLASS, &LOCK_SEQUENCER]).await?.get(0);
        if got {
            let epoch: i64 = client
                .query_one(
                    "INSERT INTO custody_log.leader (id, epoch, url) VALUES (0, 1, $1)
                     ON CONFLICT (id) DO UPDATE SET epoch = custody_log.leader.epoch + 1, url = excluded.url, since = now()
                     RETURNING epoch",
                    &[&self.node_url],
                )
                .await?
                .get(0);
            tracing::info!(epoch, node = %self.node_url, "took the log's sequencer lease");
            return Ok(Seen::Elected(Lease { client, epoch, closed }));
        }
        let row = client.query_opt("SELECT epoch, url FROM custody_log.leader WHERE id = 0", &[]).await?;
        self.client = Some((client, closed));
        Ok(match row {
            Some(r) => Seen::Follower { epoch: r.get(0), url: r.get(1) },
            None => Seen::Vacant,
        })
    }
}

/// The sequencer lease, held while this value and its connection live.
#[derive(Debug)]
pub struct Lease {
    client: Client,
    epoch: i64,
    closed: tokio::sync::watch::Receiver<bool>,
}

impl Lease {
    /// The epoch to fence the log's writes with.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Resolves when the lease is lost: its connection closed or stopped answering. The holder
    /// must then stop sequencing at once (its fenced writes already fail).
    pub async fn lost(&mut self) -> PgError {
        loop {
            let closed = *self.closed.borrow_and_update();
            if closed {
                return PgError::Connect("the sequencer-lease connection closed".into());
            }
            tokio::select! {
                r = self.closed.changed() => {
                    if r.is_err() {
                        return PgError::Connect("the sequencer-lease connection closed".into());
                    }
                }
                () = tokio::time::sleep(PROBE_EVERY) => {
                    match tokio::time::timeout(PROBE_TIMEOUT, self.client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return PgError::Connect(crate::error::describe(&e)),
                        Err(_) => return PgError::Connect(format!("the sequencer-lease connection did not answer within {PROBE_TIMEOUT:?}")),
                    }
                }
            }
        }
    }
}
