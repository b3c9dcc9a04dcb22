//! The gateway spreads its upstream calls over several HTTP/2 connections, so one
//! connection torn down (h2's flood guard, a reset socket) costs only the calls it
//! carried.

#![allow(clippy::disallowed_methods)] // tests block their own thread on git

mod support;

use gitcluster_integration_tests::relay::Relay;
use gitcluster_integration_tests::{Cluster, eventually};
use support::{Gateway, create_repository, get};

/// The columns of each established TCP connection (IPv4 and IPv6) whose remote end
/// is `port`, as `/proc/net/tcp` lists them (`local_address` is the second).
fn established_rows(port: u16) -> Vec<Vec<String>> {
    let port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| {
            t.lines()
                .skip(1)
                .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        .filter(|cols| cols.len() > 3 && cols[2].ends_with(&port) && cols[3] == "01")
        .collect()
}

/// Established TCP connections (IPv4 and IPv6) whose remote end is `port`.
fn established_to(port: u16) -> usize {
    established_rows(port).len()
}

/// Local ports of established TCP connections (IPv4 and IPv6) to remote `port`.
fn local_ports_to(port: u16) -> Vec<u16> {
    established_rows(port)
        .iter()
        .filter_map(|cols| {
            cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        })
        .collect()
}

/// `host:port` of storage node 1.
fn storage_target(cluster: &Cluster) -> String {
    cluster.storages[0]
        .address
        .trim_start_matches("http://")
        .to_owned()
}

/// Creates `p.git`, then starts storage node 1 behind a relay of its own (so that
/// only the gateway's connections reach the relay's port) and an in-process gateway
/// with 4 upstream connections through it. Returns once the gateway holds all 4,
/// with the relay, the gateway and the info/refs path of `p.git`.
async fn gateway_through_relay(cluster: &Cluster) -> (Relay, Gateway, String) {
    create_repository(cluster, "p.git").await;
    let relay = Relay::start(&storage_target(cluster));
    let token = cluster.token.clone();
    let gw = Gateway::start(&format!("http://{}", relay.addr), |c| {
        c.upstream_token = Some(token);
        c.upstream_connections = 4;
    })
    .await;
    let path = format!(
        "/{}/p.git/info/refs?service=git-upload-pack",
        cluster.storages[0].storage
    );
    eventually!("the gateway holds 4 upstream connections", {
        let calls: Vec<_> = (0..16).map(|_| get(gw.http, &path, &[])).collect();
        for reply in futures::future::join_all(calls).await {
            anyhow::ensure!(reply.status == 200, "{}", reply.text());
        }
        let n = established_to(relay.addr.port());
        anyhow::ensure!(n >= 4, "{n} connections to the upstream");
        Ok(())
    });
    (relay, gw, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_are_spread_over_the_configured_upstream_connections() {
    let cluster = Cluster::builder().storages(1).start().await;
    // The helper returns only once 16 concurrent calls have left the gateway with
    // (at least) 4 connections to the relay.
    let (_relay, gw, _) = gateway_through_relay(&cluster).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_upstream_connection_fails_only_its_own_calls_and_is_replaced() {
    let cluster = Cluster::builder().storages(1).start().await;
    let storage_port: u16 = storage_target(&cluster)
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let (relay, gw, path) = gateway_through_relay(&cluster).await;

    // One connection goes silent (a peer that vanished without closing).
    let frozen = local_ports_to(storage_port)
        .into_iter()
        .any(|p| relay.freeze(p));
    assert!(frozen, "a relayed connection to freeze");
    let calls: Vec<_> = (0..8).map(|_| get(gw.http, &path, &[])).collect();
    let statuses: Vec<u16> = futures::future::join_all(calls)
        .await
        .iter()
        .map(|r| r.status)
        .collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    // Round-robin: the frozen connection carried 2 of the 8; the other 6 were served.
    assert!(ok >= 6, "{statuses:?}");
    // Once h2 keep-alive has given the frozen connection up, it is replaced.
    eventually!("every call succeeds again", {
        let calls: Vec<_> = (0..8).map(|_| get(gw.http, &path, &[])).collect();
        for reply in futures::future::join_all(calls).await {
            anyhow::ensure!(reply.status == 200, "{}", reply.status);
        }
        Ok(())
    });
    gw.stop().await;
}
