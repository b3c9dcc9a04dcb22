//! The replicator: competing consumers on the replication queues, with
//! per-(repository, target) exclusion, generation-checked idempotent copies, and
//! retry then dead-letter for jobs that keep failing.
//!
//! Postgres is the truth and a message only a wake-up call (see [`job`] for the
//! protocol of one delivery). Every process consumes every target queue; the advisory
//! lock of a job, not the queue, keeps two workers off the same (repository, target).
//!
//! Tasks and their failure policy:
//! - `admin` (the `/metrics` + `/healthz` port): critical; if it ends early, the
//!   process exits non-zero.
//! - `topology` (LISTEN + periodic reload of `storages`): never fails, retries.
//! - the AMQP supervisor (runs on the main task): reconnects forever; one consumer
//!   task per target queue, restarted by the supervisor when its channel dies.
//! - one task per running job, bounded by `--workers`, tracked for the drain.

pub mod config;
pub mod db;
pub mod job;
pub mod nodes;
pub mod retry;
pub mod session;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gitcluster_common::admin::{self, Readiness};
use gitcluster_common::bus;
use gitcluster_proto::jobs::BusNames;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;

/// Name of the service: the AMQP `app_id` and connection name.
pub const SERVICE: &str = "gitcluster-replicator";

/// Attempts at the first AMQP connection before start-up fails.
const AMQP_STARTUP_ATTEMPTS: u32 = 10;

/// Runs the replicator until `shutdown` fires. Fails with a
/// [`gitcluster_migrations::SchemaError`] when the database is unreachable or its
/// schema is not the one this build expects.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = TcpListener::bind(config.metrics_listen)
        .await
        .context("bind metrics listener")?;
    info!(addr = %metrics.local_addr()?, "metrics listener bound");

    // The admin port answers 503 on /healthz until consumers run.
    let ready = Readiness::default();
    let admin_stop = CancellationToken::new();
    let mut admin = tokio::spawn(admin::serve(
        metrics,
        admin::install_metrics()?,
        ready.clone(),
        admin_stop.clone(),
    ));
    tokio::select! {
        gate = gitcluster_migrations::wait_for_schema(&config.database.database_url, |attempt, error, delay| {
            warn!(attempt, %error, ?delay, "database not reachable, retrying");
        }) => drop(gate?),
        () = shutdown.cancelled() => {
            admin_stop.cancel();
            return Ok(());
        }
    }
    info!("database schema verified");
    let pool = db::pool(&config.database.database_url, config.pool_size())?;

    let first = tokio::select! {
        c = connect_amqp(&config.bus.amqp_url) => c?,
        () = shutdown.cancelled() => {
            admin_stop.cancel();
            return Ok(());
        }
    };
    info!("amqp connected");

    let initial = topology::load(&pool).await.context("load topology")?;
    info!(storages = initial.len(), "topology loaded");
    let (targets_tx, targets_rx) = tokio::sync::watch::channel(initial);
    let topology_stop = CancellationToken::new();
    let topology_task = tokio::spawn(topology::watch(
        config.database.database_url.clone(),
        targets_tx,
        topology_stop.clone(),
    ));

    let shared = Arc::new(session::Shared {
        jobs: Arc::new(job::Jobs {
            pool: pool.clone(),
            nodes: nodes::Nodes::new(config.internal_token.as_deref())?,
            delays: config.retry_delays_ms.clone(),
            max_attempts: config.max_attempts,
            job_timeout: config.job_timeout(),
        }),
        names: BusNames::new(&config.bus.bus_prefix),
        delays: config.retry_delays_ms.clone(),
        prefetch: config.prefetch,
        workers: Arc::new(Semaphore::new(config.workers)),
        tracker: TaskTracker::new(),
        abort: CancellationToken::new(),
    });

    let supervisor = session::supervise(
        shared.clone(),
        config.bus.amqp_url.clone(),
        first,
        targets_rx,
        ready.clone(),
        shutdown.clone(),
    );
    let session = tokio::select! {
        session = supervisor => session,
        served = &mut admin => {
            shutdown.cancel();
            served.context("admin port task")?.context("serve admin port")?;
            anyhow::bail!("admin port stopped unexpectedly");
        }
    };

    // Shutdown, in this order:
    // 1. (done by the supervisor) consumers cancelled: no new deliveries; buffered
    //    ones were nacked back to their queues; /healthz answers 503.
    // 2. running jobs finish within --graceful-timeout-secs, acking on their channels;
    // 3. past the deadline, the rest are dropped (their lock transactions roll back)
    //    and their deliveries nacked with requeue, so another replicator runs them;
    // 4. channels and the connection close (the broker requeues anything unacked);
    // 5. the topology listener stops, the pool closes, the admin port stops.
    info!("draining running jobs");
    shared.tracker.close();
    if tokio::time::timeout(config.graceful_timeout(), shared.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            running = shared.tracker.len(),
            "graceful timeout passed, requeueing unfinished jobs"
        );
        shared.abort.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.tracker.wait()).await;
    }
    if let Some(session) = session {
        session.close().await;
    }
    topology_stop.cancel();
    let _ = topology_task.await;
    pool.close();
    admin_stop.cancel();
    admin
        .await
        .context("admin port task")?
        .context("serve admin port")?;
    info!("replicator stopped");
    Ok(())
}

/// The first AMQP connection, with bounded retries: a broker that never comes up is
/// a start-up failure, not a silent wait.
async fn connect_amqp(url: &str) -> anyhow::Result<bus::lapin::Connection> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match bus::connect(url, SERVICE).await {
            Ok(c) => return Ok(c),
            Err(e) if attempt < AMQP_STARTUP_ATTEMPTS => {
                warn!(attempt, error = %e, ?delay, "amqp not reachable, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            Err(e) => return Err(e).context("connect to amqp"),
        }
    }
}
