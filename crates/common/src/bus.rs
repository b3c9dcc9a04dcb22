//! AMQP plumbing for the replication job bus (feature `bus`): declaring the topology
//! described in [`gitcluster_proto::jobs`] and publishing jobs with publisher confirms.
//!
//! Every publish is `mandatory` and waits for the broker's confirm: an unroutable
//! message is returned (and still acked) by RabbitMQ, so a confirm alone does not
//! prove the job reached a queue. [`PublishError::Unroutable`] reports that case.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use gitcluster_proto::jobs::{
    ATTEMPT_HEADER, BusNames, CONTENT_TYPE, ERROR_HEADER, ReplicationJob, TRACEPARENT_HEADER,
};

pub use lapin;

/// Why a publish did not reach a queue.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker or the connection failed.
    #[error("publish: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused the message (nack).
    #[error("publish: broker nacked the message")]
    Nacked,
    /// No queue is bound for the routing key.
    #[error("publish: no queue bound for routing key {0:?}")]
    Unroutable(String),
    /// The job could not be serialised.
    #[error("publish: encode job: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Opens an AMQP connection named `<service>@<hostname>` (visible in the broker UI).
pub async fn connect(url: &str, service: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("{service}@{}", hostname())));
    Connection::connect(url, props).await
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

async fn exchange(channel: &Channel, name: &str, kind: ExchangeKind) -> lapin::Result<()> {
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Declares the exchanges and queues shared by every target: the replication
/// exchange, one retry tier per delay and the dead-letter queue. Idempotent.
pub async fn declare_base(
    channel: &Channel,
    names: &BusNames,
    retry_delays_ms: &[u64],
) -> lapin::Result<()> {
    exchange(channel, &names.replication_exchange(), ExchangeKind::Direct).await?;
    for &delay in retry_delays_ms {
        let tier = names.retry_exchange(delay);
        exchange(channel, &tier, ExchangeKind::Fanout).await?;
        let mut args = FieldTable::default();
        // Messages wait out the TTL, then dead-letter back to the replication exchange
        // keeping the routing key they were published with: the target's queue.
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(delay as i64));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(names.replication_exchange().into()),
        );
        channel
            .queue_declare(tier.as_str().into(), durable(), args)
            .await?;
        bind(channel, &tier, &tier, "").await?;
    }
    let dead = names.dead_letter();
    exchange(channel, &dead, ExchangeKind::Fanout).await?;
    channel
        .queue_declare(dead.as_str().into(), durable(), FieldTable::default())
        .await?;
    bind(channel, &dead, &dead, "").await
}

/// Declares the queue of one target storage and binds it. Idempotent.
pub async fn declare_target(
    channel: &Channel,
    names: &BusNames,
    virtual_storage: &str,
    storage: &str,
) -> lapin::Result<()> {
    let queue = names.replication_queue(virtual_storage, storage);
    channel
        .queue_declare(queue.as_str().into(), durable(), FieldTable::default())
        .await?;
    bind(
        channel,
        &queue,
        &names.replication_exchange(),
        &BusNames::routing_key(virtual_storage, storage),
    )
    .await
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Reads the attempt header of a delivery; 1 when absent.
pub fn attempt_of(properties: &BasicProperties) -> u32 {
    let value = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(ATTEMPT_HEADER).cloned());
    match value {
        Some(AMQPValue::LongInt(n)) => u32::try_from(n).unwrap_or(1).max(1),
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(n).unwrap_or(1).max(1),
        Some(AMQPValue::LongUInt(n)) => n.max(1),
        _ => 1,
    }
}

/// Reads a string header of a delivery.
pub fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A confirm-mode channel that publishes replication jobs.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    names: BusNames,
    app_id: String,
}

/// Where a job message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The target storage's queue.
    Queue,
    /// The retry tier that delays it by this many milliseconds.
    Retry(u64),
    /// The dead-letter queue.
    Dead,
}

/// Per-message metadata besides the job body.
#[derive(Debug, Clone, Default)]
pub struct Envelope<'a> {
    /// 1-based attempt number the delivery will carry.
    pub attempt: u32,
    /// W3C trace context of the write that caused the job.
    pub traceparent: Option<&'a str>,
    /// Last error (dead-lettered jobs).
    pub error: Option<&'a str>,
}

impl Publisher {
    /// Opens a channel on `connection` and puts it in confirm mode.
    pub async fn new(
        connection: &Connection,
        names: BusNames,
        app_id: &str,
    ) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            channel,
            names,
            app_id: app_id.to_owned(),
        })
    }

    /// The channel, for declarations.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The names this publisher uses.
    pub fn names(&self) -> &BusNames {
        &self.names
    }

    /// Publishes `job` persistently and waits until the broker confirms it reached a queue.
    pub async fn publish(
        &self,
        job: &ReplicationJob,
        destination: Destination,
        envelope: Envelope<'_>,
    ) -> Result<(), PublishError> {
        let exchange = match destination {
            Destination::Queue => self.names.replication_exchange(),
            Destination::Retry(ms) => self.names.retry_exchange(ms),
            Destination::Dead => self.names.dead_letter(),
        };
        let key = BusNames::routing_key(&job.virtual_storage, &job.target_storage);
        let mut headers = FieldTable::default();
        headers.insert(
            ATTEMPT_HEADER.into(),
            AMQPValue::LongInt(envelope.attempt.max(1) as i32),
        );
        if let Some(tp) = envelope.traceparent {
            headers.insert(TRACEPARENT_HEADER.into(), AMQPValue::LongString(tp.into()));
        }
        if let Some(err) = envelope.error {
            headers.insert(ERROR_HEADER.into(), AMQPValue::LongString(err.into()));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let props = BasicProperties::default()
            .with_content_type(ShortString::from(CONTENT_TYPE))
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(job.job_id.as_str()))
            .with_app_id(ShortString::from(self.app_id.as_str()))
            .with_timestamp(now)
            .with_headers(headers);
        let body = serde_json::to_vec(job)?;
        let confirm = self
            .channel
            .basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                props,
            )
            .await?
            .await?;
        if confirm.is_nack() {
            return Err(PublishError::Nacked);
        }
        if confirm.take_message().is_some() {
            return Err(PublishError::Unroutable(key));
        }
        Ok(())
    }
}

/// A fresh job id: UUIDv7, so ids sort by creation time in the UI and in SQL.
pub fn new_job_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}
