//! Idle or slow requests cost only themselves: a smart HTTP call starts git only once
//! body bytes arrive, waits for a process slot at most a bounded time
//! (ResourceExhausted), one repository cannot take every slot, and the node ends a
//! call whose client stops sending after its stream idle timeout.

mod common;

use std::time::Duration;

use common::{ZERO_OID, commit, git};
use gitcluster_proto::v1;
use gitcluster_proto::v1::smart_http_service_client::SmartHttpServiceClient;
use gitcluster_storage::config::{Config, StorageConfig};
use gitcluster_storage::{Listeners, serve};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

/// A node started with a test's own limits (no token).
struct Node {
    url: String,
    root: std::path::PathBuf,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(configure: impl FnOnce(&mut Config)) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("default");
        let mut config = Config::with_storages(vec![StorageConfig {
            name: "default".into(),
            path: root.clone(),
        }]);
        config.ssh_helper = env!("CARGO_BIN_EXE_gitcluster-storage").into();
        configure(&mut config);
        let listeners = Listeners::bind(&config).await.expect("bind");
        let url = format!("http://{}", listeners.grpc_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(config, listeners, shutdown.clone()));
        let node = Node {
            url,
            root,
            shutdown,
            _dir: dir,
        };
        for _ in 0..100 {
            if Channel::from_shared(node.url.clone())
                .expect("url")
                .connect()
                .await
                .is_ok()
            {
                return node;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node at {} did not come up", node.url);
    }

    fn repo(&self, rel: &str) -> v1::Repository {
        v1::Repository {
            storage_name: "default".into(),
            relative_path: rel.into(),
        }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.root
            .canonicalize()
            .unwrap_or_else(|_| self.root.clone())
            .join(rel)
    }

    async fn smarthttp(&self) -> SmartHttpServiceClient<Channel> {
        SmartHttpServiceClient::connect(self.url.clone())
            .await
            .expect("connect")
    }

    async fn create(&self, rel: &str) {
        v1::repository_service_client::RepositoryServiceClient::connect(self.url.clone())
            .await
            .expect("connect")
            .create_repository(v1::CreateRepositoryRequest {
                repository: Some(self.repo(rel)),
                ..Default::default()
            })
            .await
            .expect("create repository");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn pkt(payload: &str) -> Vec<u8> {
    format!("{:04x}{payload}", payload.len() + 4).into_bytes()
}

/// The body of a push creating `refs/heads/main` at a fresh commit.
async fn push_body(scratch: &std::path::Path) -> (String, Vec<u8>) {
    use tokio::io::AsyncWriteExt as _;
    git(scratch, &["init", "--bare", "--quiet"], b"").await;
    let c = commit(scratch, "pushed", &[]).await;
    let mut child = tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(scratch)
        .args(["pack-objects", "--stdout", "--revs", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("pack-objects");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{c}\n").as_bytes())
        .await
        .expect("write");
    drop(stdin);
    let pack = child.wait_with_output().await.expect("pack").stdout;
    let mut body = pkt(&format!("{ZERO_OID} {c} refs/heads/main\0report-status\n"));
    body.extend_from_slice(b"0000");
    body.extend_from_slice(&pack);
    (c, body)
}

/// Opens `n` PostReceivePack calls on `rel` whose first message names the
/// repository and carries no body; they send nothing more while the returned
/// senders live (with `data`, the first message also carries that much body, so
/// git is running). A unit arrives on `opened` when a call's response headers came (the
/// node took its first message); each call's outcome (its end, or an error) arrives
/// on `ended`.
fn open_idle_pushes(node: &Node, rel: &str, n: usize, data: &[u8]) -> IdleCalls {
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (opened_tx, opened_rx) = mpsc::unbounded_channel();
    let mut senders = Vec::new();
    for _ in 0..n {
        let (tx, rx) = mpsc::channel(1);
        tx.try_send(v1::PostReceivePackRequest {
            repository: Some(node.repo(rel)),
            data: data.to_vec(),
            git_protocol: String::new(),
        })
        .expect("queue the first message");
        senders.push(tx);
        let url = node.url.clone();
        let done = done_tx.clone();
        let opened = opened_tx.clone();
        tokio::spawn(async move {
            let outcome = async {
                // One connection per idle call, as idle HTTP clients would come.
                let mut client = SmartHttpServiceClient::connect(url)
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                let mut response = client
                    .post_receive_pack(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                let _ = opened.send(());
                while response.message().await?.is_some() {}
                Ok(())
            }
            .await;
            let _ = done.send(outcome);
        });
    }
    IdleCalls {
        _senders: senders,
        opened: opened_rx,
        ended: done_rx,
    }
}

struct IdleCalls {
    _senders: Vec<mpsc::Sender<v1::PostReceivePackRequest>>,
    opened: mpsc::UnboundedReceiver<()>,
    ended: mpsc::UnboundedReceiver<Result<(), tonic::Status>>,
}

impl IdleCalls {
    /// Waits (generously) until `n` calls in all have been taken by the node.
    async fn wait_opened(&mut self, seen: &mut usize, n: usize) {
        while *seen < n {
            match tokio::time::timeout(Duration::from_secs(20), self.opened.recv()).await {
                Ok(Some(())) => *seen += 1,
                _ => panic!("only {seen} idle calls were taken by the node, expected {n}"),
            }
        }
    }
}

async fn push(node: &Node, rel: &str, body: Vec<u8>) -> Result<String, tonic::Status> {
    let mut response = node
        .smarthttp()
        .await
        .post_receive_pack(tokio_stream::iter(vec![v1::PostReceivePackRequest {
            repository: Some(node.repo(rel)),
            data: body,
            git_protocol: String::new(),
        }]))
        .await?
        .into_inner();
    let mut report = Vec::new();
    while let Some(m) = response.message().await? {
        report.extend_from_slice(&m.data);
    }
    Ok(String::from_utf8_lossy(&report).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_idle_pushes_do_not_block_a_push_to_another_repository() {
    let node = Node::start(|_| {}).await;
    node.create("idle.git").await;
    node.create("other.git").await;
    let mut idle = open_idle_pushes(&node, "idle.git", 100, b"");
    let mut opened = 0;
    // As many as there are git process slots (64): the state that used to wedge the node.
    idle.wait_opened(&mut opened, 64).await;

    let scratch = tempfile::tempdir().expect("tempdir");
    let (c, body) = push_body(scratch.path()).await;
    // Generous: the push takes milliseconds; without the fix it never completes.
    let report = tokio::time::timeout(Duration::from_secs(60), push(&node, "other.git", body))
        .await
        .expect("a push to another repository completes while 100 idle pushes are open")
        .expect("push succeeds");
    assert!(report.contains("ok refs/heads/main"), "{report}");
    assert_eq!(
        git(
            &node.path("other.git"),
            &["rev-parse", "refs/heads/main"],
            b""
        )
        .await,
        c
    );
    idle.wait_opened(&mut opened, 100).await;
    // The idle calls are still open: the push did not merely outlast them.
    assert!(idle.ended.try_recv().is_err(), "an idle call ended early");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_calls_are_ended_after_the_stream_idle_timeout() {
    let node = Node::start(|c| c.limits.stream_idle_timeout = Duration::from_secs(1)).await;
    node.create("idle.git").await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let (_, body) = push_body(scratch.path()).await;
    // Ten that never send a body byte, two stalled mid-body (git running).
    let mut silent = open_idle_pushes(&node, "idle.git", 10, b"");
    let mut stalled = open_idle_pushes(&node, "idle.git", 2, &body[..body.len() / 2]);
    for (calls, n) in [(&mut silent, 10), (&mut stalled, 2)] {
        for _ in 0..n {
            let ended = tokio::time::timeout(Duration::from_secs(60), calls.ended.recv())
                .await
                .expect("the node ends an idle call")
                .expect("outcome");
            let status = ended.expect_err("an idle call fails");
            assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
            assert!(status.message().contains("no request data"), "{status:?}");
        }
    }
    let refs = git(&node.path("idle.git"), &["for-each-ref"], b"").await;
    assert!(refs.is_empty(), "a stalled push left refs: {refs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_waiting_too_long_for_a_slot_is_refused() {
    let node = Node::start(|c| {
        c.max_git_processes = 2;
        c.limits.per_repository = 2;
        c.limits.slot_wait = Duration::from_secs(1);
    })
    .await;
    node.create("busy.git").await;
    node.create("other.git").await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let (_, body) = push_body(scratch.path()).await;
    // Two pushes stalled mid-body hold both slots.
    let mut stalled = open_idle_pushes(&node, "busy.git", 2, &body[..body.len() / 2]);
    let mut opened = 0;
    stalled.wait_opened(&mut opened, 2).await;
    // A push to another repository waits for a slot at most 1 s, then is refused.
    let refused = eventually_refused(&node, "other.git", &body).await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("slots are busy"), "{refused:?}");
    assert!(!refused.message().contains('\n'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_repository_cannot_take_every_slot() {
    let node = Node::start(|c| {
        c.max_git_processes = 4;
        c.limits.slot_wait = Duration::from_secs(1);
    })
    .await;
    node.create("hot.git").await;
    node.create("other.git").await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let (c, body) = push_body(scratch.path()).await;
    // The per-repository limit defaults to half the slots: two stalled pushes reach it.
    let mut stalled = open_idle_pushes(&node, "hot.git", 2, &body[..body.len() / 2]);
    let mut opened = 0;
    stalled.wait_opened(&mut opened, 2).await;
    let refused = eventually_refused(&node, "hot.git", &body).await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("per-repository"), "{refused:?}");
    let report = push(&node, "other.git", body.clone())
        .await
        .expect("another repository still gets a slot");
    assert!(report.contains("ok refs/heads/main"), "{report}");
    assert_eq!(
        git(
            &node.path("other.git"),
            &["rev-parse", "refs/heads/main"],
            b""
        )
        .await,
        c
    );
}

/// Pushes `body` to `rel` until the node refuses it: the stalled pushes' git
/// processes start once the node has read their body bytes, shortly after their
/// headers came back. Each attempt that got through made `main`, so later ones are
/// rejected by git (`ng`) rather than refused; either way they are retried.
async fn eventually_refused(node: &Node, rel: &str, body: &[u8]) -> tonic::Status {
    for _ in 0..50 {
        if let Err(status) = push(node, rel, body.to_vec()).await {
            return status;
        }
    }
    panic!("the node never refused a push to {rel}");
}
