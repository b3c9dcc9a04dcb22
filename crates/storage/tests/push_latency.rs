//! Not a test but a measurement (ignored by default; it asserts nothing about time):
//! the latency of 40 small pushes through one node's PostReceivePack, each adding one
//! commit on `main`. Run with
//! `cargo nextest run -p gitcluster-storage --run-ignored only push_latency --no-capture`.

mod common;

use std::time::Instant;

use common::{ZERO_OID, commit, git, start};
use gitcluster_proto::v1;

fn pkt(payload: &str) -> Vec<u8> {
    format!("{:04x}{payload}", payload.len() + 4).into_bytes()
}

async fn pack(dir: &std::path::Path, revs: &str) -> Vec<u8> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(dir)
        .args(["pack-objects", "--stdout", "--revs", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("pack-objects");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(revs.as_bytes()).await.expect("write");
    drop(stdin);
    child.wait_with_output().await.expect("pack").stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, prints numbers"]
async fn push_latency() {
    let node = start("default", None, false).await;
    node.create("bench.git").await;
    let scratch = tempfile::tempdir().expect("tempdir");
    git(scratch.path(), &["init", "--bare", "--quiet"], b"").await;
    let mut smarthttp = node.smarthttp().await;
    let mut old = ZERO_OID.to_owned();
    let mut times = Vec::new();
    for i in 0..45 {
        let parents: Vec<&str> = if old == ZERO_OID { vec![] } else { vec![&old] };
        let new = commit(scratch.path(), &format!("commit {i}"), &parents).await;
        let revs = if old == ZERO_OID {
            format!("{new}\n")
        } else {
            format!("{new}\n^{old}\n")
        };
        let mut body = pkt(&format!("{old} {new} refs/heads/main\0report-status\n"));
        body.extend_from_slice(b"0000");
        body.extend_from_slice(&pack(scratch.path(), &revs).await);
        let started = Instant::now();
        let mut response = smarthttp
            .post_receive_pack(tokio_stream::iter(vec![v1::PostReceivePackRequest {
                repository: Some(node.repo("bench.git")),
                data: body,
                git_protocol: String::new(),
            }]))
            .await
            .expect("push")
            .into_inner();
        let mut report = Vec::new();
        while let Some(m) = response.message().await.expect("message") {
            report.extend_from_slice(&m.data);
        }
        let elapsed = started.elapsed();
        assert!(
            String::from_utf8_lossy(&report).contains("ok refs/heads/main"),
            "push {i} failed"
        );
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
