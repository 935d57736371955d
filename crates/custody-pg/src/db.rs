//! Connection pools on a private runtime, the blocking bridge to them, and migrations.

use std::future::Future;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::PgError;

/// Where the PostgreSQL backend keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// Records, principals and the transparency log: a libpq connection string or URL, e.g.
    /// `host=/run/postgresql dbname=custody user=custody` or `postgresql://custody@db/custody`.
    pub url: String,
    /// Keys, when they should live in another database or cluster than records; `None` keeps
    /// them in their own schema of the same database.
    pub keys_url: Option<String>,
    /// Most connections per database this node opens.
    pub pool_size: usize,
}

impl PgConfig {
    /// One database for everything, a pool of 16.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), keys_url: None, pool_size: 16 }
    }
}

/// The runtime the pools' connections live on; shut down without blocking when the last
/// user goes, which may be inside another runtime.
#[derive(Debug)]
struct Rt(Option<tokio::runtime::Runtime>);

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// One database's pool and the runtime that drives it.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    pub(crate) pool: Pool,
    rt: Arc<Rt>,
    /// The database, for messages (never the password).
    pub(crate) name: String,
}

/// The migrations of each schema, in order. Never edit one that has shipped; add the next.
pub(crate) const RECORDS: (&str, &[(&str, &str)]) = (
    "custody_records",
    &[
        ("0001", include_str!("../migrations/records_0001.sql")),
        ("0002", include_str!("../migrations/records_0002.sql")),
        ("0003", include_str!("../migrations/records_0003.sql")),
    ],
);
pub(crate) const KEYS: (&str, &[(&str, &str)]) = (
    "custody_keys",
    &[("0001", include_str!("../migrations/keys_0001.sql")), ("0002", include_str!("../migrations/keys_0002.sql"))],
);
pub(crate) const LOG: (&str, &[(&str, &str)]) = (
    "custody_log",
    &[("0001", include_str!("../migrations/log_0001.sql")), ("0002", include_str!("../migrations/log_0002.sql"))],
);

pub(crate) fn runtime() -> Result<Arc<RtHandle>, PgError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("custody-pg")
        .enable_all()
        .build()
        .map_err(|e| PgError::Runtime(e.to_string()))?;
    Ok(Arc::new(RtHandle(Arc::new(Rt(Some(rt))))))
}

/// A shared handle on the private runtime.
#[derive(Debug)]
pub(crate) struct RtHandle(Arc<Rt>);

impl Db {
    /// Opens a pool on `url` and applies `migrations` to `schema`.
    pub(crate) fn connect(
        rt: &RtHandle,
        url: &str,
        pool_size: usize,
        (schema, migrations): (&str, &[(&str, &str)]),
    ) -> Result<Db, PgError> {
        let pg: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| PgError::Url { url: url.into(), detail: e.to_string() })?;
        let name = pg.get_dbname().unwrap_or("(default database)").to_string();
        let mgr = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(mgr)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| PgError::Connect(e.to_string()))?;
        Db::connect_existing(Db { pool, rt: rt.0.clone(), name }, (schema, migrations))
    }

    /// Applies `migrations` to `schema` in the database `db` is connected to.
    pub(crate) fn connect_existing(db: Db, (schema, migrations): (&str, &[(&str, &str)])) -> Result<Db, PgError> {
        let schema = schema.to_string();
        let migrations: Vec<(String, String)> =
            migrations.iter().map(|(n, s)| ((*n).to_string(), (*s).to_string())).collect();
        db.run(move |pool| async move { migrate(&pool, &schema, &migrations).await })?;
        Ok(db)
    }

    /// Runs `f` on the private runtime and blocks this thread until it finishes.
    pub(crate) fn run<T, F, Fut>(&self, f: F) -> Result<T, PgError>
    where
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, PgError>> + Send + 'static,
        T: Send + 'static,
    {
        let Some(rt) = self.rt.0.as_ref() else {
            return Err(PgError::Runtime("stopped".into()));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = f(self.pool.clone());
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| PgError::Runtime("stopped while a query was pending".into()))?
    }
}

/// Applies the migrations of `schema` not yet recorded in `schema.migrations`, in one
/// transaction under a cluster-wide advisory lock.
async fn migrate(pool: &Pool, schema: &str, migrations: &[(String, String)]) -> Result<(), PgError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let fail = |name: &str| {
        let name = name.to_string();
        move |e: tokio_postgres::Error| PgError::Migration { name, detail: crate::error::describe(&e) }
    };
    tx.execute("SELECT pg_advisory_xact_lock(7301, hashtext($1))", &[&schema]).await.map_err(fail("lock"))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.migrations (name text PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now());"
    ))
    .await
    .map_err(fail("schema"))?;
    for (name, sql) in migrations {
        let done =
            tx.query_opt(&format!("SELECT 1 FROM {schema}.migrations WHERE name = $1"), &[&name]).await?.is_some();
        if done {
            continue;
        }
        tx.batch_execute(&format!("SET LOCAL search_path TO {schema};\n{sql}")).await.map_err(fail(name))?;
        tx.execute(&format!("INSERT INTO {schema}.migrations (name) VALUES ($1)"), &[&name]).await?;
        tracing::info!(schema, migration = %name, "applied migration");
    }
    tx.commit().await.map_err(fail("commit"))?;
    Ok(())
}
