//! The router: a transparent gRPC proxy in front of the storage nodes (gitcluster's
//! Praefect). Per RPC it classifies the call with the operation registry, resolves
//! repository metadata (cached, invalidated by Postgres LISTEN/NOTIFY), and sends
//! accessors to a healthy up-to-date replica, mutators to the primary followed by the
//! generation bump and outbox jobs, and maintenance to every replica. See `proxy`.
//!
//! Tasks and their failure policy:
//! * `grpc` — the proxy server on its serving threads (see `serve`); its end, or
//!   any serving thread's, ends the process.
//! * `admin` — `/metrics` and `/healthz`; its failure ends the process.
//! * `health` — probes storages every interval; never fails (errors are logged).
//! * `listener` — LISTEN connection; reconnects forever (clearing the cache).
//! * `outbox` — AMQP publisher; reconnects forever; the broker being down only
//!   leaves jobs `pending`.

pub mod codec;
pub mod config;
pub mod db;
pub mod health;
pub mod lane;
pub mod metadata;
pub mod metrics;
pub mod notifications;
pub mod outbox;
pub mod proxy;
pub mod replica_path;
pub mod serve;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gitcluster_common::admin::{self, Readiness};
use gitcluster_proto::auth::TokenAuth;
use gitcluster_proto::jobs::BusNames;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;

use crate::health::HealthObserver;
use crate::metadata::MetadataCache;
use crate::outbox::Outbox;
use crate::proxy::{Coordinator, Proxy};
use crate::topology::TopologyHandle;

/// Name the router publishes under (`app_id`) and shows in the broker UI.
const SERVICE: &str = "gitcluster-router";

/// How long in-flight calls may take to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the router until `shutdown` fires. Fails with a
/// [`gitcluster_migrations::SchemaError`] when the database is unreachable or its
/// schema is not the one this build expects.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = TcpListener::bind(config.metrics_listen)
        .await
        .context("bind metrics listener")?;
    info!(addr = %metrics.local_addr()?, "metrics listener bound");
    let grpc = TcpListener::bind(config.listen)
        .await
        .context("bind grpc listener")?;
    let grpc_addr = grpc.local_addr()?;
    info!(addr = %grpc_addr, "grpc listener bound");

    // The admin port answers 503 on /healthz until the router serves.
    let ready = Readiness::default();
    let mut admin = tokio::spawn(admin::serve(
        metrics,
        admin::install_metrics()?,
        ready.clone(),
        shutdown.clone(),
    ));
    tokio::select! {
        gate = gitcluster_migrations::wait_for_schema(&config.database.database_url, |attempt, error, delay| {
            warn!(attempt, %error, ?delay, "database not reachable, retrying");
        }) => drop(gate?),
        () = shutdown.cancelled() => return Ok(()),
    }

    let pool = db::pool(&config.database.database_url)?;
    let topology = Arc::new(TopologyHandle::new(config.internal_token.as_deref())?);
    {
        let client = pool.get().await.context("connect to database")?;
        topology.reload(&client).await?;
    }
    let cache = Arc::new(MetadataCache::new(pool.clone()));
    let health = Arc::new(HealthObserver::default());
    let observer = config.observer_name();
    // One round before serving, so the first requests see real health.
    health
        .round(&topology, &pool, &observer, config.health_interval())
        .await;
    let outbox = Outbox::new(pool.clone(), SERVICE, &config.bus_instance());

    let tasks = CancellationToken::new();
    let background = [
        tokio::spawn(health.clone().run(
            topology.clone(),
            pool.clone(),
            observer.clone(),
            config.health_interval(),
            tasks.clone(),
        )),
        tokio::spawn(notifications::listen(
            config.database.database_url.clone(),
            cache.clone(),
            topology.clone(),
            tasks.clone(),
        )),
        tokio::spawn(outbox.clone().supervise(
            config.bus.amqp_url.clone(),
            BusNames::new(&config.bus.bus_prefix),
            topology.clone(),
            tasks.clone(),
        )),
    ];

    if config.token.is_none() {
        warn!("GITCLUSTER_ROUTER_TOKEN is not set: clients are not authenticated");
    }
    let coordinator = Arc::new(Coordinator {
        topology,
        cache,
        health,
        outbox,
        pool: pool.clone(),
        auth: TokenAuth::new(config.token.clone(), false),
    });
    let (_health_reporter, health_service) = tonic_health::server::health_reporter();
    let routes = tonic::service::Routes::new(health_service)
        .add_service(gitcluster_proto::reflection_service()?)
        .prepare()
        .into_axum_router()
        .fallback_service(Proxy(coordinator));
    let threads = config.serve_threads();
    let workers = serve::Workers::start(threads, &tonic::service::Routes::from(routes), &shutdown)?;
    let mut server = tokio::spawn(workers.serve(grpc));
    ready.set(true);
    info!(addr = %grpc_addr, observer = %observer, threads, "router serving");

    // Shutdown order: the server stops accepting and drains in-flight calls (bounded);
    // then the background loops stop; publishes not confirmed by then stay `pending`
    // for the outbox relay; the pool closes last.
    // Biased, shutdown first: the server and the admin port stop *because* shutdown
    // fired, so once it has, their ending is the drain, not a failure.
    let result = tokio::select! {
        biased;
        () = shutdown.cancelled() => {
            ready.set(false);
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
                Ok(r) => r.context("grpc server task")?,
                Err(_) => {
                    warn!(timeout = ?DRAIN_TIMEOUT, "in-flight calls did not finish; abandoning them");
                    Ok(())
                }
            }
        }
        r = &mut server => r.context("grpc server task")?,
        r = &mut admin => {
            r.context("admin port task")?.context("serve admin port")?;
            Err(anyhow::anyhow!("admin port stopped unexpectedly"))
        }
    };
    tasks.cancel();
    for task in background {
        let _ = task.await;
    }
    if !admin.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut admin).await;
    }
    pool.close();
    result
}
