//! The gitcluster PostgreSQL schema as code: the numbered migrations in `sql/`,
//! embedded at build time, the runner behind `gitcluster sql-migrate*`, and the
//! version gate every service runs at start-up.
//!
//! Applied migrations are recorded in `schema_migrations(id, applied_at)`. The
//! runner serialises concurrent invocations with a session advisory lock; each
//! migration and its bookkeeping row commit in one transaction.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

/// One schema change with its inverse.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Sortable id, for example `0001_initial`.
    pub id: &'static str,
    /// SQL applying the change.
    pub up: &'static str,
    /// SQL undoing it.
    pub down: &'static str,
}

macro_rules! migration {
    ($id:literal) => {
        Migration {
            id: $id,
            up: include_str!(concat!("../sql/", $id, ".up.sql")),
            down: include_str!(concat!("../sql/", $id, ".down.sql")),
        }
    };
}

/// Every migration this build knows, oldest first.
pub const MIGRATIONS: &[Migration] = &[migration!("0001_initial")];

/// Advisory lock key held while migrating ("gitclstr" in ASCII).
const MIGRATION_LOCK: i64 = 0x6769_7463_6c73_7472;

/// Errors of the runner and of the version gate.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database lacks migrations this binary needs.
    #[error(
        "database schema is out of date: {pending} migration(s) pending (latest expected {expected}); run `gitcluster sql-migrate`"
    )]
    Pending {
        /// How many known migrations are not applied.
        pending: usize,
        /// The newest migration this binary knows.
        expected: &'static str,
    },
    /// The database has migrations this binary does not know (it is older than the schema).
    #[error(
        "database schema is newer than this binary (unknown migration(s): {unknown}); upgrade this binary or run `gitcluster sql-migrate-down`"
    )]
    Unknown {
        /// Comma-separated unknown ids.
        unknown: String,
    },
    /// A down migration was asked for more migrations than are applied.
    #[error("cannot roll back {asked} migration(s): only {applied} applied")]
    TooMany {
        /// Requested count.
        asked: usize,
        /// Applied count.
        applied: usize,
    },
    /// An applied migration cannot be rolled back because this binary does not know it.
    #[error("cannot roll back unknown migration {0}: use the binary that applied it")]
    CannotRollBackUnknown(String),
    /// The database failed.
    #[error("{context}: {source}")]
    Db {
        /// What was being done.
        context: &'static str,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
}

fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SchemaError {
    move |source| SchemaError::Db { context, source }
}

/// State of one migration, as printed by `sql-migrate-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Migration id.
    pub id: String,
    /// When it was applied; `None` when pending.
    pub applied_at: Option<DateTime<Utc>>,
    /// True when the database has it but this binary does not.
    pub unknown: bool,
}

async fn ensure_table(client: &Client) -> Result<(), SchemaError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 id text PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db("create schema_migrations"))
}

async fn applied(client: &Client) -> Result<Vec<(String, DateTime<Utc>)>, SchemaError> {
    // to_regclass: a database never migrated has no table yet, which is "nothing applied".
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(db("look for schema_migrations"))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT id, applied_at FROM schema_migrations ORDER BY id",
            &[],
        )
        .await
        .map_err(db("read schema_migrations"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Every known and every applied migration, in id order.
pub async fn status(client: &Client) -> Result<Vec<MigrationStatus>, SchemaError> {
    let applied = applied(client).await?;
    let mut out: Vec<MigrationStatus> = MIGRATIONS
        .iter()
        .map(|m| MigrationStatus {
            id: m.id.to_owned(),
            applied_at: applied.iter().find(|(id, _)| id == m.id).map(|(_, at)| *at),
            unknown: false,
        })
        .collect();
    for (id, at) in &applied {
        if !MIGRATIONS.iter().any(|m| m.id == id) {
            out.push(MigrationStatus {
                id: id.clone(),
                applied_at: Some(*at),
                unknown: true,
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The version gate: Ok only when exactly the migrations of this build are applied.
pub async fn check(client: &Client) -> Result<(), SchemaError> {
    let st = status(client).await?;
    let unknown: Vec<&str> = st
        .iter()
        .filter(|s| s.unknown)
        .map(|s| s.id.as_str())
        .collect();
    if !unknown.is_empty() {
        return Err(SchemaError::Unknown {
            unknown: unknown.join(", "),
        });
    }
    let pending = st.iter().filter(|s| s.applied_at.is_none()).count();
    if pending > 0 {
        return Err(SchemaError::Pending {
            pending,
            expected: MIGRATIONS.last().map_or("none", |m| m.id),
        });
    }
    Ok(())
}

/// Progress events of `migrate` and `migrate_down`, for the CLI to print.
#[derive(Debug, Clone)]
pub enum Progress<'a> {
    /// About to apply or roll back this migration.
    Started(&'a str),
    /// Finished it, taking this long.
    Finished(&'a str, std::time::Duration),
}

/// Applies every pending migration in order, holding the migration lock. Returns the
/// ids applied (empty when the schema was already up to date).
pub async fn migrate(
    client: &mut Client,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Vec<&'static str>, SchemaError> {
    with_lock(client, async |client| {
        ensure_table(client).await?;
        let done = applied(client).await?;
        let mut ran = Vec::new();
        for m in MIGRATIONS
            .iter()
            .filter(|m| !done.iter().any(|(id, _)| id == m.id))
        {
            progress(Progress::Started(m.id));
            let started = std::time::Instant::now();
            // The change and its bookkeeping row commit together or not at all.
            let tx = client.transaction().await.map_err(db("begin migration"))?;
            tx.batch_execute(m.up)
                .await
                .map_err(db("apply migration"))?;
            tx.execute("INSERT INTO schema_migrations (id) VALUES ($1)", &[&m.id])
                .await
                .map_err(db("record migration"))?;
            tx.commit().await.map_err(db("commit migration"))?;
            progress(Progress::Finished(m.id, started.elapsed()));
            ran.push(m.id);
        }
        Ok(ran)
    })
    .await
}

/// The newest `n` applied migrations, newest first: what `migrate_down` would undo.
pub async fn plan_down(client: &Client, n: usize) -> Result<Vec<String>, SchemaError> {
    let done = applied(client).await?;
    if n > done.len() {
        return Err(SchemaError::TooMany {
            asked: n,
            applied: done.len(),
        });
    }
    Ok(done.into_iter().rev().take(n).map(|(id, _)| id).collect())
}

/// Rolls back the newest `n` migrations, newest first, holding the migration lock.
pub async fn migrate_down(
    client: &mut Client,
    n: usize,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Vec<String>, SchemaError> {
    with_lock(client, async |client| {
        let plan = plan_down(client, n).await?;
        for id in &plan {
            let m = MIGRATIONS
                .iter()
                .find(|m| m.id == id)
                .ok_or_else(|| SchemaError::CannotRollBackUnknown(id.clone()))?;
            progress(Progress::Started(m.id));
            let started = std::time::Instant::now();
            let tx = client.transaction().await.map_err(db("begin rollback"))?;
            tx.batch_execute(m.down)
                .await
                .map_err(db("roll back migration"))?;
            tx.execute("DELETE FROM schema_migrations WHERE id = $1", &[&m.id])
                .await
                .map_err(db("unrecord migration"))?;
            tx.commit().await.map_err(db("commit rollback"))?;
            progress(Progress::Finished(m.id, started.elapsed()));
        }
        Ok(plan)
    })
    .await
}

async fn with_lock<T>(
    client: &mut Client,
    body: impl AsyncFnOnce(&mut Client) -> Result<T, SchemaError>,
) -> Result<T, SchemaError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db("take migration lock"))?;
    let result = body(client).await;
    // Unlock even after a failure; if the connection died the lock died with it.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

/// How often and how patiently [`connect`] retries a refused or failed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Total attempts, at least one.
    pub attempts: u32,
    /// Delay after the first failure; it doubles after each further failure.
    pub first_delay: std::time::Duration,
    /// Upper bound of one delay.
    pub max_delay: std::time::Duration,
}

impl Backoff {
    /// For services starting next to a database that may still be starting:
    /// 10 attempts, 100 ms doubling up to 5 s, about 20 s in all.
    pub const STARTUP: Backoff = Backoff {
        attempts: 10,
        first_delay: std::time::Duration::from_millis(100),
        max_delay: std::time::Duration::from_secs(5),
    };
    /// One attempt, no retry: for operator commands, which should fail fast.
    pub const ONCE: Backoff = Backoff {
        attempts: 1,
        first_delay: std::time::Duration::ZERO,
        max_delay: std::time::Duration::ZERO,
    };
}

/// Timeout of one connection attempt when the URL does not set `connect_timeout`:
/// without it a black-holed address would hang the start-up gate forever.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects to PostgreSQL at `url` (a `postgres://` URL or key=value string) without
/// TLS, retrying per `backoff`. `on_retry(attempt, error, delay)` is called after each
/// failed attempt that will be retried, so the caller can log it. The connection
/// runs on a spawned Tokio task that ends when the returned client is dropped.
///
/// A URL that does not parse fails at once, without retry.
pub async fn connect(
    url: &str,
    backoff: Backoff,
    mut on_retry: impl FnMut(u32, &tokio_postgres::Error, std::time::Duration),
) -> Result<Client, SchemaError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(db("parse database URL"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let mut delay = backoff.first_delay;
    let mut attempt = 1;
    loop {
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                // A connection error surfaces to the client as "connection closed" on
                // its next query, which is where callers handle it.
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                return Ok(client);
            }
            Err(e) if attempt < backoff.attempts.max(1) => {
                on_retry(attempt, &e, delay);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(backoff.max_delay);
                attempt += 1;
            }
            Err(source) => {
                return Err(SchemaError::Db {
                    context: "connect to database",
                    source,
                });
            }
        }
    }
}

/// The start-up gate every service runs: [`connect`] with [`Backoff::STARTUP`], then
/// [`check`]. Returns the connected client for the caller to keep or drop.
///
/// Callers tell a schema mismatch (exit with EX_CONFIG, the operator must migrate)
/// from an unreachable database with [`SchemaError::is_version_mismatch`].
pub async fn wait_for_schema(
    url: &str,
    on_retry: impl FnMut(u32, &tokio_postgres::Error, std::time::Duration),
) -> Result<Client, SchemaError> {
    let client = connect(url, Backoff::STARTUP, on_retry).await?;
    check(&client).await?;
    Ok(client)
}

impl SchemaError {
    /// True when the database is reachable but its schema is not the one this build
    /// expects (pending or unknown migrations): a deployment error, not an outage.
    pub fn is_version_mismatch(&self) -> bool {
        matches!(
            self,
            SchemaError::Pending { .. } | SchemaError::Unknown { .. }
        )
    }

    /// Exit code of a service whose start-up gate failed with this error: 78
    /// (`EX_CONFIG` of sysexits.h) for a schema version mismatch, which only an
    /// operator can fix, and 1 for anything else.
    pub fn exit_code(&self) -> u8 {
        if self.is_version_mismatch() { 78 } else { 1 }
    }

    /// The error on one line with the driver's causes, for example `connect to
    /// database: error connecting to server: Connection refused (os error 111)`.
    /// (`Display` already includes the driver error but not what caused it.)
    pub fn report(&self) -> String {
        let mut line = self.to_string();
        let mut cause = std::error::Error::source(self).and_then(|driver| driver.source());
        while let Some(c) = cause {
            line.push_str(": ");
            line.push_str(&c.to_string());
            cause = c.source();
        }
        line
    }
}

/// Exit code and one-line report for a service whose run failed on the schema gate,
/// for `gitcluster_proto::service::run`'s `classify`: `None` for any other error.
pub fn exit_status(error: &anyhow::Error) -> Option<(u8, String)> {
    error
        .downcast_ref::<SchemaError>()
        .map(|schema| (schema.exit_code(), schema.report()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_sorted_unique_and_paired() {
        for pair in MIGRATIONS.windows(2) {
            assert!(
                pair[0].id < pair[1].id,
                "{} must sort before {}",
                pair[0].id,
                pair[1].id
            );
        }
        for m in MIGRATIONS {
            assert!(
                !m.up.trim().is_empty() && !m.down.trim().is_empty(),
                "{} is empty",
                m.id
            );
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
        let files = std::fs::read_dir(dir).expect("sql dir").count();
        assert_eq!(
            files,
            MIGRATIONS.len() * 2,
            "every file in sql/ is listed in MIGRATIONS"
        );
    }
}
