//! The replicator against real storage nodes, PostgreSQL, RabbitMQ and git: jobs are
//! rows inserted by SQL and messages published on a bus prefix private to each test.

#![allow(clippy::disallowed_methods)] // tests block their own thread on child processes
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use gitcluster_common::bus::lapin::message::BasicGetMessage;
use gitcluster_common::bus::lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use gitcluster_common::bus::lapin::types::FieldTable;
use gitcluster_common::bus::lapin::{BasicProperties, Channel, Connection};
use gitcluster_common::bus::{self, Destination, Envelope, Publisher};
use gitcluster_integration_tests::bus::delete_topology;
use gitcluster_integration_tests::{
    Cluster, Member, TestDb, amqp_url, binary, eventually, git, http_get, metric_sum, scratch_dir,
};
use gitcluster_proto::jobs::{BusNames, Change, ERROR_HEADER, ReplicationJob};
use gitcluster_proto::v1::{CalculateChecksumRequest, RepositoryExistsRequest};

const VS: &str = "default";
const PATH: &str = "group/project.git";
const REPO_ID: i64 = 42;

/// A replicator [`Member`] on a private bus prefix.
struct Replicator {
    member: Member,
}

/// Retry tiers of the test replicators, in milliseconds.
const DELAYS: [u64; 2] = [100, 200];

/// A fresh bus (tiers [`DELAYS`]) and a replicator for `cluster` on it.
async fn replicator_for(cluster: &Cluster, extra: &[&str]) -> (Bus, Replicator) {
    let bus = Bus::new(&DELAYS).await;
    let replicator = Replicator::start(
        &cluster.db.as_ref().expect("database").url,
        &bus.prefix(),
        &cluster.token,
        cluster.dir(),
        &DELAYS,
        extra,
    )
    .await;
    (bus, replicator)
}

impl Replicator {
    /// Starts a replicator and waits until it is ready (`/healthz`).
    async fn start(
        db_url: &str,
        prefix: &str,
        token: &str,
        dir: &Path,
        delays: &[u64],
        extra: &[&str],
    ) -> Replicator {
        let mut r = Replicator::spawn(db_url, prefix, token, dir, delays, extra);
        r.member.wait_ready().await;
        r
    }

    /// Starts a replicator without waiting for anything.
    fn spawn(
        db_url: &str,
        prefix: &str,
        token: &str,
        dir: &Path,
        delays: &[u64],
        extra: &[&str],
    ) -> Replicator {
        let delays: Vec<String> = delays.iter().map(u64::to_string).collect();
        // One log per replicator, even when a directory holds several.
        let name = format!("replicator-{}", bus::new_job_id().simple());
        let mut member = Member::new(name, binary("gitcluster-replicator"), dir)
            .arg(format!("--retry-delays-ms={}", delays.join(",")))
            .args(extra.iter().copied())
            .env("DATABASE_URL", db_url)
            .env("AMQP_URL", amqp_url())
            .env("GITCLUSTER_BUS_PREFIX", prefix)
            .env("GITCLUSTER_INTERNAL_TOKEN", token)
            .env("RUST_LOG", "info,gitcluster_replicator=debug");
        member.spawn();
        Replicator { member }
    }

    fn log(&self) -> String {
        self.member.log()
    }

    async fn jobs(&self, outcome: &str) -> f64 {
        let body = self.member.metrics().await.unwrap();
        metric_sum(
            &body,
            "gitcluster_replicator_jobs_total",
            &[("outcome", outcome)],
        )
    }

    /// SIGTERM, then the exit code; also fails on ERROR lines not containing `expected`.
    async fn terminate(&mut self, expected: &[&str]) -> Option<i32> {
        let status = self.member.terminate().await;
        eprintln!("replicator log:\n{}", self.log());
        let unexpected = self.member.unexpected_errors(expected);
        assert!(
            unexpected.is_empty(),
            "unexpected ERROR lines:\n{}",
            unexpected.join("\n")
        );
        status.code()
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        if self.member.pid().is_some() {
            self.member.kill();
            eprintln!("replicator log:\n{}", self.log());
        }
    }
}

/// The test's private slice of the broker.
struct Bus {
    conn: Connection,
    publisher: Publisher,
    names: BusNames,
    delays: Vec<u64>,
}

impl Bus {
    async fn new(delays: &[u64]) -> Bus {
        let prefix = format!("t{}", bus::new_job_id().simple());
        let names = BusNames::new(&prefix);
        let conn = bus::connect(&amqp_url(), "replicator-test")
            .await
            .expect("RabbitMQ reachable (make test starts it)");
        let publisher = Publisher::new(&conn, names.clone(), "gitcluster-router")
            .await
            .unwrap();
        bus::declare_base(publisher.channel(), &names, delays)
            .await
            .unwrap();
        for s in ["gitaly-1", "gitaly-2"] {
            bus::declare_target(publisher.channel(), &names, VS, s)
                .await
                .unwrap();
        }
        Bus {
            conn,
            publisher,
            names,
            delays: delays.to_vec(),
        }
    }

    fn prefix(&self) -> String {
        self.names
            .replication_exchange()
            .trim_end_matches(".replication")
            .to_owned()
    }

    fn channel(&self) -> &Channel {
        self.publisher.channel()
    }

    /// The next message of the dead-letter queue (not acked yet), waiting for one;
    /// `what` names it when the wait gives up.
    async fn next_dead_letter(&self, what: &str) -> BasicGetMessage {
        eventually!(what, {
            let got = self
                .channel()
                .basic_get(
                    self.names.dead_letter().as_str().into(),
                    BasicGetOptions::default(),
                )
                .await?;
            got.context("dead-letter queue empty")
        })
    }

    async fn publish(&self, job: &ReplicationJob) {
        self.publisher
            .publish(
                job,
                Destination::Queue,
                Envelope {
                    attempt: 1,
                    ..Envelope::default()
                },
            )
            .await
            .expect("publish job");
    }

    /// Deletes every queue and exchange of the prefix.
    async fn delete(self) {
        let storages = ["gitaly-1".to_owned(), "gitaly-2".to_owned()];
        delete_topology(&self.prefix(), &storages, &self.delays);
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// Two storage nodes, a gateway on node 1, a database with the topology, and a
/// repository pushed to gitaly-1 and recorded at `source_generation`.
async fn cluster_with_repository(source_generation: i64) -> (Cluster, tokio_postgres::Client) {
    let cluster = Cluster::builder()
        .storages(2)
        .gateway()
        .database()
        .start()
        .await;
    let db = cluster.db.as_ref().unwrap().client().await;
    db.execute(
        "INSERT INTO virtual_storages (name) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&VS],
    )
    .await
    .unwrap();
    for s in &cluster.storages {
        db.execute(
            "INSERT INTO storages (virtual_storage, storage, address) VALUES ($1, $2, $3)
             ON CONFLICT (virtual_storage, storage) DO UPDATE SET address = EXCLUDED.address",
            &[&VS, &s.storage, &s.address],
        )
        .await
        .unwrap();
    }

    let work = cluster.dir().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git::run(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README"), "hello\n").unwrap();
    git::commit_all(&work, "first");
    git::run(&work, &["tag", "v1"]);
    std::fs::write(work.join("more"), "more\n").unwrap();
    git::commit_all(&work, "second");
    git::run(&work, &["branch", "feature"]);
    let url = cluster.repo_url(PATH);
    git::run(&work, &["push", "-q", &url, "main", "feature", "v1"]);

    db.execute(
        "INSERT INTO repositories (repository_id, virtual_storage, relative_path, replica_path, \"primary\", generation)
         VALUES ($1, $2, $3, $3, 'gitaly-1', $4)",
        &[&REPO_ID, &VS, &PATH, &source_generation],
    )
    .await
    .unwrap();
    set_generation(&db, "gitaly-1", source_generation).await;
    (cluster, db)
}

async fn set_generation(db: &tokio_postgres::Client, storage: &str, generation: i64) {
    db.execute(
        "INSERT INTO storage_repositories (repository_id, storage, generation) VALUES ($1, $2, $3)
         ON CONFLICT (repository_id, storage) DO UPDATE SET generation = EXCLUDED.generation",
        &[&REPO_ID, &storage, &generation],
    )
    .await
    .unwrap();
}

async fn generation(db: &tokio_postgres::Client, storage: &str) -> Option<i64> {
    db.query_opt(
        "SELECT generation FROM storage_repositories WHERE repository_id = $1 AND storage = $2",
        &[&REPO_ID, &storage],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

/// Inserts the job row (state `published`) and returns its message body.
async fn insert_job(db: &tokio_postgres::Client) -> ReplicationJob {
    let id = bus::new_job_id();
    db.execute(
        "INSERT INTO replication_jobs (id, repository_id, virtual_storage, change, source_storage, target_storage, state, published_at)
         VALUES ($1, $2, $3, 'update', 'gitaly-1', 'gitaly-2', 'published', now())",
        &[&id, &REPO_ID, &VS],
    )
    .await
    .unwrap();
    ReplicationJob {
        job_id: id.to_string(),
        change: Change::Update,
        repository_id: REPO_ID,
        virtual_storage: VS.into(),
        relative_path: PATH.into(),
        replica_path: PATH.into(),
        source_storage: Some("gitaly-1".into()),
        target_storage: "gitaly-2".into(),
    }
}

/// `(state, attempts, error, source_generation)` of a job row.
async fn job_row(
    db: &tokio_postgres::Client,
    job: &ReplicationJob,
) -> (String, i32, Option<String>, Option<i64>) {
    let id = uuid::Uuid::parse_str(&job.job_id).unwrap();
    let r = db
        .query_one(
            "SELECT state::text, attempts, error, source_generation FROM replication_jobs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

async fn checksum(cluster: &Cluster, i: usize) -> String {
    let mut client = cluster.repository_client(i).await;
    client
        .calculate_checksum(CalculateChecksumRequest {
            repository: Some(cluster.repository(i, PATH)),
        })
        .await
        .expect("checksum")
        .into_inner()
        .checksum
}

async fn exists(cluster: &Cluster, i: usize) -> bool {
    let mut client = cluster.repository_client(i).await;
    client
        .repository_exists(RepositoryExistsRequest {
            repository: Some(cluster.repository(i, PATH)),
        })
        .await
        .expect("repository exists")
        .into_inner()
        .exists
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_job_mirrors_target_at_source_generation_and_a_duplicate_is_harmless() {
    let (cluster, db) = cluster_with_repository(3).await;
    let (bus, mut replicator) = replicator_for(&cluster, &[]).await;

    // Another worker (here: the test) holds the (repository, target) pair: the job
    // waits in the retry tier without using up attempts.
    let mut holder = cluster.db.as_ref().unwrap().client().await;
    let lock = holder.transaction().await.unwrap();
    lock.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1::bigint::text || '/' || $2::text, 0))",
        &[&REPO_ID, &"gitaly-2"],
    )
    .await
    .unwrap();
    let job = insert_job(&db).await;
    bus.publish(&job).await;
    eventually!("job found busy twice", {
        ensure!(replicator.jobs("busy").await >= 2.0);
        Ok(())
    });
    assert_eq!(job_row(&db, &job).await.0, "published");
    lock.commit().await.unwrap();

    wait_done(&db, &job, "job done").await;
    let (_, attempts, error, source_generation) = job_row(&db, &job).await;
    assert_eq!((attempts, error, source_generation), (1, None, Some(3)));
    assert_eq!(
        generation(&db, "gitaly-2").await,
        Some(3),
        "exactly the source's"
    );
    assert_eq!(checksum(&cluster, 0).await, checksum(&cluster, 1).await);
    assert_ne!(checksum(&cluster, 1).await, "0".repeat(40));
    assert_eq!(replicator.jobs("done").await, 1.0);

    // The same message again (an outbox re-publish): a lookup, nothing else.
    bus.publish(&job).await;
    eventually!("duplicate counted", {
        ensure!(replicator.jobs("duplicate").await == 1.0);
        Ok(())
    });
    assert_eq!(generation(&db, "gitaly-2").await, Some(3));
    assert_eq!(job_row(&db, &job).await.0, "done");

    assert_eq!(replicator.terminate(&[]).await, Some(0));
    bus.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_ahead_of_source_is_skipped_never_lowered_and_poison_is_dead_lettered() {
    let (cluster, db) = cluster_with_repository(1).await;
    set_generation(&db, "gitaly-2", 5).await;
    let (bus, mut replicator) = replicator_for(&cluster, &[]).await;

    let job = insert_job(&db).await;
    bus.publish(&job).await;
    wait_done(&db, &job, "job done").await;
    assert_eq!(replicator.jobs("skipped").await, 1.0);
    assert_eq!(generation(&db, "gitaly-2").await, Some(5), "never lowered");
    assert!(!exists(&cluster, 1).await, "nothing was copied");

    // A body that is not a job goes to the dead-letter queue, once.
    bus.channel()
        .basic_publish(
            bus.names.replication_exchange().as_str().into(),
            BusNames::routing_key(VS, "gitaly-2").as_str().into(),
            BasicPublishOptions::default(),
            b"{not json",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let dead = bus.next_dead_letter("poison dead-lettered").await;
    let error = bus::header_str(&dead.delivery.properties, ERROR_HEADER).unwrap();
    assert!(error.starts_with("malformed message: "), "{error}");
    assert_eq!(dead.delivery.data, b"{not json");
    dead.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();

    assert_eq!(replicator.terminate(&[]).await, Some(0));
    bus.delete().await;
}

/// Waits until `job`'s row says `done`.
async fn wait_done(db: &tokio_postgres::Client, job: &ReplicationJob, what: &str) {
    eventually!(what, {
        let (state, ..) = job_row(db, job).await;
        ensure!(state == "done", "state {state}");
        Ok(())
    });
}

/// A repository whose job target (gitaly-2) is down, and a replicator that gives a
/// job `max_attempts` attempts.
async fn with_dead_target(max_attempts: u32) -> (Cluster, tokio_postgres::Client, Bus, Replicator) {
    let (mut cluster, db) = cluster_with_repository(1).await;
    cluster.storages[1].member.kill();
    let attempts = format!("--max-attempts={max_attempts}");
    let (bus, replicator) =
        replicator_for(&cluster, &[attempts.as_str(), "--job-timeout-secs=10"]).await;
    (cluster, db, bus, replicator)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_retries_with_growing_delays_then_is_dead_lettered() {
    let (_cluster, db, bus, mut replicator) = with_dead_target(3).await;

    let job = insert_job(&db).await;
    let published = Instant::now();
    bus.publish(&job).await;
    let dead = bus.next_dead_letter("job dead-lettered").await;
    // Two retries waited out their tiers (100 ms, then 200 ms) before the last attempt.
    assert!(published.elapsed() >= Duration::from_millis(300));
    let props = &dead.delivery.properties;
    assert_eq!(bus::attempt_of(props), 3);
    let error = bus::header_str(props, ERROR_HEADER).expect("error header");
    assert!(error.contains("gitaly-2"), "{error}");
    let body: ReplicationJob = serde_json::from_slice(&dead.delivery.data).unwrap();
    assert_eq!(body, job);
    dead.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();

    let (state, attempts, row_error, _) = job_row(&db, &job).await;
    assert_eq!((state.as_str(), attempts), ("dead", 3));
    assert_eq!(row_error.as_deref(), Some(error.as_str()));
    assert_eq!(generation(&db, "gitaly-2").await, None);
    assert_eq!(replicator.jobs("failed").await, 2.0);
    assert_eq!(replicator.jobs("dead").await, 1.0);

    // A delivery of the dead job (a failed dead-letter publish nacked it back, or
    // someone published it again) is never just acked: it goes to the dead-letter
    // queue again, with the row's error, and the row stays dead.
    bus.publish(&job).await;
    let again = bus.next_dead_letter("dead job dead-lettered again").await;
    assert_eq!(
        bus::header_str(&again.delivery.properties, ERROR_HEADER).as_deref(),
        Some(error.as_str())
    );
    let body: ReplicationJob = serde_json::from_slice(&again.delivery.data).unwrap();
    assert_eq!(body, job);
    again
        .delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    assert_eq!(job_row(&db, &job).await.0, "dead");
    assert_eq!(replicator.jobs("duplicate").await, 1.0);
    assert_eq!(replicator.jobs("dead").await, 1.0, "counted dead once");

    assert_eq!(
        replicator
            .terminate(&["replication job dead after its last attempt"])
            .await,
        Some(0)
    );
    bus.delete().await;
}

/// A target queue the replicator cannot consume (here: declared beforehand with
/// other arguments) stops only that storage's jobs: the other storages' consumers
/// start and their jobs run, and `/healthz` says the replicator is not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unusable_queue_does_not_stop_the_other_storages() {
    let (cluster, db) = cluster_with_repository(3).await;
    let bus = Bus::new(&DELAYS).await;
    // gitaly-1 sorts first: before, its failure kept gitaly-2's consumer from starting.
    let bad = bus.names.replication_queue(VS, "gitaly-1");
    bus.channel()
        .queue_delete(bad.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    bus.channel()
        .queue_declare(
            bad.as_str().into(),
            QueueDeclareOptions {
                durable: false,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut replicator = Replicator::spawn(
        &cluster.db.as_ref().expect("database").url,
        &bus.prefix(),
        &cluster.token,
        cluster.dir(),
        &DELAYS,
        &[],
    );
    replicator.member.wait_for("/metrics").await;

    let job = insert_job(&db).await;
    assert_eq!(job.target_storage, "gitaly-2");
    bus.publish(&job).await;
    wait_done(&db, &job, "gitaly-2's job done").await;
    assert_eq!(generation(&db, "gitaly-2").await, Some(3));
    let (code, _) = http_get(replicator.member.metrics_addr, "/healthz")
        .await
        .unwrap();
    assert_eq!(
        code, 503,
        "not ready while a storage's queue cannot be consumed"
    );
    assert!(
        replicator
            .log()
            .contains("cannot consume this storage's queue"),
        "the replicator names the storage it cannot serve"
    );
    assert_eq!(replicator.terminate(&["Channel closed"]).await, Some(0));
    bus.delete().await;
}

/// The broker closes the publisher channel alone (here: a retry publish to an exchange
/// deleted meanwhile): the replicator rebuilds its session, which declares the
/// exchanges again, and a failing job still walks its retries to the dead-letter
/// queue instead of going round its first attempt forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_channel_closed_by_the_broker_is_rebuilt_and_retries_flow_again() {
    let (_cluster, db, bus, mut replicator) = with_dead_target(2).await;
    for delay in DELAYS {
        bus.channel()
            .exchange_delete(
                bus.names.retry_exchange(delay).as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .expect("delete a retry exchange");
    }

    let job = insert_job(&db).await;
    bus.publish(&job).await;
    let dead = bus.next_dead_letter("job dead-lettered").await;
    assert_eq!(bus::attempt_of(&dead.delivery.properties), 2);
    dead.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    let (state, attempts, ..) = job_row(&db, &job).await;
    assert_eq!((state.as_str(), attempts), ("dead", 2));
    // Attempts whose republish failed went back to the queue and are counted when
    // they come back, not twice.
    assert_eq!(replicator.jobs("failed").await, 1.0);
    assert_eq!(replicator.jobs("dead").await, 1.0);
    assert!(
        replicator
            .log()
            .contains("amqp publisher channel closed by the broker"),
        "the replicator says why it rebuilt its session"
    );
    assert_eq!(
        replicator
            .terminate(&[
                "replication job dead after its last attempt",
                // lapin's own report of the broker closing the channel.
                "Channel closed",
            ])
            .await,
        Some(0)
    );
    bus.delete().await;
}

/// The broker closes the replicator's connection (an operator in the management UI,
/// or a broker restart): the replicator reconnects, consumes again on a new
/// connection, and a job published afterwards is replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_the_broker_is_reopened_and_jobs_flow_again() {
    use gitcluster_integration_tests::bus::{close_connection, consuming_connections};
    let (cluster, db) = cluster_with_repository(3).await;
    let (bus, mut replicator) = replicator_for(&cluster, &[]).await;
    let prefix = bus.prefix();

    let before: Vec<String> = eventually!("the replicator consumes", {
        let names = consuming_connections(&prefix).await?;
        ensure!(!names.is_empty(), "no consumer yet");
        Ok(names)
    });
    for name in &before {
        close_connection(name).await.expect("close the connection");
    }
    eventually!("consuming again on a new connection", {
        let now = consuming_connections(&prefix).await?;
        ensure!(
            !now.is_empty() && now.iter().all(|n| !before.contains(n)),
            "consumers on {now:?}"
        );
        Ok(())
    });

    let job = insert_job(&db).await;
    bus.publish(&job).await;
    wait_done(&db, &job, "job done after the reconnect").await;
    assert_eq!(generation(&db, "gitaly-2").await, Some(3));
    assert_eq!(checksum(&cluster, 0).await, checksum(&cluster, 1).await);
    assert!(
        replicator
            .log()
            .contains("amqp connection lost, reconnecting"),
        "the loss is logged"
    );

    // lapin itself logs the forced close at ERROR; nothing else may.
    assert_eq!(
        replicator
            .terminate(&["CONNECTION_FORCED - closed by a gitcluster test"])
            .await,
        Some(0)
    );
    bus.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_idle_exits_zero() {
    let db = TestDb::create(true).await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO virtual_storages (name) VALUES ('default');
             INSERT INTO storages (virtual_storage, storage, address)
             VALUES ('default', 'gitaly-1', 'http://127.0.0.1:1'),
                    ('default', 'gitaly-2', 'http://127.0.0.1:2')",
        )
        .await
        .unwrap();
    let bus = Bus::new(&DELAYS).await;
    let dir = scratch_dir();
    let mut replicator =
        Replicator::start(&db.url, &bus.prefix(), "t", dir.path(), &DELAYS, &[]).await;

    // A storage added to the topology gets a consumer without a restart.
    client
        .execute(
            "INSERT INTO storages (virtual_storage, storage, address)
             VALUES ('default', 'gitaly-3', 'http://127.0.0.1:3')",
            &[],
        )
        .await
        .unwrap();
    let queue = bus.names.replication_queue(VS, "gitaly-3");
    eventually!("consumer on the new storage's queue", {
        let ch = bus.conn.create_channel().await?;
        let q = ch
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        ensure!(q.consumer_count() == 1, "{} consumers", q.consumer_count());
        Ok(())
    });

    // A hang here is caught by nextest's slow-test timeout; no timed assertion.
    assert_eq!(replicator.terminate(&[]).await, Some(0));
    bus.channel()
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    bus.delete().await;
}

/// A database that ends idle transactions quickly (an operator's
/// `idle_in_transaction_session_timeout`) does not end the lock transaction a job
/// holds while the copy runs: the job completes instead of going round forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_transaction_timeout_on_the_database_does_not_cut_jobs_short() {
    let (cluster, db) = cluster_with_repository(2).await;
    let name = &cluster.db.as_ref().unwrap().name;
    // Far shorter than a copy (two git processes and three gRPC calls); applies to
    // every session opened from here on, the replicator's included.
    db.batch_execute(&format!(
        "ALTER DATABASE \"{name}\" SET idle_in_transaction_session_timeout = '20ms'"
    ))
    .await
    .unwrap();
    let (bus, mut replicator) = replicator_for(&cluster, &[]).await;
    let job = insert_job(&db).await;
    bus.publish(&job).await;
    wait_done(&db, &job, "job done").await;
    assert_eq!(generation(&db, "gitaly-2").await, Some(2));
    assert_eq!(checksum(&cluster, 0).await, checksum(&cluster, 1).await);
    assert_eq!(replicator.terminate(&[]).await, Some(0));
    bus.delete().await;
}
