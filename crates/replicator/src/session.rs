//! The AMQP side: one connection, one confirm-mode publisher channel, and one channel
//! with one consumer per target queue (prefetch set before consuming, manual acks);
//! and the supervisor that rebuilds all of it when the connection dies, or when the
//! broker closes the publisher channel (every retry and dead-letter publish would
//! fail, and each failure sends its delivery straight back), and starts consumers
//! for storages added to the topology.
//!
//! lapin's own auto-recovery is not used: a rebuilt session re-declares the topology
//! and resubscribes from scratch, and deliveries unacked on the dead connection come
//! back from the broker, which the job protocol makes harmless.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use gitcluster_common::admin::Readiness;
use gitcluster_common::bus::lapin::message::Delivery;
use gitcluster_common::bus::lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
};
use gitcluster_common::bus::lapin::types::{FieldTable, ShortString};
use gitcluster_common::bus::lapin::{self, Channel, Connection, Consumer, Event};
use gitcluster_common::bus::{self, Publisher};
use gitcluster_proto::jobs::BusNames;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::SERVICE;
use crate::job::{self, Jobs};

/// A target storage: the queue `<p>.replication.<virtual_storage>.<storage>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// Virtual storage of the target.
    pub virtual_storage: String,
    /// Storage name.
    pub storage: String,
}

/// What the consumers share.
pub struct Shared {
    /// Job execution.
    pub jobs: Arc<Jobs>,
    /// Exchange and queue names.
    pub names: BusNames,
    /// Retry tier delays (declared at start-up).
    pub delays: Vec<u64>,
    /// Prefetch per consumer.
    pub prefetch: u16,
    /// Bounds the jobs running at once in this process.
    pub workers: Arc<Semaphore>,
    /// Every running job, for the shutdown drain.
    pub tracker: TaskTracker,
    /// Fired when the drain deadline passes: running jobs are dropped and requeued.
    pub abort: CancellationToken,
}

struct ConsumerHandle {
    channel: Channel,
    tag: ShortString,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// One AMQP connection with its publisher and consumers.
pub struct Session {
    connection: Connection,
    publisher: Publisher,
    consumers: BTreeMap<Target, ConsumerHandle>,
}

impl Session {
    async fn open(connection: Connection, shared: &Shared) -> lapin::Result<Session> {
        let publisher = Publisher::new(&connection, shared.names.clone(), SERVICE).await?;
        bus::declare_base(publisher.channel(), &shared.names, &shared.delays).await?;
        Ok(Session {
            connection,
            publisher,
            consumers: BTreeMap::new(),
        })
    }

    /// Makes the consumers match `targets`: restarts those whose stream ended, starts
    /// missing ones, cancels those of storages removed from the topology. A target
    /// whose consumer cannot start (its queue declared elsewhere with other
    /// arguments, say) does not keep the others from starting; the first such error is
    /// returned after all were tried.
    async fn ensure(
        &mut self,
        shared: &Arc<Shared>,
        targets: &BTreeSet<Target>,
    ) -> lapin::Result<()> {
        let stale: Vec<Target> = self
            .consumers
            .iter()
            .filter(|(t, h)| h.task.is_finished() || !targets.contains(*t))
            .map(|(t, _)| t.clone())
            .collect();
        for t in stale {
            if let Some(h) = self.consumers.remove(&t) {
                if !targets.contains(&t) {
                    info!(storage = %t.storage, virtual_storage = %t.virtual_storage, "storage left the topology, stopping its consumer");
                }
                stop_consumer(h).await;
            }
        }
        let mut first_error = None;
        for t in targets {
            if !self.consumers.contains_key(t) {
                match self.start_consumer(shared, t).await {
                    Ok(h) => {
                        self.consumers.insert(t.clone(), h);
                    }
                    Err(e) => {
                        warn!(storage = %t.storage, virtual_storage = %t.virtual_storage, error = %e,
                            "cannot consume this storage's queue, retrying");
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn start_consumer(
        &self,
        shared: &Arc<Shared>,
        target: &Target,
    ) -> lapin::Result<ConsumerHandle> {
        let channel = self.connection.create_channel().await?;
        bus::declare_target(
            &channel,
            &shared.names,
            &target.virtual_storage,
            &target.storage,
        )
        .await?;
        // Prefetch before consuming, or the broker pushes the whole backlog at once.
        channel
            .basic_qos(shared.prefetch, BasicQosOptions::default())
            .await?;
        let queue = shared
            .names
            .replication_queue(&target.virtual_storage, &target.storage);
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let tag = consumer.tag();
        info!(queue, "consuming");
        let stop = CancellationToken::new();
        let task = tokio::spawn(consume(
            shared.clone(),
            self.publisher.clone(),
            consumer,
            stop.clone(),
            queue,
        ));
        Ok(ConsumerHandle {
            channel,
            tag,
            stop,
            task,
        })
    }

    /// Stops every consumer: the broker is told to send nothing more (basic.cancel),
    /// then each consumer loop requeues what it had buffered and ends. Running jobs
    /// keep their channels, so they can still ack.
    pub async fn stop_consuming(&mut self) {
        for h in self.consumers.values() {
            let cancel = h
                .channel
                .basic_cancel(h.tag.clone(), BasicCancelOptions::default());
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), cancel).await {
                debug!(error = %e, "basic.cancel failed");
            }
            h.stop.cancel();
        }
        for h in self.consumers.values_mut() {
            let _ = (&mut h.task).await;
        }
    }

    /// Closes the consumer channels, the publisher channel and the connection. Call
    /// after the running jobs are finished or requeued.
    pub async fn close(self) {
        let close = async {
            for h in self.consumers.into_values() {
                h.stop.cancel();
                let _ = h.channel.close(200, "shutdown".into()).await;
            }
            let _ = self.publisher.channel().close(200, "shutdown".into()).await;
            let _ = self.connection.close(200, "shutdown".into()).await;
        };
        if tokio::time::timeout(Duration::from_secs(10), close)
            .await
            .is_err()
        {
            warn!("closing the amqp connection timed out");
        }
    }
}

async fn stop_consumer(h: ConsumerHandle) {
    h.stop.cancel();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        h.channel
            .basic_cancel(h.tag.clone(), BasicCancelOptions::default()),
    )
    .await;
    let _ = h.channel.close(200, "consumer stopped".into()).await;
    h.task.abort();
}

/// One consumer's loop: each delivery waits for a worker slot, then runs as its own
/// task. Ends when the stream ends (channel or connection lost: the supervisor
/// restarts it) or when stopped (it then requeues what the broker had pushed).
async fn consume(
    shared: Arc<Shared>,
    publisher: Publisher,
    mut consumer: Consumer,
    stop: CancellationToken,
    queue: String,
) {
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                warn!(queue, error = %e, "consumer failed");
                return;
            }
            None => {
                debug!(queue, "consumer ended");
                return;
            }
        };
        let permit = tokio::select! {
            biased;
            () = stop.cancelled() => {
                job::nack(&delivery.acker).await;
                break;
            }
            p = shared.workers.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => {
                    job::nack(&delivery.acker).await;
                    break;
                }
            },
        };
        spawn_job(&shared, publisher.clone(), delivery, permit);
    }
    // Deliveries the broker pushed before basic.cancel go back now, not when the
    // channel finally closes after the drain.
    while let Ok(Some(Ok(d))) =
        tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
    {
        job::nack(&d.acker).await;
    }
}

fn spawn_job(
    shared: &Arc<Shared>,
    publisher: Publisher,
    delivery: Delivery,
    permit: OwnedSemaphorePermit,
) {
    let jobs = shared.jobs.clone();
    let abort = shared.abort.clone();
    shared.tracker.spawn(async move {
        let _permit = permit;
        let acker = delivery.acker.clone();
        tokio::select! {
            () = job::handle(jobs, publisher, delivery) => {}
            () = abort.cancelled() => {
                // The drain deadline passed: dropping the job rolls back its lock
                // transaction; the message goes back to its queue for another run.
                warn!("job interrupted by shutdown, requeued");
                job::nack(&acker).await;
            }
        }
    });
}

/// Keeps a session alive until `stop` fires, then returns it with its consumers
/// stopped (running jobs still hold its channels). `first` is the connection made at
/// start-up; later ones are retried forever with backoff.
pub async fn supervise(
    shared: Arc<Shared>,
    amqp_url: String,
    first: Connection,
    mut topology: watch::Receiver<BTreeSet<Target>>,
    ready: Readiness,
    stop: CancellationToken,
) -> Option<Session> {
    let mut next = Some(first);
    let mut backoff = Duration::from_millis(500);
    loop {
        let connection = match next.take() {
            Some(c) => c,
            None => {
                let attempt = tokio::select! {
                    () = stop.cancelled() => return None,
                    c = bus::connect(&amqp_url, SERVICE) => c,
                };
                match attempt {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, ?backoff, "amqp connection failed, retrying");
                        if sleep_or_stop(backoff, &stop).await {
                            return None;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        continue;
                    }
                }
            }
        };
        let mut events = connection.events_listener();
        let mut session = match Session::open(connection, &shared).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot set up the amqp session, retrying");
                if sleep_or_stop(backoff, &stop).await {
                    return None;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        info!("amqp session ready");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut topology_open = true;
        let mut events_open = true;
        loop {
            let targets = topology.borrow_and_update().clone();
            match session.ensure(&shared, &targets).await {
                Ok(()) => {
                    backoff = Duration::from_millis(500);
                    ready.set(true);
                }
                Err(e) => warn!(error = %e, "cannot start consumers, retrying"),
            }
            tokio::select! {
                () = stop.cancelled() => {
                    ready.set(false);
                    session.stop_consuming().await;
                    return Some(session);
                }
                changed = topology.changed(), if topology_open => {
                    topology_open = changed.is_ok();
                }
                event = events.next(), if events_open => match event {
                    Some(Event::Error(e)) => warn!(error = %e, "amqp connection error"),
                    Some(_) => {}
                    None => events_open = false,
                },
                _ = tick.tick() => {}
            }
            if !session.connection.status().connected() {
                warn!("amqp connection lost, reconnecting");
                ready.set(false);
                break;
            }
            if !session.publisher.channel().status().connected() {
                // A channel error (a publish to an exchange deleted meanwhile, say)
                // closes only that channel. The whole session is rebuilt, which also
                // re-declares the exchanges; the consumers' unacked deliveries go back
                // to their queues with the old connection.
                warn!("amqp publisher channel closed by the broker, rebuilding the session");
                ready.set(false);
                let close = session
                    .connection
                    .close(200, "publisher channel lost".into());
                if tokio::time::timeout(Duration::from_secs(5), close)
                    .await
                    .is_err()
                {
                    debug!("closing the amqp connection timed out");
                }
                break;
            }
        }
        // Running jobs of the dead session fail to ack; the broker redelivers them.
        for h in session.consumers.values() {
            h.stop.cancel();
        }
        drop(session);
        if sleep_or_stop(backoff, &stop).await {
            return None;
        }
    }
}

/// Sleeps, or returns true at once when `stop` fires.
async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}
