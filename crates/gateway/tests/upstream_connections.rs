//! The gateway spreads its upstream calls over several HTTP/2 connections, so one
//! connection torn down (h2's flood guard, a reset socket) costs only the calls it
//! carried.

#![allow(clippy::disallowed_methods)] // tests block their own thread on git

mod support;

use gitcluster_integration_tests::{Cluster, eventually};
use support::{Gateway, create_repository, get};

/// Established TCP connections (IPv4 and IPv6) whose remote end is `port`.
fn established_to(port: u16) -> usize {
    let port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[2].ends_with(&port) && cols[3] == "01"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_are_spread_over_the_configured_upstream_connections() {
    let cluster = Cluster::builder().storages(1).start().await;
    create_repository(&cluster, "p.git").await;
    // Through a relay of its own, so that only the gateway's connections reach its port.
    let target = cluster.storages[0]
        .address
        .trim_start_matches("http://")
        .to_owned();
    let relay = gitcluster_integration_tests::relay::Relay::start(&target);
    let port = relay.addr.port();
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
        let n = established_to(port);
        anyhow::ensure!(n >= 4, "{n} connections to the upstream");
        Ok(())
    });
    gw.stop().await;
}
