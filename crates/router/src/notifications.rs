//! The router's LISTEN connection (see `gitcluster_common::listener` for the
//! connection, heartbeat and reconnect rules): `gitcluster_metadata` drops that
//! repository's cache entries, `gitcluster_topology` reloads the topology.
//!
//! Notifications sent while disconnected are lost, so the cache keeps nothing while
//! disconnected, and every (re)connect starts it empty and reloads the topology
//! before trusting notifications again.

use std::sync::Arc;

use gitcluster_common::listener::{self, ListenConfig, ListenHandler};
use tokio_postgres::{Client, Notification};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metadata::MetadataCache;
use crate::topology::TopologyHandle;

/// Channel carrying `{table, repository_id}` for every metadata change.
pub const METADATA_CHANNEL: &str = "gitcluster_metadata";
/// `application_name` of the LISTEN connection, unless the database URL sets one.
pub const LISTENER_APPLICATION_NAME: &str = "gitcluster-router-listener";

/// Channel notified when storages or virtual storages change.
pub const TOPOLOGY_CHANNEL: &str = "gitcluster_topology";

#[derive(serde::Deserialize)]
struct MetadataChange {
    repository_id: i64,
}

/// What the router does with its notifications.
struct Router {
    cache: Arc<MetadataCache>,
    topology: Arc<TopologyHandle>,
}

impl ListenHandler for Router {
    async fn listening(&mut self, client: &Client) -> anyhow::Result<()> {
        // Listening now: anything changed before this point is re-read from the tables.
        self.cache.start_listening();
        self.topology.reload(client).await
    }

    async fn notified(&mut self, client: &Client, n: &Notification) -> anyhow::Result<()> {
        match n.channel() {
            METADATA_CHANNEL => match serde_json::from_str::<MetadataChange>(n.payload()) {
                Ok(change) => {
                    debug!(repository_id = change.repository_id, "metadata changed");
                    self.cache.invalidate(change.repository_id);
                }
                Err(e) => {
                    warn!(payload = n.payload(), error = %e, "unreadable metadata notification; cache cleared");
                    self.cache.clear();
                }
            },
            TOPOLOGY_CHANNEL => {
                if let Err(e) = self.topology.reload(client).await {
                    warn!(error = %format!("{e:#}"), "topology reload failed");
                    return Err(e);
                }
            }
            other => debug!(channel = other, "ignored notification"),
        }
        Ok(())
    }

    fn lost(&mut self) {
        // Whatever happened, notifications may have been missed.
        self.cache.stop_listening();
    }
}

/// Listens until `shutdown` fires, reconnecting with backoff.
pub async fn listen(
    url: String,
    cache: Arc<MetadataCache>,
    topology: Arc<TopologyHandle>,
    shutdown: CancellationToken,
) {
    let config = ListenConfig {
        url,
        application_name: LISTENER_APPLICATION_NAME.to_owned(),
        channels: vec![METADATA_CHANNEL.to_owned(), TOPOLOGY_CHANNEL.to_owned()],
    };
    listener::watch(config, Router { cache, topology }, shutdown).await;
}
