//! ReplicateRepository between two in-process nodes, pulling through the real
//! `ssh-upload-pack` helper binary.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use common::{TestNode, ZERO_OID, commit, git, replicate, start, update_ref};
use gitcluster_proto::v1;
use tonic::Code;

const TOKEN: &str = "internal-token";

/// Regular files under `dir/custom_hooks` with content and mode.
fn hooks(dir: &Path) -> Vec<(String, Vec<u8>, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("custom_hooks")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e.expect("entry");
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let mode = e.metadata().expect("meta").permissions().mode() & 0o7777;
                let rel = p
                    .strip_prefix(dir)
                    .expect("inside")
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&p).expect("read"), mode));
            }
        }
    }
    out.sort();
    out
}

async fn assert_mirrors(source: &TestNode, target: &TestNode, rel: &str) {
    let (s, t) = (source.path(rel), target.path(rel));
    assert_eq!(
        source.checksum(rel).await,
        target.checksum(rel).await,
        "checksums differ"
    );
    assert_eq!(
        git(
            &s,
            &["for-each-ref", "--format=%(objectname) %(refname)"],
            b""
        )
        .await,
        git(
            &t,
            &["for-each-ref", "--format=%(objectname) %(refname)"],
            b""
        )
        .await
    );
    assert_eq!(
        git(&s, &["symbolic-ref", "HEAD"], b"").await,
        git(&t, &["symbolic-ref", "HEAD"], b"").await
    );
    assert_eq!(
        std::fs::read(s.join("config")).expect("config"),
        std::fs::read(t.join("config")).expect("config")
    );
    assert_eq!(
        std::fs::read(s.join("info/attributes")).ok(),
        std::fs::read(t.join("info/attributes")).ok()
    );
    assert_eq!(hooks(&s), hooks(&t));
    git(&t, &["fsck", "--no-progress"], b"").await;
}

fn write_file(path: &Path, content: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_repository_mirrors_refs_head_config_attributes_and_hooks() {
    let source = start("gitaly-1", Some(TOKEN), false).await;
    let target = start("gitaly-2", Some(TOKEN), false).await;
    let rel = "group/project.git";
    source.create(rel).await;
    let dir = source.path(rel);
    let c1 = commit(&dir, "one", &[]).await;
    let c2 = commit(&dir, "two", &[&c1]).await;
    update_ref(&source, rel, "refs/heads/main", "", &c2)
        .await
        .expect("main");
    update_ref(&source, rel, "refs/heads/feature", "", &c1)
        .await
        .expect("feature");
    update_ref(&source, rel, "refs/tags/v1", "", &c1)
        .await
        .expect("tag");
    update_ref(&source, rel, &format!("refs/keep-around/{c1}"), "", &c1)
        .await
        .expect("keep-around");
    git(&dir, &["config", "gitcluster.marker", "from-source"], b"").await;
    write_file(&dir.join("info/attributes"), "*.bin binary\n", 0o644);
    write_file(
        &dir.join("custom_hooks/pre-receive"),
        "#!/bin/sh\nexit 0\n",
        0o755,
    );
    write_file(
        &dir.join("custom_hooks/post-receive.d/notify"),
        "#!/bin/sh\n",
        0o700,
    );

    // First replication creates the target.
    replicate(&target, &source, rel)
        .await
        .expect("first replication");
    assert_mirrors(&source, &target, rel).await;

    // Force update (not a fast-forward), a deleted branch, a HEAD change, attributes
    // removed and a hook removed on the source.
    let c3 = commit(&dir, "unrelated", &[]).await;
    update_ref(&source, rel, "refs/heads/main", &c2, &c3)
        .await
        .expect("force main");
    update_ref(&source, rel, "refs/heads/feature", &c1, ZERO_OID)
        .await
        .expect("delete feature");
    update_ref(&source, rel, "refs/heads/other", ZERO_OID, &c2)
        .await
        .expect("other");
    source
        .refs()
        .await
        .set_default_branch(v1::SetDefaultBranchRequest {
            repository: Some(source.repo(rel)),
            name: "refs/heads/other".into(),
        })
        .await
        .expect("set HEAD");
    std::fs::remove_file(dir.join("info/attributes")).expect("rm attributes");
    std::fs::remove_file(dir.join("custom_hooks/pre-receive")).expect("rm hook");
    git(&dir, &["config", "gitcluster.marker", "changed"], b"").await;
    assert_ne!(source.checksum(rel).await, target.checksum(rel).await);

    replicate(&target, &source, rel)
        .await
        .expect("second replication");
    assert_mirrors(&source, &target, rel).await;
    assert!(!target.path(rel).join("info/attributes").exists());
    assert_eq!(
        git(&target.path(rel), &["rev-parse", "refs/heads/main"], b"").await,
        c3
    );

    // All hooks removed on the source: the target loses its custom_hooks too.
    std::fs::remove_dir_all(dir.join("custom_hooks")).expect("rm hooks");
    replicate(&target, &source, rel)
        .await
        .expect("third replication");
    assert_mirrors(&source, &target, rel).await;
    assert!(!target.path(rel).join("custom_hooks").exists());

    source.stop().await;
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicating_an_empty_repository_and_refusals() {
    let source = start("gitaly-1", Some(TOKEN), false).await;
    let target = start("gitaly-2", Some(TOKEN), false).await;
    source.create("empty.git").await;
    replicate(&target, &source, "empty.git")
        .await
        .expect("empty replication");
    assert_mirrors(&source, &target, "empty.git").await;

    // An empty directory left at the target path does not block replication.
    source.create("leftover.git").await;
    std::fs::create_dir_all(target.path("leftover.git")).expect("mkdir leftover");
    replicate(&target, &source, "leftover.git")
        .await
        .expect("replicate over empty dir");
    assert_mirrors(&source, &target, "leftover.git").await;

    let missing = replicate(&target, &source, "missing.git")
        .await
        .expect_err("missing source");
    assert_eq!(missing.code(), Code::FailedPrecondition);
    assert!(!target.path("missing.git").exists());

    let same = replicate(&source, &source, "empty.git")
        .await
        .expect_err("onto itself");
    assert_eq!(same.code(), Code::InvalidArgument);

    // A sha256 repository keeps its object format.
    source
        .repos()
        .await
        .create_repository(v1::CreateRepositoryRequest {
            repository: Some(source.repo("sha256.git")),
            default_branch: String::new(),
            object_format: v1::ObjectFormat::Sha256 as i32,
        })
        .await
        .expect("create sha256");
    let s = source.path("sha256.git");
    let c = commit(&s, "one", &[]).await;
    git(&s, &["update-ref", "refs/heads/main", &c], b"").await;
    replicate(&target, &source, "sha256.git")
        .await
        .expect("sha256 replication");
    assert_mirrors(&source, &target, "sha256.git").await;
    source.stop().await;
    target.stop().await;
}

/// Replications onto one target never overlap: a second one waits for the first and
/// then brings the target to the source's newest state. (Without that, two copies
/// raced over the temp-dir rename, the ref locks and HEAD/config, and an older copy
/// could finish last over a newer one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replications_onto_one_target_both_succeed_and_mirror() {
    let source = start("gitaly-1", Some(TOKEN), false).await;
    let target = start("gitaly-2", Some(TOKEN), false).await;
    for round in 0..3 {
        let rel = format!("race-{round}.git");
        source.create(&rel).await;
        let dir = source.path(&rel);
        let mut parent: Option<String> = None;
        for i in 0..3 {
            let parents: Vec<&str> = parent.iter().map(String::as_str).collect();
            let c = commit(&dir, &format!("c{i}"), &parents).await;
            update_ref(&source, &rel, &format!("refs/heads/b{i}"), "", &c)
                .await
                .expect("branch");
            parent = Some(c);
        }
        // Fresh target first (both build a temp copy), then an existing one (both
        // fetch in place).
        for pass in ["fresh", "existing"] {
            let calls: Vec<_> = (0..3).map(|_| replicate(&target, &source, &rel)).collect();
            for (i, outcome) in futures::future::join_all(calls)
                .await
                .into_iter()
                .enumerate()
            {
                outcome.unwrap_or_else(|s| panic!("{rel} {pass} call {i}: {s:?}"));
            }
            assert_mirrors(&source, &target, &rel).await;
        }
    }
    source.stop().await;
    target.stop().await;
}
