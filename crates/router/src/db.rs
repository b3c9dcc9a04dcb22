//! Postgres access: the pool, the one place SQLSTATEs become gRPC statuses, and the
//! multi-statement changes the router makes (each one transaction).

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{
    Connect, Manager, ManagerConfig, Pool, PoolConfig, PoolError, RecyclingMethod, Runtime,
    Timeouts,
};
use futures::future::BoxFuture;
use gitcluster_proto::jobs::{Change, ReplicationJob};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tonic::Status;
use tracing::warn;

const BUMP_GENERATION: &str = include_str!("queries/bump_generation.sql");
const WRITE_TARGETS: &str = include_str!("queries/write_targets.sql");
const INSERT_JOBS: &str = include_str!("queries/insert_jobs.sql");
const RESERVE_ID: &str = include_str!("queries/reserve_repository_id.sql");
const DELETE_REPOSITORY: &str = include_str!("queries/delete_repository.sql");

/// Builds the connection pool (connections are opened on demand).
///
/// Every connection is opened and driven on the runtime calling this (the main one),
/// whichever thread asks the pool for it: calls on the serving threads borrow
/// connections, so one thread finishing its drain (and dropping its runtime) must not
/// take other threads' transactions, or the outbox's last updates, down with it.
///
/// # Panics
/// Outside a Tokio runtime.
pub fn pool(url: &str) -> anyhow::Result<Pool> {
    let pg_config = gitcluster_common::database::postgres_config(url)?;
    let manager = Manager::from_connect(
        pg_config,
        OnRuntime(tokio::runtime::Handle::current()),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let mut config = PoolConfig::new(16);
    config.timeouts = Timeouts {
        wait: Some(Duration::from_secs(5)),
        create: Some(Duration::from_secs(5)),
        recycle: Some(Duration::from_secs(5)),
    };
    Pool::builder(manager)
        .config(config)
        .runtime(Runtime::Tokio1)
        .build()
        .context("create database pool")
}

/// Opens pool connections on one runtime (see [`pool`]).
struct OnRuntime(tokio::runtime::Handle);

impl Connect for OnRuntime {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error>>
    {
        let pg_config = pg_config.clone();
        Box::pin(async move {
            let (opened, client) = oneshot::channel();
            let config = pg_config.clone();
            // The socket registers with the reactor of the runtime that opens it, so
            // the whole connection — open and drive — runs there.
            let task = self.0.spawn(async move {
                match config.connect(NoTls).await {
                    Ok((client, connection)) => {
                        if opened.send(Ok(client)).is_ok()
                            && let Err(error) = connection.await
                        {
                            warn!(%error, "database connection ended");
                        }
                    }
                    Err(e) => drop(opened.send(Err(e))),
                }
            });
            match client.await {
                Ok(client) => Ok((client?, task)),
                // The main runtime is shutting down (the process is ending): this
                // connection can only live here.
                Err(_) => {
                    let (client, connection) = pg_config.connect(NoTls).await?;
                    Ok((client, tokio::spawn(async move { drop(connection.await) })))
                }
            }
        })
    }
}

/// The gRPC status for a database error: the one place SQLSTATEs are interpreted.
///
/// A unique violation can only come from `(virtual_storage, relative_path)`, so it
/// means the repository already exists. A lost connection is Unavailable (retrying
/// may work); anything else is Internal.
pub fn status(what: &str, e: &tokio_postgres::Error) -> Status {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => {
            Status::already_exists("repository already exists")
        }
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE => {
            Status::aborted(format!("{what}: serialization failure, retry"))
        }
        Some(_) => {
            // The database's text can name tables, constraints and the client's own
            // input; it goes to the log, the client gets the step only.
            tracing::error!(step = what, error = %db_error_text(e), "database error");
            Status::internal(format!(
                "{what}: internal database error (see the router's log)"
            ))
        }
        None => {
            tracing::warn!(step = what, error = %db_error_text(e), "database unavailable");
            Status::unavailable(format!("{what}: database unavailable"))
        }
    }
}

/// `e` with its server-side detail (tokio-postgres' Display says only "db error").
fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => format!("{e:#}"),
    }
}

/// The gRPC status for a pool checkout failure.
pub fn pool_status(e: PoolError) -> Status {
    match e {
        PoolError::Backend(e) => status("connect to database", &e),
        other => {
            tracing::warn!(error = %other, "database pool unavailable");
            Status::unavailable("database unavailable")
        }
    }
}

/// What identifies a repository in jobs.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// Repository id.
    pub repository_id: i64,
    /// Its virtual storage.
    pub virtual_storage: String,
    /// Its client-visible path.
    pub relative_path: String,
    /// Its replica path.
    pub replica_path: String,
    /// W3C trace context of the request, stored with the job.
    pub traceparent: Option<String>,
}

impl JobContext {
    fn trace_json(&self) -> serde_json::Value {
        match &self.traceparent {
            Some(tp) => serde_json::json!({ "traceparent": tp }),
            None => serde_json::json!({}),
        }
    }

    fn jobs(&self, source: &str, targets: Vec<String>) -> Vec<ReplicationJob> {
        targets
            .into_iter()
            .map(|target| ReplicationJob {
                job_id: gitcluster_common::bus::new_job_id().to_string(),
                change: Change::Update,
                repository_id: self.repository_id,
                virtual_storage: self.virtual_storage.clone(),
                relative_path: self.relative_path.clone(),
                replica_path: self.replica_path.clone(),
                source_storage: Some(source.to_owned()),
                target_storage: target,
            })
            .collect()
    }
}

async fn insert_jobs(
    tx: &tokio_postgres::Transaction<'_>,
    ctx: &JobContext,
    jobs: &[ReplicationJob],
) -> Result<(), tokio_postgres::Error> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ids: Vec<uuid::Uuid> = jobs
        .iter()
        .map(|j| uuid::Uuid::parse_str(&j.job_id).expect("job ids are generated as UUIDs"))
        .collect();
    let targets: Vec<&str> = jobs.iter().map(|j| j.target_storage.as_str()).collect();
    let source = jobs[0].source_storage.as_deref();
    tx.execute(
        INSERT_JOBS,
        &[
            &ids,
            &ctx.repository_id,
            &ctx.virtual_storage,
            &source,
            &ctx.trace_json(),
            &targets,
        ],
    )
    .await?;
    Ok(())
}

/// Pauses before the second, third and fourth attempt at recording a write.
pub const FINALIZE_RETRY_PAUSES: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// Why one attempt at recording a write failed.
enum Unrecorded {
    /// The repository was deleted while the write ran: nothing to record, ever.
    Deleted,
    /// The database failed (connection lost, pool exhausted, a statement error).
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Unrecorded {
    fn from(e: E) -> Self {
        Unrecorded::Failed(e.into())
    }
}

/// Records a write the primary applied: generation + 1 on the primary and one
/// `update` job per other assigned storage, in one transaction so a recorded
/// generation always comes with the jobs that will spread it. Returns the jobs to
/// publish after commit.
///
/// A database failure is retried after each of [`FINALIZE_RETRY_PAUSES`] (about
/// 4 s in all, on top of the pool's own timeouts): the write is already on the
/// primary, and an unrecorded write is one the replicas never follow. Repeating is
/// safe: a rolled-back attempt left nothing, and one whose commit did land but was
/// not confirmed costs one more generation and duplicate jobs, both harmless.
pub async fn finalize_write(
    pool: &Pool,
    ctx: &JobContext,
    primary: &str,
) -> anyhow::Result<Vec<ReplicationJob>> {
    let mut pauses = FINALIZE_RETRY_PAUSES.iter();
    loop {
        match record_write(pool, ctx, primary).await {
            Ok(jobs) => return Ok(jobs),
            Err(Unrecorded::Deleted) => anyhow::bail!("repository was deleted during the write"),
            Err(Unrecorded::Failed(error)) => match pauses.next() {
                Some(pause) => {
                    warn!(repository_id = ctx.repository_id, error = %format!("{error:#}"), ?pause,
                        "cannot record a write yet; retrying");
                    tokio::time::sleep(*pause).await;
                }
                None => return Err(error),
            },
        }
    }
}

async fn record_write(
    pool: &Pool,
    ctx: &JobContext,
    primary: &str,
) -> Result<Vec<ReplicationJob>, Unrecorded> {
    let mut client = pool.get().await.context("get database connection")?;
    let tx = client.transaction().await.context("begin transaction")?;
    let row = tx
        .query_opt(BUMP_GENERATION, &[&ctx.repository_id, &primary])
        .await
        .context("bump generation")?;
    if row.is_none() {
        return Err(Unrecorded::Deleted);
    }
    let targets: Vec<String> = tx
        .query(
            WRITE_TARGETS,
            &[&ctx.repository_id, &ctx.virtual_storage, &primary],
        )
        .await
        .context("read write targets")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let jobs = ctx.jobs(primary, targets);
    insert_jobs(&tx, ctx, &jobs)
        .await
        .context("insert replication jobs")?;
    tx.commit().await.context("commit write")?;
    Ok(jobs)
}

/// Reserves an id for a new repository; AlreadyExists when the path is taken.
pub async fn reserve_repository_id(
    pool: &Pool,
    virtual_storage: &str,
    relative_path: &str,
) -> Result<i64, Status> {
    let client = pool.get().await.map_err(pool_status)?;
    let row = client
        .query_opt(RESERVE_ID, &[&virtual_storage, &relative_path])
        .await
        .map_err(|e| status("reserve repository id", &e))?;
    row.map(|r| r.get(0))
        .ok_or_else(|| Status::already_exists("repository already exists"))
}

/// The record of a repository whose replicas were just created.
#[derive(Debug, Clone)]
pub struct NewRepository {
    /// Ids, paths and trace context.
    pub ctx: JobContext,
    /// The primary.
    pub primary: String,
    /// Assigned storages (the primary included).
    pub assigned: Vec<String>,
    /// Storages where the replica was created (the primary included).
    pub created: Vec<String>,
}

/// Inserts the record of a new repository with its assignments, its created replicas
/// at generation 0 and an `update` job for every assigned storage that has no
/// replica, in one transaction: either the repository exists with all of that, or
/// not at all. A concurrent creation of the same path makes this fail with
/// AlreadyExists. Returns the jobs to publish after commit.
pub async fn insert_repository(
    pool: &Pool,
    repo: &NewRepository,
) -> Result<Vec<ReplicationJob>, Status> {
    let ctx = &repo.ctx;
    let mut client = pool.get().await.map_err(pool_status)?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| status("begin transaction", &e))?;
    tx.execute(
        "INSERT INTO repositories \
             (repository_id, virtual_storage, relative_path, replica_path, \"primary\", generation) \
         VALUES ($1, $2, $3, $4, $5, 0)",
        &[
            &ctx.repository_id,
            &ctx.virtual_storage,
            &ctx.relative_path,
            &ctx.replica_path,
            &repo.primary,
        ],
    )
    .await
    .map_err(|e| status("insert repository", &e))?;
    tx.execute(
        "INSERT INTO repository_assignments (repository_id, storage) \
         SELECT $1, unnest($2::text[])",
        &[&ctx.repository_id, &repo.assigned],
    )
    .await
    .map_err(|e| status("insert assignments", &e))?;
    tx.execute(
        "INSERT INTO storage_repositories (repository_id, storage, generation) \
         SELECT $1, unnest($2::text[]), 0",
        &[&ctx.repository_id, &repo.created],
    )
    .await
    .map_err(|e| status("insert replicas", &e))?;
    let missing: Vec<String> = repo
        .assigned
        .iter()
        .filter(|s| !repo.created.contains(s))
        .cloned()
        .collect();
    let jobs = ctx.jobs(&repo.primary, missing);
    insert_jobs(&tx, ctx, &jobs)
        .await
        .map_err(|e| status("insert replication jobs", &e))?;
    tx.commit()
        .await
        .map_err(|e| status("commit repository", &e))?;
    Ok(jobs)
}

/// What a deletion removed from the metadata.
#[derive(Debug, Clone)]
pub struct Deleted {
    /// Id of the deleted repository.
    pub repository_id: i64,
    /// Its replica path.
    pub replica_path: String,
    /// Storages that had a replica.
    pub storages: Vec<String>,
}

/// Deletes a repository record; `None` when it does not exist.
pub async fn delete_repository(
    pool: &Pool,
    virtual_storage: &str,
    relative_path: &str,
) -> Result<Option<Deleted>, Status> {
    let client = pool.get().await.map_err(pool_status)?;
    let row = client
        .query_opt(DELETE_REPOSITORY, &[&virtual_storage, &relative_path])
        .await
        .map_err(|e| status("delete repository", &e))?;
    Ok(row.map(|r| Deleted {
        repository_id: r.get(0),
        replica_path: r.get(1),
        storages: r.get(2),
    }))
}

/// What a conditional removal deleted.
pub struct RemovedAsCreated {
    /// Repository id.
    pub repository_id: i64,
    /// Its replica path.
    pub replica_path: String,
    /// The storages whose replicas are still to be removed from disk.
    pub storages: Vec<String>,
}

/// Removes a repository only while it is exactly as created, decided atomically.
///
/// The repository's row is locked (the lock every write's record takes, see
/// `bump_generation.sql`), so no write can be recorded until this ends. Under that
/// lock the repository must still be at its creation generation (0: no write was
/// ever recorded) and `on_primary(replica_path, primary)` must succeed — the
/// primary's own conditional removal, which refuses while the replica has a ref or a
/// write in flight (a write applied there but not yet recorded is waiting for this
/// very lock). Only then is the record deleted. Any refusal rolls back: nothing is
/// removed. `Ok(None)`: no such repository.
pub async fn remove_if_as_created<F, Fut>(
    pool: &Pool,
    virtual_storage: &str,
    relative_path: &str,
    on_primary: F,
) -> Result<Option<RemovedAsCreated>, Status>
where
    F: FnOnce(String, Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>>,
{
    let mut client = pool.get().await.map_err(pool_status)?;
    // Dropping the transaction (an error below, or the caller going away) rolls back.
    let tx = client
        .transaction()
        .await
        .map_err(|e| status("begin conditional removal", &e))?;
    let Some(row) = tx
        .query_opt(
            "SELECT repository_id, replica_path, \"primary\", generation FROM repositories \
             WHERE virtual_storage = $1 AND relative_path = $2 FOR UPDATE",
            &[&virtual_storage, &relative_path],
        )
        .await
        .map_err(|e| status("lock repository", &e))?
    else {
        return Ok(None);
    };
    let repository_id: i64 = row.get(0);
    let replica_path: String = row.get(1);
    if row.get::<_, i64>(3) != 0 {
        return Err(Status::failed_precondition(
            "repository was written since it was created; not removed",
        ));
    }
    on_primary(replica_path.clone(), row.get(2)).await?;
    let storages: Vec<String> = tx
        .query(
            "SELECT storage FROM storage_repositories WHERE repository_id = $1 ORDER BY storage",
            &[&repository_id],
        )
        .await
        .map_err(|e| status("list replicas", &e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.execute(
        "DELETE FROM repositories WHERE repository_id = $1",
        &[&repository_id],
    )
    .await
    .map_err(|e| status("delete repository", &e))?;
    tx.commit()
        .await
        .map_err(|e| status("commit removal", &e))?;
    Ok(Some(RemovedAsCreated {
        repository_id,
        replica_path,
        storages,
    }))
}

/// Renames a repository in the metadata only; `None` when it does not exist,
/// AlreadyExists when the new path is taken. Returns the repository id.
pub async fn rename_repository(
    pool: &Pool,
    virtual_storage: &str,
    from: &str,
    to: &str,
) -> Result<Option<i64>, Status> {
    let client = pool.get().await.map_err(pool_status)?;
    let row = client
        .query_opt(
            "UPDATE repositories SET relative_path = $3 \
             WHERE virtual_storage = $1 AND relative_path = $2 RETURNING repository_id",
            &[&virtual_storage, &from, &to],
        )
        .await
        .map_err(|e| status("rename repository", &e))?;
    Ok(row.map(|r| r.get(0)))
}

/// Relative paths of every repository of a virtual storage, sorted.
pub async fn list_repositories(pool: &Pool, virtual_storage: &str) -> Result<Vec<String>, Status> {
    let client = pool.get().await.map_err(pool_status)?;
    let rows = client
        .query(
            "SELECT relative_path FROM repositories WHERE virtual_storage = $1 \
             ORDER BY relative_path",
            &[&virtual_storage],
        )
        .await
        .map_err(|e| status("list repositories", &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Records that the broker confirmed a job: `published_at` is set whatever the state
/// (unless the replicator, faster than this update, already set it when it started
/// the job), and only a `pending` job becomes `published`.
pub async fn mark_published(pool: &Pool, job_id: &str) -> anyhow::Result<()> {
    let id = uuid::Uuid::parse_str(job_id).context("parse job id")?;
    let client = pool.get().await.context("get database connection")?;
    client
        .execute(
            "UPDATE replication_jobs \
             SET state = CASE WHEN state = 'pending' THEN 'published' ELSE state END, \
                 published_at = COALESCE(published_at, clock_timestamp()), \
                 updated_at = clock_timestamp() \
             WHERE id = $1",
            &[&id],
        )
        .await
        .context("mark job published")?;
    Ok(())
}
