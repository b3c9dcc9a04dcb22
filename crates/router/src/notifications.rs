//! The LISTEN connection: a dedicated, non-pooled Postgres connection (pooled ones
//! drop notifications) listening on `gitcluster_metadata` (drop that repository's
//! cache entries) and `gitcluster_topology` (reload the topology).
//!
//! Notifications sent while disconnected are lost, so the cache keeps nothing while
//! disconnected, and every (re)connect starts it empty and reloads the topology
//! before trusting notifications again.
//!
//! A LISTEN connection only ever receives, so a server that vanished without closing
//! the socket would look like a quiet one for as long as TCP takes to give up, with
//! the cache trusted all along. So the listener asks `SELECT 1` every
//! [`HEARTBEAT_INTERVAL`] and treats a reply missing for [`HEARTBEAT_TIMEOUT`] as a
//! lost connection.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metadata::MetadataCache;
use crate::topology::TopologyHandle;

/// Channel carrying `{table, repository_id}` for every metadata change.
pub const METADATA_CHANNEL: &str = "gitcluster_metadata";
/// `application_name` of the LISTEN connection, unless the database URL sets one.
pub const LISTENER_APPLICATION_NAME: &str = "gitcluster-router-listener";

/// Channel notified when storages or virtual storages change.
pub const TOPOLOGY_CHANNEL: &str = "gitcluster_topology";

/// How often the LISTEN connection is checked with a query.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How long the check's reply may take before the connection counts as lost.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(serde::Deserialize)]
struct MetadataChange {
    repository_id: i64,
}

/// Listens until `shutdown` fires, reconnecting with backoff.
pub async fn listen(
    url: String,
    cache: Arc<MetadataCache>,
    topology: Arc<TopologyHandle>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let session = session(&url, &cache, &topology, &mut delay);
        tokio::select! {
            result = session => {
                // Whatever happened, notifications may have been missed.
                cache.stop_listening();
                if let Err(e) = result {
                    warn!(error = %format!("{e:#}"), ?delay, "metadata listener lost its connection; cache cleared, reconnecting");
                }
            }
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    url: &str,
    cache: &MetadataCache,
    topology: &TopologyHandle,
    delay: &mut Duration,
) -> anyhow::Result<()> {
    let mut config = gitcluster_common::database::postgres_config(url)?;
    // So operators (and tests) can find this connection in pg_stat_activity.
    if config.get_application_name().is_none() {
        config.application_name(LISTENER_APPLICATION_NAME);
    }
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Aborted on every way out: a connection given up on (heartbeat) must not stay
    // open behind our back.
    let pump = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }));
    client
        .batch_execute(&format!(
            "LISTEN {METADATA_CHANNEL}; LISTEN {TOPOLOGY_CHANNEL}"
        ))
        .await?;
    // Listening now: anything changed before this point is re-read from the tables.
    cache.start_listening();
    topology.reload(&client).await?;
    *delay = Duration::from_millis(100);
    info!("listening for metadata and topology changes");
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.reset();
    loop {
        let n = tokio::select! {
            n = rx.recv() => match n {
                Some(n) => n,
                None => break,
            },
            _ = heartbeat.tick() => {
                match tokio::time::timeout(HEARTBEAT_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => return Err(anyhow::Error::new(e).context("heartbeat query failed")),
                    Err(_) => anyhow::bail!("heartbeat query unanswered for {HEARTBEAT_TIMEOUT:?}"),
                }
            }
        };
        match n.channel() {
            METADATA_CHANNEL => match serde_json::from_str::<MetadataChange>(n.payload()) {
                Ok(change) => {
                    debug!(repository_id = change.repository_id, "metadata changed");
                    cache.invalidate(change.repository_id);
                }
                Err(e) => {
                    warn!(payload = n.payload(), error = %e, "unreadable metadata notification; cache cleared");
                    cache.clear();
                }
            },
            TOPOLOGY_CHANNEL => {
                if let Err(e) = topology.reload(&client).await {
                    warn!(error = %format!("{e:#}"), "topology reload failed");
                    return Err(e);
                }
            }
            other => debug!(channel = other, "ignored notification"),
        }
    }
    match pump.await {
        Ok(Ok(())) => anyhow::bail!("connection closed"),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}
