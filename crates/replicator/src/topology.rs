//! The set of target storages, read from the `storages` table at start-up and again
//! whenever the shared LISTEN watcher (`gitcluster_common::listener`: a dedicated
//! connection with a heartbeat and reconnects) starts listening or hears
//! `gitcluster_topology`. Re-reading at every (re)start covers the notifications
//! lost while disconnected.

use std::collections::BTreeSet;

use anyhow::Context as _;
use deadpool_postgres::Pool;
use gitcluster_common::listener::{self, ListenConfig, ListenHandler};
use tokio::sync::watch;
use tokio_postgres::{Client, Notification};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::session::Target;

/// The channel `storages` and `virtual_storages` triggers notify.
pub const CHANNEL: &str = "gitcluster_topology";
/// `application_name` of the LISTEN connection, unless the database URL sets one.
pub const LISTENER_APPLICATION_NAME: &str = "gitcluster-replicator-listener";

/// Every storage of every virtual storage, read through a pooled connection.
pub async fn load(pool: &Pool) -> anyhow::Result<BTreeSet<Target>> {
    let client = pool.get().await.context("get database connection")?;
    read(&client).await
}

async fn read(client: &Client) -> anyhow::Result<BTreeSet<Target>> {
    let rows = client
        .query("SELECT virtual_storage, storage FROM storages", &[])
        .await
        .context("read storages")?;
    Ok(rows
        .iter()
        .map(|r| Target {
            virtual_storage: r.get(0),
            storage: r.get(1),
        })
        .collect())
}

/// Publishes the targets whenever they changed.
struct Targets(watch::Sender<BTreeSet<Target>>);

impl Targets {
    async fn reload(&mut self, client: &Client) -> anyhow::Result<()> {
        let new = read(client).await?;
        self.0.send_if_modified(|current| {
            if *current == new {
                return false;
            }
            info!(storages = new.len(), "topology changed");
            *current = new;
            true
        });
        Ok(())
    }
}

impl ListenHandler for Targets {
    async fn listening(&mut self, client: &Client) -> anyhow::Result<()> {
        self.reload(client).await
    }

    async fn notified(&mut self, client: &Client, _: &Notification) -> anyhow::Result<()> {
        self.reload(client).await
    }

    fn lost(&mut self) {
        // The last targets stay: consumers keep running on the topology they have
        // until the watcher can read it again.
    }
}

/// Keeps `targets` current until `stop` fires; never fails.
pub async fn watch(url: String, targets: watch::Sender<BTreeSet<Target>>, stop: CancellationToken) {
    let config = ListenConfig {
        url,
        application_name: LISTENER_APPLICATION_NAME.to_owned(),
        channels: vec![CHANNEL.to_owned()],
    };
    listener::watch(config, Targets(targets), stop).await;
}
