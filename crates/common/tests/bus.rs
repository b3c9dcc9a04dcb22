//! The bus plumbing against the real RabbitMQ at `AMQP_URL` (default local guest).
#![cfg(feature = "bus")]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use gitcluster_common::bus::lapin::options::{
    BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use gitcluster_common::bus::{self, Destination, Envelope, PublishError, Publisher};
use gitcluster_proto::jobs::{BusNames, Change, ReplicationJob, TRACEPARENT_HEADER};

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn job(target: &str) -> ReplicationJob {
    ReplicationJob {
        job_id: bus::new_job_id().to_string(),
        change: Change::Update,
        repository_id: 1,
        virtual_storage: "default".into(),
        relative_path: "a.git".into(),
        replica_path: "@cluster/repositories/6b/86/1".into(),
        source_storage: Some("gitaly-1".into()),
        target_storage: target.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_confirmed_routed_delayed_and_dead_lettered() {
    let prefix = format!("t{}", bus::new_job_id().simple());
    let names = BusNames::new(&prefix);
    let conn = bus::connect(&amqp_url(), "bus-test")
        .await
        .expect("RabbitMQ reachable (make test starts it)");
    let publisher = Publisher::new(&conn, names.clone(), "bus-test")
        .await
        .unwrap();
    let ch = publisher.channel().clone();
    bus::declare_base(&ch, &names, &[200]).await.unwrap();
    bus::declare_base(&ch, &names, &[200])
        .await
        .expect("declaring twice is harmless");
    bus::declare_target(&ch, &names, "default", "gitaly-2")
        .await
        .unwrap();
    let queue = names.replication_queue("default", "gitaly-2");

    let get = |q: String| {
        let ch = ch.clone();
        async move {
            ch.basic_get(q.as_str().into(), BasicGetOptions::default())
                .await
                .unwrap()
        }
    };

    // Straight to the target's queue, with the documented properties.
    let j = job("gitaly-2");
    let env = Envelope {
        attempt: 1,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        error: None,
    };
    publisher
        .publish(&j, Destination::Queue, env)
        .await
        .unwrap();
    let d = get(queue.clone())
        .await
        .expect("message in the target queue");
    let p = &d.delivery.properties;
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str()),
        Some(j.job_id.as_str())
    );
    assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("bus-test"));
    assert_eq!(*p.delivery_mode(), Some(2));
    assert!(p.timestamp().is_some());
    assert_eq!(bus::attempt_of(p), 1);
    assert!(bus::header_str(p, TRACEPARENT_HEADER).is_some());
    let body: ReplicationJob = serde_json::from_slice(&d.delivery.data).unwrap();
    assert_eq!(body, j);
    d.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();

    // A target nobody declared is unroutable, not silently dropped.
    let err = publisher
        .publish(&job("nowhere"), Destination::Queue, Envelope::default())
        .await
        .expect_err("unroutable");
    assert!(matches!(err, PublishError::Unroutable(_)), "{err}");

    // A retry waits out the tier's TTL, then lands back in the target's queue.
    publisher
        .publish(
            &j,
            Destination::Retry(200),
            Envelope {
                attempt: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut back = None;
    for _ in 0..100 {
        if let Some(d) = get(queue.clone()).await {
            back = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = back.expect("retried message comes back");
    assert_eq!(bus::attempt_of(&back.delivery.properties), 2);
    back.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();

    // Dead letters keep the error for the operator.
    publisher
        .publish(
            &j,
            Destination::Dead,
            Envelope {
                attempt: 5,
                error: Some("target unreachable"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let dead = get(names.dead_letter()).await.expect("dead letter");
    assert_eq!(
        bus::header_str(&dead.delivery.properties, "x-gitcluster-error").as_deref(),
        Some("target unreachable")
    );
    dead.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();

    for q in [queue, names.retry_exchange(200), names.dead_letter()] {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    for e in [
        names.replication_exchange(),
        names.retry_exchange(200),
        names.dead_letter(),
    ] {
        ch.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
    }
}
