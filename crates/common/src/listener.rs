//! One LISTEN watcher for every service that follows database notifications.
//!
//! A dedicated, non-pooled connection (pooled ones drop notifications) LISTENs on the
//! given channels. Notifications sent while it is disconnected are lost, so a
//! [`ListenHandler`] is told when listening (re)starts — it re-reads whatever it
//! follows from the tables at that point — and when the connection is lost.
//!
//! A LISTEN connection only ever receives, so a server that vanished without closing
//! the socket would look like a quiet one for as long as TCP takes to give up. The
//! watcher therefore asks `SELECT 1` every [`HEARTBEAT_INTERVAL`] and treats a reply
//! missing for [`HEARTBEAT_TIMEOUT`] as a lost connection. It reconnects with a
//! backoff from 100 ms doubling to 5 s, reset by every successful start.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the LISTEN connection is checked with a query.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How long the check's reply may take before the connection counts as lost.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a service does with its LISTEN connection's events.
pub trait ListenHandler: Send {
    /// LISTEN is in place on a new connection: anything changed before now must be
    /// re-read (notifications sent while disconnected are lost). An error drops the
    /// connection and reconnects.
    fn listening(&mut self, client: &Client) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// One notification. An error drops the connection and reconnects.
    fn notified(
        &mut self,
        client: &Client,
        notification: &Notification,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// The connection was lost (or never came up): notifications may be missed from
    /// now until the next [`ListenHandler::listening`].
    fn lost(&mut self);
}

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// The database URL (its settings go through `postgres_config`).
    pub url: String,
    /// `application_name` of the connection unless the URL sets one, so operators
    /// can find (and safely terminate) it in `pg_stat_activity`.
    pub application_name: String,
    /// The channels to LISTEN on.
    pub channels: Vec<String>,
}

/// Listens until `shutdown` fires, reconnecting with backoff; never fails.
pub async fn watch<H: ListenHandler>(
    config: ListenConfig,
    mut handler: H,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        tokio::select! {
            result = session(&config, &mut handler, &mut delay) => {
                handler.lost();
                if let Err(e) = result {
                    warn!(error = %format!("{e:#}"), ?delay, channels = ?config.channels,
                        "LISTEN connection lost; reconnecting");
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

async fn session<H: ListenHandler>(
    config: &ListenConfig,
    handler: &mut H,
    delay: &mut Duration,
) -> anyhow::Result<()> {
    let mut pg = crate::database::postgres_config(&config.url)?;
    if pg.get_application_name().is_none() {
        pg.application_name(&config.application_name);
    }
    let (client, mut connection) = pg.connect(NoTls).await?;
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
    let listen: String = config
        .channels
        .iter()
        .map(|c| format!("LISTEN {c};"))
        .collect();
    client.batch_execute(&listen).await?;
    handler.listening(&client).await?;
    *delay = Duration::from_millis(100);
    info!(channels = ?config.channels, "listening for database notifications");
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.reset();
    loop {
        tokio::select! {
            n = rx.recv() => match n {
                Some(n) => handler.notified(&client, &n).await?,
                None => break,
            },
            _ = heartbeat.tick() => {
                match tokio::time::timeout(HEARTBEAT_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(anyhow::Error::new(e).context("heartbeat query failed")),
                    Err(_) => anyhow::bail!("heartbeat query unanswered for {HEARTBEAT_TIMEOUT:?}"),
                }
            }
        }
    }
    match pump.await {
        Ok(Ok(())) => anyhow::bail!("connection closed"),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}
