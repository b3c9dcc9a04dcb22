//! Publishing replication jobs after their rows committed (the transactional outbox).
//!
//! A supervisor task keeps one AMQP connection with a confirm-mode publisher,
//! reconnecting with backoff, and declares the bus topology whenever it connects and
//! whenever the storage topology is reloaded, so a `mandatory` publish is routable.
//! The broker being down never blocks a client: jobs committed while no publisher is
//! connected simply stay `pending`, and the reconciler's outbox relay publishes them.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_postgres::Pool;
use gitcluster_common::bus::{self, Destination, Envelope, Publisher};
use gitcluster_common::redact::redact_url;
use gitcluster_proto::jobs::{BusNames, ReplicationJob};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::db;
use crate::topology::TopologyHandle;

/// Gauge: 1 while this router holds a confirm-mode publisher on the job bus.
pub const BUS_CONNECTED_METRIC: &str = "gitcluster_router_bus_connected";
/// Retry delays declared for the replicator's retry tiers (must match its default).
pub const DEFAULT_RETRY_DELAYS_MS: [u64; 4] = [1000, 5000, 30000, 120000];

/// Metric counting publish outcomes (`ok`, `error`, `unavailable`).
pub const PUBLISHED_METRIC: &str = "gitcluster_router_replication_jobs_published_total";

/// Longest wait for one broker confirm.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// The publisher slot and the tasks that use it.
pub struct Outbox {
    slot: RwLock<Option<Publisher>>,
    pool: Pool,
    app_id: String,
    /// `<app_id> <router name>`: the broker UI shows which router holds a connection.
    connection_name: String,
    /// The runtime publishes run on: the main one, which outlives the serving threads'
    /// runtimes, so a publish started by a call is not cut off when its serving thread
    /// finishes draining.
    runtime: tokio::runtime::Handle,
}

impl Outbox {
    /// An outbox with no publisher yet for the router named `instance`; its publishes
    /// run on the calling runtime.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn new(pool: Pool, app_id: &str, instance: &str) -> Arc<Self> {
        metrics::gauge!(BUS_CONNECTED_METRIC).set(0.0);
        Arc::new(Outbox {
            slot: RwLock::new(None),
            pool,
            app_id: app_id.to_owned(),
            connection_name: format!("{app_id} {instance}"),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    fn publisher(&self) -> Option<Publisher> {
        self.slot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, publisher: Option<Publisher>) {
        // Operators (and tests) see whether new jobs can be published right now.
        metrics::gauge!(BUS_CONNECTED_METRIC).set(if publisher.is_some() { 1.0 } else { 0.0 });
        *self
            .slot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = publisher;
    }

    /// Publishes committed jobs in a background task; never blocks the caller.
    /// Confirmed jobs are marked `published`; others stay `pending` for the relay.
    pub fn publish_later(self: &Arc<Self>, jobs: Vec<ReplicationJob>, traceparent: Option<String>) {
        if jobs.is_empty() {
            return;
        }
        let outbox = self.clone();
        self.runtime.spawn(async move {
            let Some(publisher) = outbox.publisher() else {
                debug!(jobs = jobs.len(), "no bus connection: jobs stay pending");
                metrics::counter!(PUBLISHED_METRIC, "outcome" => "unavailable")
                    .increment(jobs.len() as u64);
                return;
            };
            for job in jobs {
                let envelope = Envelope {
                    attempt: 1,
                    traceparent: traceparent.as_deref(),
                    error: None,
                };
                let sent = tokio::time::timeout(
                    PUBLISH_TIMEOUT,
                    publisher.publish(&job, Destination::Queue, envelope),
                )
                .await;
                match sent {
                    Ok(Ok(())) => {
                        metrics::counter!(PUBLISHED_METRIC, "outcome" => "ok").increment(1);
                        if let Err(e) = db::mark_published(&outbox.pool, &job.job_id).await {
                            warn!(job_id = %job.job_id, error = %format!("{e:#}"),
                                "job published but not marked; the relay will publish it again");
                        }
                    }
                    Ok(Err(e)) => {
                        metrics::counter!(PUBLISHED_METRIC, "outcome" => "error").increment(1);
                        warn!(job_id = %job.job_id, error = %e, "publish replication job failed; job stays pending");
                    }
                    Err(_) => {
                        metrics::counter!(PUBLISHED_METRIC, "outcome" => "error").increment(1);
                        warn!(job_id = %job.job_id, "publish replication job timed out; job stays pending");
                    }
                }
            }
        });
    }

    /// Keeps a publisher connected until `shutdown` fires (see the module doc).
    pub async fn supervise(
        self: Arc<Self>,
        url: String,
        names: BusNames,
        topology: Arc<TopologyHandle>,
        shutdown: CancellationToken,
    ) {
        let mut delay = Duration::from_millis(500);
        let mut failures = 0u32;
        let mut changed = topology.subscribe();
        loop {
            let attempt = async {
                let conn = bus::connect(&url, &self.connection_name).await?;
                let publisher = Publisher::new(&conn, names.clone(), &self.app_id).await?;
                bus::declare_base(publisher.channel(), &names, &DEFAULT_RETRY_DELAYS_MS).await?;
                declare_targets(&publisher, &names, &topology).await?;
                Ok::<_, bus::lapin::Error>((conn, publisher))
            };
            let connected = tokio::select! {
                r = attempt => r,
                () = shutdown.cancelled() => return,
            };
            match connected {
                Ok((conn, publisher)) => {
                    info!(url = %redact_url(&url), "job bus connected");
                    failures = 0;
                    delay = Duration::from_millis(500);
                    self.set(Some(publisher.clone()));
                    changed.mark_unchanged();
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {
                                if !conn.status().connected()
                                    || !publisher.channel().status().connected()
                                {
                                    warn!("job bus connection lost; reconnecting");
                                    break;
                                }
                            }
                            r = changed.changed() => {
                                if r.is_err() {
                                    return;
                                }
                                if let Err(e) = declare_targets(&publisher, &names, &topology).await {
                                    warn!(error = %e, "declare queues after topology change failed; reconnecting");
                                    break;
                                }
                            }
                            () = shutdown.cancelled() => {
                                self.set(None);
                                let _ = conn.close(200, "shutdown".into()).await;
                                return;
                            }
                        }
                    }
                    self.set(None);
                }
                Err(e) => {
                    failures += 1;
                    // Loud once, then quiet: a broker that stays down is one problem.
                    if failures == 1 || failures.is_multiple_of(30) {
                        warn!(url = %redact_url(&url), error = %e, failures,
                            "job bus unreachable; jobs stay pending until it is back");
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

async fn declare_targets(
    publisher: &Publisher,
    names: &BusNames,
    topology: &TopologyHandle,
) -> Result<(), bus::lapin::Error> {
    let topo = topology.get();
    for (vs, storage) in topo.storages() {
        bus::declare_target(publisher.channel(), names, &vs.name, &storage.name).await?;
    }
    Ok(())
}
