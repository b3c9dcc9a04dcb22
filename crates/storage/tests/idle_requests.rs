//! Idle or slow requests cost only themselves: a smart HTTP call starts git only once
//! body bytes arrive, waits for a process slot at most a bounded time
//! (ResourceExhausted), one repository cannot take every slot, and the node ends a
//! call whose client stops sending after its stream idle timeout.

mod common;

use std::time::Duration;

use common::{TestNode, assert_pushed_main, client_push, git, start_with};
use gitcluster_proto::v1;
use gitcluster_proto::v1::smart_http_service_client::SmartHttpServiceClient;
use gitcluster_storage::config::Config;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// A node (storage `default`, no token) started with a test's own limits.
async fn start(configure: impl FnOnce(&mut Config)) -> TestNode {
    start_with("default", None, false, configure).await
}

/// Opens `n` PostReceivePack calls on `rel` whose first message names the
/// repository and carries no body; they send nothing more while the returned
/// senders live (with `data`, the first message also carries that much body, so
/// git is running). A unit arrives on `opened` when a call's response headers came (the
/// node took its first message); each call's outcome (its end, or an error) arrives
/// on `ended`.
fn open_idle_pushes(node: &TestNode, rel: &str, n: usize, data: &[u8]) -> IdleCalls {
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

async fn push(node: &TestNode, rel: &str, body: Vec<u8>) -> Result<String, tonic::Status> {
    Ok(common::receive_pack(node, rel, body).await?.report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_idle_pushes_do_not_block_a_push_to_another_repository() {
    let node = start(|_| {}).await;
    node.create("idle.git").await;
    node.create("other.git").await;
    let mut idle = open_idle_pushes(&node, "idle.git", 100, b"");
    let mut opened = 0;
    // As many as there are git process slots (64): the state that used to wedge the node.
    idle.wait_opened(&mut opened, 64).await;

    let scratch = tempfile::tempdir().expect("tempdir");
    let (c, body) = client_push(scratch.path(), "pushed").await;
    // Generous: the push takes milliseconds; without the fix it never completes.
    let report = tokio::time::timeout(Duration::from_secs(60), push(&node, "other.git", body))
        .await
        .expect("a push to another repository completes while 100 idle pushes are open")
        .expect("push succeeds");
    assert_pushed_main(&node, "other.git", &report, &c).await;
    idle.wait_opened(&mut opened, 100).await;
    // The idle calls are still open: the push did not merely outlast them.
    assert!(idle.ended.try_recv().is_err(), "an idle call ended early");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_calls_are_ended_after_the_stream_idle_timeout() {
    let node = start(|c| c.limits.stream_idle_timeout = Duration::from_secs(1)).await;
    node.create("idle.git").await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let (_, body) = client_push(scratch.path(), "pushed").await;
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
    let node = start(|c| {
        c.max_git_processes = 2;
        c.limits.per_repository = 2;
        c.limits.slot_wait = Duration::from_secs(1);
    })
    .await;
    // Two pushes stalled mid-body hold both slots.
    let (_, body, _stalled) = stall_two_pushes(&node, "busy.git").await;
    // A push to another repository waits for a slot at most 1 s, then is refused.
    let refused = eventually_refused(&node, "other.git", &body).await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("slots are busy"), "{refused:?}");
    assert!(!refused.message().contains('\n'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_repository_cannot_take_every_slot() {
    let node = start(|c| {
        c.max_git_processes = 4;
        c.limits.slot_wait = Duration::from_secs(1);
    })
    .await;
    // The per-repository limit defaults to half the slots: two stalled pushes reach it.
    let (c, body, _stalled) = stall_two_pushes(&node, "hot.git").await;
    let refused = eventually_refused(&node, "hot.git", &body).await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("per-repository"), "{refused:?}");
    let report = push(&node, "other.git", body.clone())
        .await
        .expect("another repository still gets a slot");
    assert_pushed_main(&node, "other.git", &report, &c).await;
}

/// Creates `busy` and `other.git`, then holds two pushes to `busy` stalled mid-body
/// (taken by the node, so their git runs once it has read their bytes). Returns the
/// commit and body of a push creating `main`, and the stalled calls, which stay open
/// while they live.
async fn stall_two_pushes(node: &TestNode, busy: &str) -> (String, Vec<u8>, IdleCalls) {
    node.create(busy).await;
    node.create("other.git").await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let (c, body) = client_push(scratch.path(), "pushed").await;
    let mut stalled = open_idle_pushes(node, busy, 2, &body[..body.len() / 2]);
    let mut opened = 0;
    stalled.wait_opened(&mut opened, 2).await;
    (c, body, stalled)
}

/// Pushes `body` to `rel` until the node refuses it: the stalled pushes' git
/// processes start once the node has read their body bytes, shortly after their
/// headers came back. Each attempt that got through made `main`, so later ones are
/// rejected by git (`ng`) rather than refused; either way they are retried.
async fn eventually_refused(node: &TestNode, rel: &str, body: &[u8]) -> tonic::Status {
    for _ in 0..50 {
        if let Err(status) = push(node, rel, body.to_vec()).await {
            return status;
        }
    }
    panic!("the node never refused a push to {rel}");
}
