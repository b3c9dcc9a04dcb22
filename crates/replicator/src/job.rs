//! Processing one delivery. The message is only a wake-up call: the job row, the
//! replica generations and the topology are read from Postgres, so a duplicated, stale
//! or reordered message costs one lookup and changes nothing.
//!
//! The protocol, for delivery of job J about (repository R, target T), attempt n:
//! 1. Malformed body → dead-letter it with the parse error, ack (never loop on poison).
//! 2. Row J missing (R deleted, cascade) or `done` → ack (`duplicate`). Row `dead` →
//!    the message goes to the dead-letter queue (again), then ack (`duplicate`): the
//!    row commits before the dead-lettering, so a delivery nacked after a failed
//!    dead-letter publish must not simply be dropped when it comes back.
//! 3. Exclusion: `pg_try_advisory_xact_lock(hash(R/T))` on a pooled connection whose
//!    transaction stays open until the job ends, so across every replicator process
//!    one (R, T) pair is replicated by one worker at a time. Busy → the same message
//!    (same attempt) goes to the shortest retry tier, ack (`busy`).
//! 4. Row → `in_progress`, `attempts = n` (autocommit, so operators see it live).
//! 5. `update`: source generation S read first; target generation ≥ S → nothing to do
//!    (`skipped`); otherwise ReplicateRepository on T from the source, then T's
//!    generation is raised to S only (never lower, never past). `delete_replica`:
//!    RemoveRepository on T (NotFound is fine), then T's record is deleted.
//! 6. The outcome is written in the lock transaction, which commits (releasing the
//!    lock) BEFORE the ack: a crash in between only causes a harmless redelivery.
//!    A failed attempt goes to the retry tier of its delay with attempt n + 1, or after
//!    the last attempt to the dead-letter queue, and only then is acked; when that
//!    publish fails the delivery is nacked back to its queue, so it is never lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use gitcluster_common::bus::lapin::Acker;
use gitcluster_common::bus::lapin::BasicProperties;
use gitcluster_common::bus::lapin::message::Delivery;
use gitcluster_common::bus::lapin::options::{
    BasicAckOptions, BasicNackOptions, BasicPublishOptions,
};
use gitcluster_common::bus::lapin::types::{AMQPValue, FieldTable, ShortString};
use gitcluster_common::bus::{self, Destination, Envelope, Publisher};
use gitcluster_proto::jobs::{
    ATTEMPT_HEADER, CONTENT_TYPE, Change, ERROR_HEADER, JobState, ReplicationJob,
    TRACEPARENT_HEADER,
};
use gitcluster_proto::v1::{RemoveRepositoryRequest, ReplicateRepositoryRequest, Repository};
use tracing::{Instrument as _, debug, error, info, warn};

use crate::db::{DbFailure, classify};
use crate::nodes::Nodes;
use crate::retry::{self, AfterFailure};

/// Counter of finished deliveries, labelled `outcome`.
pub const JOBS_METRIC: &str = "gitcluster_replicator_jobs_total";
/// Histogram: job row created → attempt started, seconds.
pub const DELAY_METRIC: &str = "gitcluster_replicator_job_delay_seconds";
/// Histogram: attempt started → finished, seconds.
pub const LATENCY_METRIC: &str = "gitcluster_replicator_job_latency_seconds";
/// Gauge: jobs running now, labelled `storage` (the target).
pub const IN_FLIGHT_METRIC: &str = "gitcluster_replicator_in_flight";

/// Everything a job needs, shared by all of them.
pub struct Jobs {
    /// Database pool (sized for a lock transaction plus one more connection per job).
    pub pool: Pool,
    /// Storage node clients.
    pub nodes: Nodes,
    /// Retry tier delays.
    pub delays: Vec<u64>,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// Deadline of one storage-node call.
    pub job_timeout: Duration,
}

/// How a delivery ended, as counted in [`JOBS_METRIC`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target was changed and its record updated.
    Done,
    /// Nothing to copy: the target was already at or past the source generation.
    Skipped,
    /// The job was already finished or no longer exists.
    Duplicate,
    /// The (repository, target) pair was busy, or Postgres could not record the
    /// outcome: requeued without using an attempt.
    Busy,
    /// The attempt failed and will be retried.
    Failed,
    /// The last attempt failed: dead-lettered.
    Dead,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Skipped => "skipped",
            Outcome::Duplicate => "duplicate",
            Outcome::Busy => "busy",
            Outcome::Failed => "failed",
            Outcome::Dead => "dead",
        }
    }
}

/// How long a delivery whose republish failed is held before it is nacked back.
const REPUBLISH_FAILED_PAUSE: Duration = Duration::from_millis(200);

/// What the bus must do once Postgres says how the attempt went.
#[derive(Debug)]
enum Step {
    /// Recorded (or nothing to record): ack.
    Ack(Outcome),
    /// The (repository, target) pair is busy: same attempt to the shortest retry
    /// tier, then ack.
    Busy,
    /// Postgres could not record the outcome: same attempt to the shortest retry
    /// tier, then ack (not counted as an attempt: the job may well have been fine).
    Requeue(String),
    /// The attempt failed and is recorded as `failed` or `dead`.
    Failed { error: String, fate: AfterFailure },
    /// The row already says `dead` (with this error): the message goes to the
    /// dead-letter queue again rather than being dropped, because the dead-lettering
    /// that followed the row's update may have failed (the row commits first).
    AlreadyDead(String),
}

/// Why an attempt did not succeed.
enum Failure {
    /// The job itself failed (node down, source missing...): uses an attempt.
    Job(String),
    /// Postgres failed: nothing was recorded, the job must run again.
    Db(tokio_postgres::Error, &'static str),
    /// No database connection to be had: the job must run again.
    Pool(String),
}

trait DbContext<T> {
    fn db(self, what: &'static str) -> Result<T, Failure>;
}

impl<T> DbContext<T> for Result<T, tokio_postgres::Error> {
    fn db(self, what: &'static str) -> Result<T, Failure> {
        self.map_err(|e| Failure::Db(e, what))
    }
}

/// Keeps [`IN_FLIGHT_METRIC`] right even when a job is dropped mid-way.
struct InFlight(String);

impl InFlight {
    fn start(storage: &str) -> Self {
        metrics::gauge!(IN_FLIGHT_METRIC, "storage" => storage.to_owned()).increment(1.0);
        InFlight(storage.to_owned())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(IN_FLIGHT_METRIC, "storage" => self.0.clone()).decrement(1.0);
    }
}

/// Runs one delivery to its end: the job, the Postgres update, then the ack (or the
/// republish and ack, or a nack).
pub async fn handle(jobs: Arc<Jobs>, publisher: Publisher, delivery: Delivery) {
    let attempt = bus::attempt_of(&delivery.properties);
    let parsed = match parse(&delivery.data) {
        Ok(parsed) => parsed,
        Err(e) => {
            let reason = one_line(&format!("malformed message: {e}"));
            warn!(error = %reason, "dead-lettering a malformed replication message");
            match publish_raw_dead(&publisher, &delivery, &reason).await {
                Ok(()) => {
                    ack(&delivery).await;
                    metrics::counter!(JOBS_METRIC, "outcome" => "dead").increment(1);
                }
                Err(e) => {
                    warn!(error = %e, "cannot dead-letter malformed message, requeueing it");
                    tokio::time::sleep(REPUBLISH_FAILED_PAUSE).await;
                    nack(&delivery.acker).await;
                }
            }
            return;
        }
    };
    let job = &parsed.0;
    let span = tracing::info_span!(
        "replication_job",
        job_id = %job.job_id,
        repository_id = job.repository_id,
        target = %job.target_storage,
        attempt,
    );
    let traceparent = bus::header_str(&delivery.properties, TRACEPARENT_HEADER);
    async {
        let _in_flight = InFlight::start(&job.target_storage);
        let step = process(&jobs, &parsed, attempt).await;
        let outcome = finish(
            &jobs,
            &publisher,
            &delivery,
            job,
            attempt,
            traceparent.as_deref(),
            step,
        )
        .await;
        if let Some(outcome) = outcome {
            metrics::counter!(JOBS_METRIC, "outcome" => outcome.label()).increment(1);
        }
    }
    .instrument(span)
    .await;
}

fn parse(data: &[u8]) -> anyhow::Result<(ReplicationJob, uuid::Uuid)> {
    let job: ReplicationJob = serde_json::from_slice(data)?;
    let id = uuid::Uuid::parse_str(&job.job_id)
        .map_err(|e| anyhow::anyhow!("job_id {:?} is not a UUID: {e}", job.job_id))?;
    Ok((job, id))
}

/// Runs the job and records its outcome in Postgres; touches no message.
async fn process(jobs: &Jobs, (job, id): &(ReplicationJob, uuid::Uuid), attempt: u32) -> Step {
    match attempt_job(jobs, job, *id, attempt).await {
        Ok(step) => step,
        Err(Failure::Db(e, what)) => match classify(&e) {
            DbFailure::RepositoryGone => {
                info!("repository deleted while the job ran");
                Step::Ack(Outcome::Duplicate)
            }
            DbFailure::Unavailable => Step::Requeue(one_line(&format!("{what}: {e}"))),
        },
        Err(Failure::Pool(error)) => Step::Requeue(error),
        // attempt_job turns job failures into a Step itself; this arm is defensive.
        Err(Failure::Job(error)) => Step::Requeue(error),
    }
}

/// Steps 2 to 6 of the module doc.
async fn attempt_job(
    jobs: &Jobs,
    job: &ReplicationJob,
    id: uuid::Uuid,
    attempt: u32,
) -> Result<Step, Failure> {
    let load = include_str!("queries/load_job.sql");
    let row = {
        let client = jobs.pool.get().await.map_err(pool_failure)?;
        client.query_opt(load, &[&id]).await.db("load job")?
    };
    let Some(row) = row else {
        debug!("job row gone: repository deleted or job never recorded");
        return Ok(Step::Ack(Outcome::Duplicate));
    };
    let state: String = row.get("state");
    if let Some(step) = finished(&state, row.get("error")) {
        return Ok(step);
    }
    let repository_id: i64 = row.get("repository_id");
    let target: String = row.get("target_storage");
    let change: String = row.get("change");
    let virtual_storage: String = row.get("virtual_storage");
    let source: Option<String> = row.get("source_storage");
    let replica_path: String = row.get("replica_path");
    if repository_id != job.repository_id || target != job.target_storage {
        // The row is the truth; a message disagreeing with it is a publisher bug.
        warn!(row_target = %target, "message disagrees with its job row; following the row");
    }

    // Exclusion (invariant: one worker per (repository, target) pair across every
    // replicator): a transaction-scoped advisory lock on a connection held for the
    // whole job. The transaction also carries the final writes, so the outcome and the
    // release of the lock commit together. It sits idle while the copy runs, so an
    // `idle_in_transaction_session_timeout` set on the database or role is lifted for
    // it: such a timeout would end every copy longer than it, release the lock and
    // send the job round again, forever.
    let mut lock_conn = jobs.pool.get().await.map_err(pool_failure)?;
    let tx = lock_conn.transaction().await.db("begin lock transaction")?;
    let acquired: bool = tx
        .query_one(
            include_str!("queries/take_replication_lock.sql"),
            &[&repository_id, &target],
        )
        .await
        .db("take replication lock")?
        .get(0);
    if !acquired {
        debug!("another worker holds this repository and target");
        return Ok(Step::Busy);
    }
    // Re-read under the lock: the holder we waited out may have finished this very job.
    let again = tx
        .query_opt(include_str!("queries/job_state.sql"), &[&id])
        .await
        .db("re-read job")?;
    let step = match again {
        Some(row) => finished(&row.get::<_, String>(0), row.get(1)),
        // Deleted meanwhile (with its repository): nothing left to do.
        None => Some(Step::Ack(Outcome::Duplicate)),
    };
    if let Some(step) = step {
        tx.commit().await.db("commit lock transaction")?;
        return Ok(step);
    }

    // Autocommit on another connection: operators see `in_progress` while it runs.
    let created_at: chrono::DateTime<chrono::Utc> = {
        let client = jobs.pool.get().await.map_err(pool_failure)?;
        client
            .query_one(
                include_str!("queries/mark_in_progress.sql"),
                &[&id, &(attempt.min(i32::MAX as u32) as i32)],
            )
            .await
            .db("mark job in progress")?
            .get(0)
    };
    let waited = (chrono::Utc::now() - created_at)
        .to_std()
        .unwrap_or_default();
    metrics::histogram!(DELAY_METRIC).record(waited.as_secs_f64());
    let started = Instant::now();
    info!(
        change,
        source = source.as_deref().unwrap_or(""),
        "replication job started"
    );

    let ctx = Target {
        repository_id,
        virtual_storage: &virtual_storage,
        target: &target,
        replica_path: &replica_path,
    };
    let result = match Change::parse(&change) {
        Some(Change::Update) => match source.as_deref() {
            Some(source) => update(jobs, &tx, &ctx, source).await,
            None => Err(Failure::Job("update job without a source storage".into())),
        },
        Some(Change::DeleteReplica) => delete_replica(jobs, &tx, &ctx).await,
        None => Err(Failure::Job(format!("unknown change {change:?}"))),
    };
    let step = match result {
        Ok((outcome, source_generation)) => {
            tx.execute(
                include_str!("queries/record_done.sql"),
                &[&id, &source_generation],
            )
            .await
            .db("record job done")?;
            info!(
                outcome = outcome.label(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "replication job finished"
            );
            Step::Ack(outcome)
        }
        Err(e @ (Failure::Db(..) | Failure::Pool(_))) => return Err(e),
        Err(Failure::Job(error)) => {
            let error = one_line(&error);
            let fate = retry::after_failure(&jobs.delays, attempt, jobs.max_attempts);
            let state = if fate == AfterFailure::Dead {
                JobState::Dead
            } else {
                JobState::Failed
            }
            .as_str();
            tx.execute(
                include_str!("queries/record_failure.sql"),
                &[&id, &state, &error],
            )
            .await
            .db("record job failure")?;
            Step::Failed { error, fate }
        }
    };
    tx.commit().await.db("commit job outcome")?;
    metrics::histogram!(LATENCY_METRIC).record(started.elapsed().as_secs_f64());
    Ok(step)
}

/// What to do with a delivery whose job row is already in a final state: `None`
/// while the job still has to run.
fn finished(state: &str, error: Option<String>) -> Option<Step> {
    match JobState::parse(state) {
        Some(JobState::Done) => {
            debug!("job already done");
            Some(Step::Ack(Outcome::Duplicate))
        }
        Some(JobState::Dead) => Some(Step::AlreadyDead(
            error.unwrap_or_else(|| "dead before this delivery".into()),
        )),
        _ => None,
    }
}

/// The replica a job changes.
struct Target<'a> {
    repository_id: i64,
    virtual_storage: &'a str,
    target: &'a str,
    replica_path: &'a str,
}

type Tx<'a> = deadpool_postgres::Transaction<'a>;

async fn generation(
    tx: &Tx<'_>,
    repository_id: i64,
    storage: &str,
) -> Result<Option<i64>, Failure> {
    Ok(tx
        .query_opt(
            "SELECT generation FROM storage_repositories WHERE repository_id = $1 AND storage = $2",
            &[&repository_id, &storage],
        )
        .await
        .db("read generation")?
        .map(|r| r.get(0)))
}

async fn address(tx: &Tx<'_>, virtual_storage: &str, storage: &str) -> Result<String, Failure> {
    tx.query_opt(
        "SELECT address FROM storages WHERE virtual_storage = $1 AND storage = $2",
        &[&virtual_storage, &storage],
    )
    .await
    .db("read storage address")?
    .map(|r| r.get(0))
    .ok_or_else(|| {
        Failure::Job(format!(
            "storage {storage:?} is not in virtual storage {virtual_storage:?}"
        ))
    })
}

/// Returns the outcome and the source generation the target was raised to.
async fn update(
    jobs: &Jobs,
    tx: &Tx<'_>,
    t: &Target<'_>,
    source: &str,
) -> Result<(Outcome, Option<i64>), Failure> {
    if source == t.target {
        return Err(Failure::Job(
            "source and target are the same storage".into(),
        ));
    }
    // The generation rule: read the source's generation BEFORE copying; the copy
    // proves at least that much, and the target may be raised to it only.
    let Some(source_generation) = generation(tx, t.repository_id, source).await? else {
        return Err(Failure::Job("source replica not found".into()));
    };
    let target_generation = generation(tx, t.repository_id, t.target).await?;
    if target_generation.is_some_and(|g| g >= source_generation) {
        debug!(
            source_generation,
            target_generation, "target already up to date"
        );
        return Ok((Outcome::Skipped, Some(source_generation)));
    }
    let target_address = address(tx, t.virtual_storage, t.target).await?;
    let source_address = address(tx, t.virtual_storage, source).await?;
    let mut client = jobs
        .nodes
        .repository(&target_address)
        .map_err(Failure::Job)?;
    let mut request = tonic::Request::new(ReplicateRepositoryRequest {
        repository: Some(Repository {
            storage_name: t.target.to_owned(),
            relative_path: t.replica_path.to_owned(),
        }),
        source: Some(Repository {
            storage_name: source.to_owned(),
            relative_path: t.replica_path.to_owned(),
        }),
        source_address,
    });
    request.set_timeout(jobs.job_timeout);
    match tokio::time::timeout(jobs.job_timeout, client.replicate_repository(request)).await {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => {
            return Err(Failure::Job(format!(
                "replicate repository on {}: {:?}: {}",
                t.target,
                status.code(),
                status.message()
            )));
        }
        Err(_) => {
            return Err(Failure::Job(format!(
                "replicate repository on {}: no answer within {:?}",
                t.target, jobs.job_timeout
            )));
        }
    }
    tx.execute(
        include_str!("queries/raise_target_generation.sql"),
        &[&t.repository_id, &t.target, &source_generation],
    )
    .await
    .db("raise target generation")?;
    Ok((Outcome::Done, Some(source_generation)))
}

async fn delete_replica(
    jobs: &Jobs,
    tx: &Tx<'_>,
    t: &Target<'_>,
) -> Result<(Outcome, Option<i64>), Failure> {
    let target_address = address(tx, t.virtual_storage, t.target).await?;
    let mut client = jobs
        .nodes
        .repository(&target_address)
        .map_err(Failure::Job)?;
    let mut request = tonic::Request::new(RemoveRepositoryRequest {
        repository: Some(Repository {
            storage_name: t.target.to_owned(),
            relative_path: t.replica_path.to_owned(),
        }),
        only_if_empty: false,
    });
    request.set_timeout(jobs.job_timeout);
    match tokio::time::timeout(jobs.job_timeout, client.remove_repository(request)).await {
        Ok(Ok(_)) => {}
        // Already gone: the goal of the job holds.
        Ok(Err(status)) if status.code() == tonic::Code::NotFound => {}
        Ok(Err(status)) => {
            return Err(Failure::Job(format!(
                "remove repository on {}: {:?}: {}",
                t.target,
                status.code(),
                status.message()
            )));
        }
        Err(_) => {
            return Err(Failure::Job(format!(
                "remove repository on {}: no answer within {:?}",
                t.target, jobs.job_timeout
            )));
        }
    }
    tx.execute(
        "DELETE FROM storage_repositories WHERE repository_id = $1 AND storage = $2",
        &[&t.repository_id, &t.target],
    )
    .await
    .db("delete replica record")?;
    Ok((Outcome::Done, None))
}

/// Does what `step` asks of the bus. Returns the outcome to count: none when the
/// delivery went back to its queue (it is counted when it comes back).
async fn finish(
    jobs: &Jobs,
    publisher: &Publisher,
    delivery: &Delivery,
    job: &ReplicationJob,
    attempt: u32,
    traceparent: Option<&str>,
    step: Step,
) -> Option<Outcome> {
    // Every step but an ack republishes: where to, with which attempt and error, and
    // what it counts as once acked.
    let (destination, attempt, error, outcome) = match step {
        Step::Ack(outcome) => {
            ack(delivery).await;
            return Some(outcome);
        }
        Step::Busy => (
            Destination::Retry(retry::shortest(&jobs.delays)),
            attempt,
            None,
            Outcome::Busy,
        ),
        Step::Requeue(reason) => {
            warn!(error = %reason, "cannot record the job's outcome in postgres, requeueing it");
            (
                Destination::Retry(retry::shortest(&jobs.delays)),
                attempt,
                None,
                Outcome::Busy,
            )
        }
        Step::Failed {
            error,
            fate:
                AfterFailure::Retry {
                    delay_ms,
                    next_attempt,
                },
        } => {
            warn!(error = %error, delay_ms, "replication attempt failed, will retry");
            (
                Destination::Retry(delay_ms),
                next_attempt,
                Some(error),
                Outcome::Failed,
            )
        }
        Step::Failed {
            error,
            fate: AfterFailure::Dead,
        } => {
            error!(error = %error, "replication job dead after its last attempt");
            (Destination::Dead, attempt, Some(error), Outcome::Dead)
        }
        Step::AlreadyDead(error) => {
            warn!(error = %error, "delivery of a dead job; dead-lettering it again");
            (Destination::Dead, attempt, Some(error), Outcome::Duplicate)
        }
    };
    let envelope = Envelope {
        attempt,
        traceparent,
        error: error.as_deref(),
    };
    republish_then_ack(publisher, delivery, job, destination, envelope)
        .await
        .then_some(outcome)
}

/// Publishes the job to `destination`, then acks the delivery; false when the
/// publish failed and the delivery was nacked back to its queue instead (its outcome
/// is then counted when it comes back, not now).
async fn republish_then_ack(
    publisher: &Publisher,
    delivery: &Delivery,
    job: &ReplicationJob,
    destination: Destination,
    envelope: Envelope<'_>,
) -> bool {
    match publisher.publish(job, destination, envelope).await {
        Ok(()) => {
            ack(delivery).await;
            true
        }
        Err(e) => {
            // The message must never be lost: give it back to its queue. After a
            // pause: it comes straight back, and until the supervisor has rebuilt a
            // broken publisher channel every attempt would fail the same way.
            warn!(error = %e, ?destination, "republish failed, requeueing the delivery");
            tokio::time::sleep(REPUBLISH_FAILED_PAUSE).await;
            nack(&delivery.acker).await;
            false
        }
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone: the broker redelivers, and the job row makes that a no-op.
        warn!(error = %e, "ack failed; the job will be redelivered");
    }
}

/// Gives a delivery back to its queue (shutdown, or a failed republish).
pub async fn nack(acker: &Acker) {
    let options = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    if let Err(e) = acker.nack(options).await {
        warn!(error = %e, "nack failed; the broker requeues unacked deliveries when the channel closes");
    }
}

/// Dead-letters a body that is not a job (it cannot go through [`Publisher::publish`],
/// which takes a parsed job), keeping the original bytes for the operator.
async fn publish_raw_dead(
    publisher: &Publisher,
    delivery: &Delivery,
    reason: &str,
) -> anyhow::Result<()> {
    let mut headers = FieldTable::default();
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongInt(1));
    headers.insert(ERROR_HEADER.into(), AMQPValue::LongString(reason.into()));
    let mut props = BasicProperties::default()
        .with_content_type(ShortString::from(CONTENT_TYPE))
        .with_delivery_mode(2)
        .with_app_id(ShortString::from(crate::SERVICE))
        .with_headers(headers);
    if let Some(id) = delivery.properties.message_id() {
        props = props.with_message_id(id.clone());
    }
    let dead = publisher.names().dead_letter();
    let confirm = publisher
        .channel()
        .basic_publish(
            dead.as_str().into(),
            delivery.routing_key.clone(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &delivery.data,
            props,
        )
        .await?
        .await?;
    anyhow::ensure!(!confirm.is_nack(), "broker nacked the dead letter");
    anyhow::ensure!(
        confirm.take_message().is_none(),
        "dead-letter queue missing"
    );
    Ok(())
}

fn pool_failure(e: deadpool_postgres::PoolError) -> Failure {
    Failure::Pool(format!("database pool: {e}"))
}

/// Errors go in one header and one column: keep them on one line.
fn one_line(s: &str) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    const MAX: usize = 1000;
    if line.len() <= MAX {
        return line;
    }
    let mut cut = MAX;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &line[..cut])
}
