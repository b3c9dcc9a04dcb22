//! A hundred idle pushes through the gateway cost only themselves: while they hold
//! their connections open against one storage node, a `git push` to another
//! repository on that node still completes, and every idle request is answered and
//! closed once the gateway's body idle timeout (`--body-idle-timeout-secs`) passes.
//!
//! Half of the idle requests send no body byte at all; the other half send the first
//! pkt-line of a push (so the node has started git for them and holds a process
//! slot) and then stop. Both kinds are what a stalled or hostile client does.

#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::time::Duration;

use gitcluster_integration_tests::{Cluster, eventually, git};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How many idle requests the test holds open.
const IDLE: usize = 100;
/// The gateway's body idle timeout in this test, in seconds.
const BODY_IDLE_SECS: u64 = 3;

/// `host:port` of the gateway.
fn gateway_addr(cluster: &Cluster) -> String {
    cluster
        .gateway_url()
        .trim_start_matches("http://")
        .to_owned()
}

/// A pkt-line holding `payload`.
fn pkt(payload: &str) -> Vec<u8> {
    format!("{:04x}{payload}", payload.len() + 4).into_bytes()
}

/// Opens a receive-pack POST to `path` announcing a body it never finishes: with
/// `first` empty nothing of the body is sent, otherwise one chunk holding `first`.
async fn open_idle(addr: &str, path: &str, first: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /default/{path}/git-receive-pack HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/x-git-receive-pack-request\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    if !first.is_empty() {
        s.write_all(format!("{:x}\r\n", first.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(first).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.flush().await.unwrap();
    s
}

/// Reads what the gateway sends on an idle request until it closes the connection:
/// the status line's code. Errors when the connection closes without an answer.
async fn answer_then_close(mut s: TcpStream) -> anyhow::Result<u16> {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("closed without an HTTP answer: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_idle_pushes_through_the_gateway_do_not_block_a_push_and_are_closed() {
    let cluster = Cluster::builder()
        .storages(1)
        .routers(1)
        .gateway()
        .gateway_arg(&format!("--body-idle-timeout-secs={BODY_IDLE_SECS}"))
        .start()
        .await;
    let addr = gateway_addr(&cluster);

    // Two repositories on the one node: the idle requests target one, the real
    // push the other.
    let mut heads = Vec::new();
    for name in ["busy", "other"] {
        let work = cluster.dir().join(name);
        std::fs::create_dir_all(&work).unwrap();
        git::run(&work, &["init", "-q", "--initial-branch=main"]);
        std::fs::write(work.join("README.md"), format!("{name}\n")).unwrap();
        heads.push(git::commit_all(&work, "initial"));
        git::run(
            &work,
            &[
                "push",
                "-q",
                &cluster.repo_url(&format!("{name}.git")),
                "main",
            ],
        );
    }

    // The first command of a push moving busy's main: enough for the node to start
    // git-receive-pack, which then waits for the rest forever.
    let command = pkt(&format!(
        "{} {} refs/heads/main\0report-status side-band-64k\n",
        heads[0], heads[0]
    ));
    let mut idle = Vec::with_capacity(IDLE);
    // Taken before the last request is sent, so no idle request can be due for
    // its timeout before `last_opened + BODY_IDLE_SECS`.
    let mut last_opened = std::time::Instant::now();
    for i in 0..IDLE {
        let first: &[u8] = if i % 2 == 0 { &[] } else { &command };
        last_opened = std::time::Instant::now();
        idle.push(open_idle(&addr, "busy.git", first).await);
    }

    // A push to the other repository on the same node completes meanwhile. The
    // bound only turns a hang into a failure; it is not a timing goal.
    let work = cluster.dir().join("other");
    std::fs::write(work.join("README.md"), "moved on\n").unwrap();
    let pushed = git::commit_all(&work, "while a hundred pushes idle");
    let url = cluster.repo_url("other.git");
    let push =
        tokio::task::spawn_blocking(move || git::run_output(&work, &["push", "-q", &url, "main"]));
    let out = tokio::time::timeout(Duration::from_secs(120), push)
        .await
        .expect("the push hung behind the idle requests")
        .unwrap();
    assert!(
        out.status.success(),
        "push beside idle requests failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let remote = git::run(
        cluster.dir(),
        &[
            "ls-remote",
            &cluster.repo_url("other.git"),
            "refs/heads/main",
        ],
    );
    assert!(remote.starts_with(&pushed), "ls-remote: {remote}");

    // Every idle request is answered (408 when the gateway gave up waiting for its
    // body) and its connection closed; none is left hanging.
    let answers = futures::future::join_all(idle.into_iter().map(|s| {
        tokio::time::timeout(
            gitcluster_integration_tests::patience(),
            answer_then_close(s),
        )
    }))
    .await;
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    for (i, a) in answers.into_iter().enumerate() {
        let code = a
            .unwrap_or_else(|_| panic!("idle request {i} was never closed"))
            .unwrap_or_else(|e| panic!("idle request {i}: {e:#}"));
        *codes.entry(code).or_default() += 1;
    }
    assert_eq!(
        codes.get(&408).copied().unwrap_or_default(),
        IDLE,
        "every idle request ends with 408 Request Timeout: {codes:?}"
    );
    assert!(
        last_opened.elapsed() >= Duration::from_secs(BODY_IDLE_SECS),
        "idle requests were closed before their timeout"
    );

    // The node's git processes for the idle pushes are gone: busy.git still takes
    // a push.
    let work = cluster.dir().join("busy");
    std::fs::write(work.join("README.md"), "after the idle ones\n").unwrap();
    let after = git::commit_all(&work, "after");
    let url = cluster.repo_url("busy.git");
    eventually!("busy.git takes a push after the idle requests closed", {
        let out = git::run_output(&work, &["push", "-q", &url, "main"]);
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    });
    let remote = git::run(
        cluster.dir(),
        &[
            "ls-remote",
            &cluster.repo_url("busy.git"),
            "refs/heads/main",
        ],
    );
    assert!(remote.starts_with(&after), "ls-remote: {remote}");
}
