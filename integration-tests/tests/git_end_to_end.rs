//! Real `git` clients against a gateway and storage nodes started from our binaries.

#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::path::Path;

use gitcluster_integration_tests::{Cluster, eventually, git, metric_sum};
use gitcluster_proto::v1::repository_service_client::RepositoryServiceClient;
use gitcluster_proto::v1::{
    CalculateChecksumRequest, ReplicateRepositoryRequest, RepositoryExistsRequest,
    SetDefaultBranchRequest,
};
use tonic::service::interceptor::InterceptedService;

type RepoClient = RepositoryServiceClient<
    InterceptedService<tonic::transport::Channel, gitcluster_proto::auth::BearerToken>,
>;

async fn repo_client(cluster: &Cluster, node: usize) -> RepoClient {
    cluster.repository_client(node).await
}

async fn checksum(cluster: &Cluster, node: usize, path: &str) -> String {
    repo_client(cluster, node)
        .await
        .calculate_checksum(CalculateChecksumRequest {
            repository: Some(cluster.repository(node, path)),
        })
        .await
        .expect("checksum")
        .into_inner()
        .checksum
}

/// A work tree with three branches, a lightweight and an annotated tag, and a
/// 12 MB incompressible file so the pushed pack is over 10 MB.
fn make_source(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    git::run(dir, &["init", "-q", "--initial-branch=main"]);
    std::fs::write(dir.join("README.md"), "hello\n").unwrap();
    git::commit_all(dir, "initial");
    git::write_random_file(&dir.join("big.bin"), 12 * 1024 * 1024);
    git::commit_all(dir, "add a big file");
    git::run(dir, &["tag", "v1.0"]);
    git::run(dir, &["tag", "-a", "v1.1", "-m", "annotated"]);
    git::run(dir, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(dir.join("feature.txt"), "feature\n").unwrap();
    git::commit_all(dir, "feature work");
    git::run(dir, &["checkout", "-q", "-b", "topic/nested", "main"]);
    std::fs::write(dir.join("topic.txt"), "topic\n").unwrap();
    git::commit_all(dir, "topic work");
    git::run(dir, &["checkout", "-q", "main"]);
}

fn push_all(dir: &Path, url: &str) {
    git::run(
        dir,
        &[
            "push",
            "-q",
            url,
            "refs/heads/*:refs/heads/*",
            "refs/tags/*:refs/tags/*",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_clone_v0_and_v2_round_trips_every_ref_and_checksum() {
    let cluster = Cluster::builder().storages(1).gateway().start().await;
    let work = cluster.dir().join("work");
    make_source(&work);
    let url = cluster.repo_url("group/project.git");

    // First push creates the repository (push-to-create is on by default).
    push_all(&work, &url);

    // More than 10 MB of pack data went through the gateway into the node.
    let gw = cluster.gateway.as_ref().unwrap().member.metrics_addr;
    let (_, metrics) = gitcluster_integration_tests::http_get(gw, "/metrics")
        .await
        .unwrap();
    let pushed = metric_sum(
        &metrics,
        "gitcluster_gateway_request_bytes_total",
        &[("direction", "in")],
    );
    assert!(
        pushed > 10.0 * 1024.0 * 1024.0,
        "only {pushed} bytes pushed"
    );
    let on_disk = cluster.storages[0].root.join("group/project.git");

    let source_refs = git::refs(&work);
    assert_eq!(
        git::refs(&on_disk),
        source_refs,
        "server refs equal the pushed refs"
    );

    for version in ["0", "2"] {
        let clone = cluster.dir().join(format!("clone-v{version}"));
        let proto = format!("protocol.version={version}");
        git::run(
            cluster.dir(),
            &[
                "-c",
                &proto,
                "clone",
                "-q",
                "--mirror",
                &url,
                clone.to_str().unwrap(),
            ],
        );
        git::run(&clone, &["fsck", "--full", "--strict"]);
        assert_eq!(
            git::refs(&clone),
            source_refs,
            "protocol v{version} clone has every ref"
        );
        assert_eq!(
            git::run(&clone, &["rev-parse", "main:big.bin"]),
            git::run(&work, &["rev-parse", "main:big.bin"])
        );
    }

    // A non-mirror clone checks out the default branch with the big file intact.
    let checkout = cluster.dir().join("checkout");
    git::run(
        cluster.dir(),
        &["clone", "-q", &url, checkout.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read(checkout.join("big.bin")).unwrap(),
        std::fs::read(work.join("big.bin")).unwrap()
    );

    let expected = git::checksum_from_show_ref(&on_disk);
    assert_ne!(expected, "0".repeat(40));
    assert_eq!(checksum(&cluster, 0, "group/project.git").await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_repository_checksum_is_forty_zeros() {
    let cluster = Cluster::builder().storages(1).start().await;
    let repo = cluster.repository(0, "empty.git");
    repo_client(&cluster, 0)
        .await
        .create_repository(gitcluster_proto::v1::CreateRepositoryRequest {
            repository: Some(repo),
            ..Default::default()
        })
        .await
        .expect("create");
    assert_eq!(checksum(&cluster, 0, "empty.git").await, "0".repeat(40));
}

/// Replicates node 1's repository to node 2 and checks they are now identical: refs,
/// checksum, HEAD, config, attributes and custom hooks.
async fn replicate_and_compare(cluster: &Cluster, path: &str) {
    repo_client(cluster, 1)
        .await
        .replicate_repository(ReplicateRepositoryRequest {
            repository: Some(cluster.repository(1, path)),
            source: Some(cluster.repository(0, path)),
            source_address: cluster.storages[0].address.clone(),
        })
        .await
        .expect("replicate");
    let src = cluster.storages[0].root.join(path);
    let dst = cluster.storages[1].root.join(path);
    assert_eq!(
        checksum(cluster, 1, path).await,
        checksum(cluster, 0, path).await
    );
    assert_eq!(
        git::checksum_from_show_ref(&dst),
        git::checksum_from_show_ref(&src)
    );
    let all_refs = |d: &Path| git::run(d, &["for-each-ref", "--format=%(objectname) %(refname)"]);
    assert_eq!(all_refs(&dst), all_refs(&src));
    assert_eq!(
        git::run(&dst, &["symbolic-ref", "HEAD"]),
        git::run(&src, &["symbolic-ref", "HEAD"])
    );
    for file in ["config", "info/attributes", "custom_hooks/pre-receive"] {
        assert_eq!(
            std::fs::read(dst.join(file)).ok(),
            std::fs::read(src.join(file)).ok(),
            "{file} replicated"
        );
    }
    git::run(&dst, &["fsck", "--full"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_repository_mirrors_source_through_force_push_deletions_and_head_change() {
    let cluster = Cluster::builder().storages(2).gateway().start().await;
    let path = "mirror/me.git";
    let work = cluster.dir().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git::run(&work, &["init", "-q", "--initial-branch=main"]);
    for i in 0..3 {
        std::fs::write(work.join("f.txt"), format!("{i}\n")).unwrap();
        git::commit_all(&work, &format!("commit {i}"));
    }
    git::run(&work, &["branch", "stable"]);
    git::run(&work, &["branch", "doomed"]);
    git::run(&work, &["tag", "-a", "v1", "-m", "v1"]);
    git::run(&work, &["tag", "old"]);
    let url = cluster.repo_url(path);
    push_all(&work, &url);

    // Files that `git fetch` does not carry.
    let src = cluster.storages[0].root.join(path);
    std::fs::create_dir_all(src.join("info")).unwrap();
    std::fs::write(src.join("info/attributes"), "*.bin binary\n").unwrap();
    std::fs::create_dir_all(src.join("custom_hooks")).unwrap();
    std::fs::write(src.join("custom_hooks/pre-receive"), "#!/bin/sh\nexit 0\n").unwrap();
    git::run(&src, &["config", "gitcluster.test", "first"]);

    // First replication creates the target.
    replicate_and_compare(&cluster, path).await;

    // Rewrite history, delete a branch and a tag, move HEAD, change config and hooks.
    git::run(&work, &["reset", "-q", "--hard", "HEAD~2"]);
    std::fs::write(work.join("g.txt"), "rewritten\n").unwrap();
    git::commit_all(&work, "rewritten history");
    git::run(&work, &["push", "-q", "--force", &url, "main:main"]);
    git::run(
        &work,
        &["push", "-q", &url, ":refs/heads/doomed", ":refs/tags/old"],
    );
    gitcluster_proto::v1::ref_service_client::RefServiceClient::with_interceptor(
        cluster.channel(0).await,
        cluster.auth(),
    )
    .set_default_branch(SetDefaultBranchRequest {
        repository: Some(cluster.repository(0, path)),
        name: "refs/heads/stable".into(),
    })
    .await
    .expect("set default branch");
    git::run(&src, &["config", "gitcluster.test", "second"]);
    std::fs::remove_file(src.join("info/attributes")).unwrap();
    std::fs::write(src.join("custom_hooks/pre-receive"), "#!/bin/sh\nexit 1\n").unwrap();

    let before = checksum(&cluster, 1, path).await;
    replicate_and_compare(&cluster, path).await;
    assert_ne!(checksum(&cluster, 1, path).await, before, "target changed");
    let dst = cluster.storages[1].root.join(path);
    assert!(
        git::run_output(&dst, &["rev-parse", "--verify", "refs/heads/doomed"])
            .status
            .code()
            != Some(0)
    );
    assert_eq!(
        git::run(&dst, &["symbolic-ref", "HEAD"]),
        "refs/heads/stable"
    );
    assert_eq!(git::run(&dst, &["config", "gitcluster.test"]), "second");

    // Replicating an unchanged source is a no-op that still succeeds.
    replicate_and_compare(&cluster, path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_create_can_be_turned_off() {
    let cluster = Cluster::builder()
        .storages(1)
        .gateway()
        .no_push_to_create()
        .start()
        .await;
    let work = cluster.dir().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git::run(&work, &["init", "-q", "--initial-branch=main"]);
    git::commit_all(&work, "one");
    let url = cluster.repo_url("nope.git");
    let out = git::run_output(&work, &["push", "-q", &url, "main"]);
    assert!(
        !out.status.success(),
        "push to a missing repository must fail"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not found"), "{stderr}");

    // The CLI creates it; now the push works.
    let cli = gitcluster_integration_tests::binary("gitcluster");
    let out = std::process::Command::new(cli)
        .args([
            "create-repository",
            "--address",
            &cluster.storages[0].address,
            "--virtual-storage",
            &cluster.storages[0].storage,
            "--relative-path",
            "nope.git",
        ])
        .env("GITCLUSTER_TOKEN", &cluster.token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "create-repository: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    git::run(&work, &["push", "-q", &url, "main"]);
    let exists = repo_client(&cluster, 0)
        .await
        .repository_exists(RepositoryExistsRequest {
            repository: Some(cluster.repository(0, "nope.git")),
        })
        .await
        .unwrap()
        .into_inner()
        .exists;
    assert!(exists);
    eventually!("clone works", {
        let dest = cluster.dir().join(format!("c-{}", rand::random::<u32>()));
        let out = git::run_output(
            cluster.dir(),
            &["clone", "-q", &url, dest.to_str().unwrap()],
        );
        anyhow::ensure!(out.status.success(), "clone failed");
        Ok(())
    });
}
