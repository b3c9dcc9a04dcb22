//! RabbitMQ helpers for tests: queue depths and clean-up of a cluster's exchanges and
//! queues (each cluster uses its own name prefix, so tests never see each other's jobs).

use gitcluster_common::bus::lapin::options::{
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use gitcluster_common::bus::lapin::types::FieldTable;
use gitcluster_proto::jobs::BusNames;

/// Number of ready messages in `queue` (0 when it does not exist).
pub async fn queue_depth(queue: &str) -> anyhow::Result<u32> {
    let conn = gitcluster_common::bus::connect(&crate::amqp_url(), "integration-tests").await?;
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
                gitcluster_common::bus::connect(&crate::amqp_url(), "integration-tests").await
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

/// Address of the broker's management API (`RABBITMQ_MANAGEMENT_ADDR`, default
/// `127.0.0.1:15672`; `make test` enables the plugin), used with guest/guest.
fn management_addr() -> String {
    std::env::var("RABBITMQ_MANAGEMENT_ADDR").unwrap_or_else(|_| "127.0.0.1:15672".into())
}

/// One request to the management API: `(status, body)`.
pub async fn management(method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use base64::Engine as _;
    let addr = management_addr();
    let credentials = base64::engine::general_purpose::STANDARD.encode("guest:guest");
    crate::http_exchange(
        &addr,
        &format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Basic {credentials}\r\n\
             X-Reason: closed by a gitcluster test\r\nContent-Length: 0\r\n\r\n"
        ),
    )
    .await
}

/// Names of the broker connections consuming from queues whose name starts with
/// `prefix` (a test's own bus prefix), sorted.
pub async fn consuming_connections(prefix: &str) -> anyhow::Result<Vec<String>> {
    connection_names(
        "/api/consumers/%2f",
        &["queue", "name"],
        prefix,
        &["channel_details", "connection_name"],
    )
    .await
}

/// Names of the broker connections whose client-given name (`connection_name`, see
/// `gitcluster_common::bus::connect`) starts with `label`, sorted.
pub async fn connections_labelled(label: &str) -> anyhow::Result<Vec<String>> {
    connection_names(
        "/api/connections",
        &["client_properties", "connection_name"],
        label,
        &["name"],
    )
    .await
}

/// From the JSON array at `path`, the distinct string fields at `name` of the entries
/// whose string field at `key` starts with `prefix`, sorted.
async fn connection_names(
    path: &str,
    key: &[&str],
    prefix: &str,
    name: &[&str],
) -> anyhow::Result<Vec<String>> {
    let (status, body) = management("GET", path).await?;
    anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&body)?;
    let at = |entry: &'_ serde_json::Value, fields: &[&str]| {
        fields
            .iter()
            .try_fold(entry, |v, f| v.get(*f))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let mut names: Vec<String> = entries
        .iter()
        .filter(|e| at(e, key).is_some_and(|k| k.starts_with(prefix)))
        .filter_map(|e| at(e, name))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Closes the broker connection `name` from the broker's side, as an operator (or a
/// broker restart) would.
pub async fn close_connection(name: &str) -> anyhow::Result<()> {
    let path = format!("/api/connections/{}", percent_encode(name));
    let (status, body) = management("DELETE", &path).await?;
    anyhow::ensure!(status == 204, "DELETE {path}: {status} {body}");
    Ok(())
}

/// Percent-encodes everything but unreserved characters (connection names hold
/// spaces, `:` and `>`).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
