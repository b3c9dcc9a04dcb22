//! RabbitMQ helpers for tests: queue depths and clean-up of a cluster's exchanges and
//! queues (each cluster uses its own name prefix, so tests never see each other's jobs).

use gitcluster_proto::bus::lapin::options::{
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use gitcluster_proto::bus::lapin::types::FieldTable;
use gitcluster_proto::jobs::BusNames;

/// Number of ready messages in `queue` (0 when it does not exist).
pub async fn queue_depth(queue: &str) -> anyhow::Result<u32> {
    let conn = gitcluster_proto::bus::connect(&crate::amqp_url(), "integration-tests").await?;
    let ch = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let depth = match ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(q) => q.message_count(),
        Err(_) => 0,
    };
    let _ = conn.close(200, "done".into()).await;
    Ok(depth)
}

/// Deletes every exchange and queue of `prefix`; best effort, run from `Drop`.
pub fn delete_topology(prefix: &str, storages: &[String], retry_delays: &[u64]) {
    let names = BusNames::new(prefix);
    let mut queues: Vec<String> = storages
        .iter()
        .map(|s| names.replication_queue(crate::VIRTUAL_STORAGE, s))
        .collect();
    let mut exchanges = vec![names.replication_exchange(), names.dead_letter()];
    for &d in retry_delays {
        queues.push(names.retry_exchange(d));
        exchanges.push(names.retry_exchange(d));
    }
    queues.push(names.dead_letter());
    // Drop runs outside any runtime guarantee: use a private one on its own thread.
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(conn) =
                gitcluster_proto::bus::connect(&crate::amqp_url(), "integration-tests").await
            else {
                return;
            };
            for q in &queues {
                // A failed delete closes the channel: use a fresh one each time.
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
            }
            for e in &exchanges {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch
                        .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
            }
            let _ = conn.close(200, "done".into()).await;
        });
    })
    .join();
}
