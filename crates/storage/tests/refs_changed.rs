//! Every ref-changing mutator says whether it changed a reference or HEAD
//! (`gitcluster-refs-changed`): "0" for git's probe POST, an all-rejected push, an
//! UpdateReferences to the current value and a SetDefaultBranch to the current
//! branch; "1" for a real change. The router bumps nothing for a "0".

mod common;

use common::{TestNode, ZERO_OID, commit, git, init_bare, push_body, start};
use gitcluster_proto::REFS_CHANGED_TRAILER;
use gitcluster_proto::v1;
use tonic::metadata::MetadataMap;

/// The refs-changed value in `metadata` (headers or trailers), if any.
fn refs_changed(metadata: &MetadataMap) -> Option<String> {
    metadata
        .get(REFS_CHANGED_TRAILER)
        .map(|v| v.to_str().expect("ascii").to_owned())
}

/// Sends `body` as one PostReceivePack; returns git's report and the trailer value
/// (None when the node sent none), after checking the stream ended OK.
async fn receive_pack(node: &TestNode, rel: &str, body: Vec<u8>) -> (String, Option<String>) {
    let pushed = common::receive_pack(node, rel, body)
        .await
        .expect("post receive-pack, stream ends ok");
    let trailers = pushed.trailers.expect("trailers present");
    (pushed.report, refs_changed(&trailers))
}

fn header<T>(response: &tonic::Response<T>) -> Option<String> {
    refs_changed(response.metadata())
}

/// A client repository with commits `first` and `second` (child of first).
async fn client_repo(dir: &std::path::Path) -> (String, String) {
    init_bare(dir).await;
    let first = commit(dir, "first", &[]).await;
    let second = commit(dir, "second", &[&first]).await;
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_post_and_all_rejected_push_report_no_change_a_real_push_does() {
    let node = start("default", None, false).await;
    node.create("r.git").await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let (first, second) = client_repo(scratch.path()).await;

    // git's probe before a large push: the body is exactly a flush packet.
    let (_, probe) = receive_pack(&node, "r.git", b"0000".to_vec()).await;
    assert_eq!(probe.as_deref(), Some("0"), "probe POST");

    let body = push_body(scratch.path(), ZERO_OID, &first, "refs/heads/main").await;
    let (report, real) = receive_pack(&node, "r.git", body).await;
    assert!(report.contains("ok refs/heads/main"), "{report}");
    assert_eq!(real.as_deref(), Some("1"), "real push");

    // Creating a branch that exists is refused by receive-pack: nothing changes.
    let body = push_body(scratch.path(), ZERO_OID, &second, "refs/heads/main").await;
    let (report, rejected) = receive_pack(&node, "r.git", body).await;
    assert!(report.contains("ng refs/heads/main"), "{report}");
    assert_eq!(rejected.as_deref(), Some("0"), "all-rejected push");
    assert_eq!(
        git(&node.path("r.git"), &["rev-parse", "refs/heads/main"], b"").await,
        first
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_mutators_to_the_current_value_report_no_change() {
    let node = start("default", None, false).await;
    node.create("u.git").await;
    let dir = node.path("u.git");
    let first = commit(&dir, "first", &[]).await;
    let second = commit(&dir, "second", &[&first]).await;
    let mut refs = node.refs().await;
    let update = |old: &str, new: &str| v1::UpdateReferencesRequest {
        repository: Some(node.repo("u.git")),
        updates: vec![v1::update_references_request::Update {
            reference: "refs/heads/main".into(),
            old_oid: old.into(),
            new_oid: new.into(),
        }],
    };

    let created = refs
        .update_references(update(ZERO_OID, &first))
        .await
        .expect("create main");
    assert_eq!(header(&created).as_deref(), Some("1"), "ref created");
    let same = refs
        .update_references(update(&first, &first))
        .await
        .expect("update to the current value");
    assert_eq!(header(&same).as_deref(), Some("0"), "ref unchanged");
    let moved = refs
        .update_references(update(&first, &second))
        .await
        .expect("move main");
    assert_eq!(header(&moved).as_deref(), Some("1"), "ref moved");

    let set = |name: &str| v1::SetDefaultBranchRequest {
        repository: Some(node.repo("u.git")),
        name: name.into(),
    };
    let unchanged = refs
        .set_default_branch(set("refs/heads/main"))
        .await
        .expect("set HEAD to its current branch");
    assert_eq!(header(&unchanged).as_deref(), Some("0"), "HEAD unchanged");
    let changed = refs
        .set_default_branch(set("refs/heads/other"))
        .await
        .expect("point HEAD elsewhere");
    assert_eq!(header(&changed).as_deref(), Some("1"), "HEAD changed");
    node.stop().await;
}
