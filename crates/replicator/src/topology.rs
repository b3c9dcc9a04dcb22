//! The set of target storages, read from the `storages` table: at start-up, on every
//! `gitcluster_topology` notification (a dedicated LISTEN connection: pooled ones drop
//! notifications), and every 10 s anyway, since a notification sent while the
//! listener was disconnected is lost.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::Pool;
use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::session::Target;

/// The channel `storages` and `virtual_storages` triggers notify.
pub const CHANNEL: &str = "gitcluster_topology";
/// Fallback reload period.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// Every storage of every virtual storage.
pub async fn load(pool: &Pool) -> anyhow::Result<BTreeSet<Target>> {
    let client = pool.get().await.context("get database connection")?;
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

/// Opens the LISTEN connection; the receiver yields one item per notification and
/// closes when the connection dies.
async fn listen(url: &str) -> anyhow::Result<(tokio_postgres::Client, mpsc::Receiver<()>)> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connect topology listener")?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(_) = message {
                // A full channel already holds a pending reload.
                let _ = tx.try_send(());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .context("listen for topology changes")?;
    Ok((client, rx))
}

/// Keeps `targets` current until `stop` fires. Never fails: errors are logged and the
/// next tick retries.
pub async fn watch(
    pool: Pool,
    url: String,
    targets: watch::Sender<BTreeSet<Target>>,
    stop: CancellationToken,
) {
    let mut listener: Option<(tokio_postgres::Client, mpsc::Receiver<()>)> = None;
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    loop {
        if listener.is_none() {
            match listen(&url).await {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "topology listener unavailable, polling only")
                }
            }
        }
        let notified = async {
            match listener.as_mut() {
                Some((_, rx)) => rx.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            alive = notified => {
                if !alive {
                    warn!("topology listener connection lost, reconnecting");
                    listener = None;
                }
            }
            _ = tick.tick() => {}
        }
        match load(&pool).await {
            Ok(new) => {
                targets.send_if_modified(|current| {
                    if *current == new {
                        return false;
                    }
                    info!(storages = new.len(), "topology changed");
                    *current = new;
                    true
                });
            }
            Err(e) => warn!(error = %format!("{e:#}"), "topology reload failed"),
        }
    }
}
