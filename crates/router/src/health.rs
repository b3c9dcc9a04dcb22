//! The local health view: every interval each storage node's `grpc.health.v1` is
//! probed (timeout = interval) and the set of nodes that answered SERVING replaces
//! the previous one. Each round is also recorded in `node_status` under this
//! router's observer name, for the election service and operators.
//!
//! This is the router's own view (Praefect's `HealthManager.HealthyNodes`), not the
//! consensus of all observers.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing::{info, warn};

use crate::topology::{Storage, TopologyHandle};

const UPSERT_NODE_STATUS: &str = include_str!("queries/upsert_node_status.sql");

/// The set of `(virtual storage, storage)` pairs that answered the last probe.
#[derive(Debug, Default)]
pub struct HealthObserver {
    healthy: RwLock<HashSet<(String, String)>>,
}

impl HealthObserver {
    /// True when `storage` of `virtual_storage` answered the last probe.
    pub fn is_healthy(&self, virtual_storage: &str, storage: &str) -> bool {
        self.healthy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&(virtual_storage.to_owned(), storage.to_owned()))
    }

    /// Probes every storage once, swaps in the new healthy set, records the round.
    pub async fn round(
        &self,
        topology: &TopologyHandle,
        pool: &Pool,
        observer: &str,
        timeout: Duration,
    ) {
        let topo = topology.get();
        let probes = topo.storages().map(|(vs, storage)| {
            let vs = vs.name.clone();
            let storage = storage.clone();
            async move {
                let ok = probe(&storage, timeout).await;
                (vs, storage.name.clone(), ok)
            }
        });
        let results = join_all(probes).await;
        let next: HashSet<(String, String)> = results
            .iter()
            .filter(|(_, _, ok)| *ok)
            .map(|(vs, s, _)| (vs.clone(), s.clone()))
            .collect();
        {
            let mut healthy = self
                .healthy
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (vs, s, ok) in &results {
                let key = (vs.clone(), s.clone());
                match (healthy.contains(&key), *ok) {
                    (true, false) => {
                        warn!(virtual_storage = %vs, storage = %s, "storage became unhealthy")
                    }
                    (false, true) => {
                        info!(virtual_storage = %vs, storage = %s, "storage is healthy")
                    }
                    _ => {}
                }
            }
            *healthy = next;
        }
        if results.is_empty() {
            return;
        }
        let vss: Vec<&str> = results.iter().map(|(vs, _, _)| vs.as_str()).collect();
        let storages: Vec<&str> = results.iter().map(|(_, s, _)| s.as_str()).collect();
        let oks: Vec<bool> = results.iter().map(|(_, _, ok)| *ok).collect();
        let recorded = async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            client
                .execute(UPSERT_NODE_STATUS, &[&observer, &vss, &storages, &oks])
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(error) = recorded.await {
            warn!(%error, "record health observations failed");
        }
    }

    /// Probes every `interval` until `shutdown` fires.
    pub async fn run(
        self: Arc<Self>,
        topology: Arc<TopologyHandle>,
        pool: Pool,
        observer: String,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            self.round(&topology, &pool, &observer, interval).await;
        }
    }
}

async fn probe(storage: &Storage, timeout: Duration) -> bool {
    let mut client = HealthClient::new(storage.channel.clone());
    let check = client.check(HealthCheckRequest {
        service: String::new(),
    });
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(r)) => r.into_inner().status == ServingStatus::Serving as i32,
        Ok(Err(_)) | Err(_) => false,
    }
}
