//! Not a test but a measurement (ignored by default; it asserts nothing about time):
//! the latency of 40 small pushes through one node's PostReceivePack, each adding one
//! commit on `main`. Run with
//! `cargo nextest run -p gitcluster-storage --run-ignored only push_latency --no-capture`.

mod common;

use std::time::Instant;

use common::{ZERO_OID, commit, init_bare, push_body, receive_pack_on, start};
use gitcluster_proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, prints numbers"]
async fn push_latency() {
    let node = start("default", None, false).await;
    node.create("bench.git").await;
    let scratch = tempfile::tempdir().expect("tempdir");
    init_bare(scratch.path()).await;
    let mut smarthttp = node.smarthttp().await;
    let mut old = ZERO_OID.to_owned();
    let mut times = Vec::new();
    for i in 0..45 {
        let parents: Vec<&str> = if old == ZERO_OID { vec![] } else { vec![&old] };
        let new = commit(scratch.path(), &format!("commit {i}"), &parents).await;
        let body = push_body(scratch.path(), &old, &new, "refs/heads/main").await;
        let message = v1::PostReceivePackRequest {
            repository: Some(node.repo("bench.git")),
            data: body,
            git_protocol: String::new(),
        };
        let started = Instant::now();
        let report = receive_pack_on(&mut smarthttp, vec![message])
            .await
            .expect("push")
            .report;
        let elapsed = started.elapsed();
        assert!(report.contains("ok refs/heads/main"), "push {i} failed");
        // The first pushes warm the page cache and the connection.
        if i >= 5 {
            times.push(elapsed.as_secs_f64() * 1000.0);
        }
        old = new;
    }
    times.sort_by(f64::total_cmp);
    let p50 = times[times.len() / 2];
    let p90 = times[times.len() * 9 / 10];
    println!(
        "push_latency: {} pushes p50 {p50:.2} ms p90 {p90:.2} ms",
        times.len()
    );
    node.stop().await;
}
