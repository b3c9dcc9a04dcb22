//! RemoveRepository with `only_if_empty`: removes a repository only while it is as
//! created (no reference, HEAD unborn) and no write is in flight; otherwise
//! FailedPrecondition and nothing is removed. Push-to-create's undo relies on it so
//! that another client's push is never deleted.

mod common;

use common::{TestNode, ZERO_OID, assert_pushed_main, client_push, commit, read_report, start};
use gitcluster_proto::v1;
use tonic::Code;

async fn remove_if_empty(node: &TestNode, rel: &str) -> Result<(), tonic::Status> {
    node.repos()
        .await
        .remove_repository(v1::RemoveRepositoryRequest {
            repository: Some(node.repo(rel)),
            only_if_empty: true,
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_repository_is_removed_one_with_refs_is_kept() {
    let node = start("default", None, false).await;
    node.create("empty.git").await;
    remove_if_empty(&node, "empty.git")
        .await
        .expect("an empty repository is removed");
    assert!(!node.path("empty.git").exists());

    node.create("full.git").await;
    let dir = node.path("full.git");
    let c = commit(&dir, "content", &[]).await;
    common::update_ref(&node, "full.git", "refs/heads/main", ZERO_OID, &c)
        .await
        .expect("create main");
    let refused = remove_if_empty(&node, "full.git")
        .await
        .expect_err("a repository with references is kept");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(!refused.message().contains('\n'), "{refused:?}");
    assert!(common::is_bare_repo(&dir));

    let missing = remove_if_empty(&node, "never.git")
        .await
        .expect_err("nothing to remove");
    assert_eq!(missing.code(), Code::NotFound);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_held_open_mid_body_keeps_its_repository() {
    let node = start("default", None, false).await;
    node.create("p.git").await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let (c, body) = client_push(scratch.path(), "pushed").await;
    let (head, rest) = body.split_at(body.len() / 2);

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::PostReceivePackRequest {
        repository: Some(node.repo("p.git")),
        data: head.to_vec(),
        git_protocol: String::new(),
    })
    .await
    .expect("queue first message");
    // The response headers arrive once the node has taken the first message: the
    // push is in flight from then on.
    let response = node
        .smarthttp()
        .await
        .post_receive_pack(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("push accepted")
        .into_inner();

    let refused = remove_if_empty(&node, "p.git")
        .await
        .expect_err("a repository with a push in flight is kept");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(common::is_bare_repo(&node.path("p.git")));

    tx.send(v1::PostReceivePackRequest {
        repository: None,
        data: rest.to_vec(),
        git_protocol: String::new(),
    })
    .await
    .expect("send the rest");
    drop(tx);
    let report = read_report(response).await.expect("push completes").report;
    assert_pushed_main(&node, "p.git", &report, &c).await;
    node.stop().await;
}
