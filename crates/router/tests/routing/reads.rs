//! Read routing: the fast and general paths agree, reads spread over up-to-date
//! replicas only, primary-only reads, and reads across a killed or restarted node.

use gitcluster_integration_tests::{eventually, metric_sum};
use gitcluster_proto::auth::BearerToken;
use gitcluster_proto::v1::object_service_client::ObjectServiceClient;
use gitcluster_proto::v1::{FindCommitRequest, ListRefsRequest};
use tonic::Code;

use crate::support::{
    Options, STORAGES, Seeded, TestRouter, cluster, create, create_with_main, db, read,
    reads_avoid_gitaly_2, reads_on, record, repo, set_default_branch,
};

/// Uncompressed unary and server-streaming reads take the router's fast path (raw
/// HTTP/2 relay); the same requests gzip-compressed take the general path (tonic's
/// codec). Both must give identical answers, errors included, and both are counted.
#[tokio::test]
async fn fast_and_general_read_paths_give_the_same_answers() {
    let cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    let Seeded { primary, oid, .. } = create_with_main(&cluster, &router, "f.git").await;

    let token = BearerToken::new(Some(&router.external_token)).expect("token");
    let objects = ObjectServiceClient::with_interceptor(router.channel().await, token.clone());
    let gzip = tonic::codec::CompressionEncoding::Gzip;
    let mut answers = Vec::new();
    for mut refs in [
        router.ref_client().await,
        router.ref_client().await.send_compressed(gzip),
    ] {
        let mut objects = objects.clone();
        if answers.len() == 1 {
            objects = objects.send_compressed(gzip);
        }
        let mut stream = refs
            .list_refs(ListRefsRequest {
                repository: Some(repo("f.git")),
                patterns: vec![],
                head: true,
            })
            .await
            .expect("list refs")
            .into_inner();
        let mut listed = Vec::new();
        while let Some(message) = stream.message().await.expect("ref stream") {
            listed.push(format!("{message:?}"));
        }
        let commit = objects
            .find_commit(FindCommitRequest {
                repository: Some(repo("f.git")),
                revision: "main".into(),
            })
            .await
            .expect("find commit")
            .into_inner();
        assert_eq!(commit.id, oid);
        let missing = objects
            .find_commit(FindCommitRequest {
                repository: Some(repo("f.git")),
                revision: "no-such-revision".into(),
            })
            .await
            .expect_err("unknown revision");
        answers.push((
            listed,
            format!("{commit:?}"),
            missing.code(),
            missing.message().to_owned(),
        ));
    }
    assert!(
        answers[0].0.iter().any(|r| r.contains(&oid)),
        "{:?}",
        answers[0]
    );
    assert_eq!(answers[0], answers[1], "fast path vs general path");

    let metrics = router.metrics().await;
    let count = |method: &str, code: &str| {
        metric_sum(
            &metrics,
            "gitcluster_router_requests_total",
            &[("method", method), ("code", code)],
        )
    };
    let missing_code = format!("{:?}", answers[0].2);
    assert_eq!(
        count("/gitcluster.v1.RefService/ListRefs", "Ok"),
        2.0,
        "{metrics}"
    );
    assert_eq!(count("/gitcluster.v1.ObjectService/FindCommit", "Ok"), 2.0);
    assert_eq!(
        count("/gitcluster.v1.ObjectService/FindCommit", &missing_code),
        2.0
    );
    // Every read went to the only up-to-date replica, the primary.
    assert_eq!(reads_on(&metrics, &primary), 6.0);
}

#[tokio::test]
async fn reads_spread_over_up_to_date_replicas_and_never_reach_an_outdated_one() {
    let cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    create(&router, "r.git").await;
    for _ in 0..60 {
        read(&router, "r.git", false).await.expect("read");
    }
    let metrics = router.metrics().await;
    for s in STORAGES {
        assert!(reads_on(&metrics, s) > 0.0, "no reads on {s}:\n{metrics}");
    }

    // gitaly-2 falls behind: the repository moves to generation 1 without it.
    let (id, _, _, _) = record(&cluster, "r.git").await.expect("record");
    let client = db(&cluster).await;
    client
        .batch_execute(&format!(
            "BEGIN; UPDATE repositories SET generation = 1 WHERE repository_id = {id}; \
             UPDATE storage_repositories SET generation = 1 \
             WHERE repository_id = {id} AND storage <> 'gitaly-2'; COMMIT;"
        ))
        .await
        .expect("make gitaly-2 outdated");
    // The NOTIFY reaches the router asynchronously: wait until reads avoid gitaly-2,
    // then every later read must.
    reads_avoid_gitaly_2(&router, "r.git", "the router heard gitaly-2 fell behind").await;
    let before = reads_on(&router.metrics().await, "gitaly-2");
    for _ in 0..40 {
        read(&router, "r.git", false).await.expect("read");
    }
    let metrics = router.metrics().await;
    assert_eq!(
        reads_on(&metrics, "gitaly-2"),
        before,
        "outdated replica served a read"
    );
}

#[tokio::test]
async fn primary_only_header_and_repository_size_go_to_the_primary() {
    let cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    create(&router, "p.git").await;
    let (_, _, primary, _) = record(&cluster, "p.git").await.expect("record");
    for _ in 0..20 {
        read(&router, "p.git", true).await.expect("read");
    }
    let metrics = router.metrics().await;
    assert_eq!(reads_on(&metrics, &primary), 20.0);
    for s in STORAGES.iter().filter(|s| **s != primary) {
        assert_eq!(reads_on(&metrics, s), 0.0, "{s}");
    }
    let size = router
        .repository_client()
        .await
        .repository_size(gitcluster_proto::v1::RepositorySizeRequest {
            repository: Some(repo("p.git")),
        })
        .await
        .expect("size");
    assert!(size.into_inner().size_bytes > 0);
    assert_eq!(reads_on(&router.metrics().await, &primary), 21.0);
}

#[tokio::test]
async fn reads_survive_a_killed_replica() {
    let mut cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    create(&router, "k.git").await;
    for _ in 0..10 {
        read(&router, "k.git", false).await.expect("read");
    }
    cluster.storages[1].member.kill();
    // Right after the kill the router still believes gitaly-2 healthy: the
    // transparent retry covers the reads that pick it.
    for i in 0..30 {
        read(&router, "k.git", false)
            .await
            .unwrap_or_else(|e| panic!("read {i} after kill: {e:?}"));
    }
    // Writes need the primary; if it was the killed node the router says so.
    let (_, _, primary, _) = record(&cluster, "k.git").await.expect("record");
    // A health round records its view in node_status after the router acts on it.
    eventually!("the router's health round finds gitaly-2 down", {
        let down: bool = db(&cluster)
            .await
            .query_one(
                "SELECT last_seen_active_at IS DISTINCT FROM last_contact_attempt_at \
                 FROM node_status WHERE observer = 'test-router' \
                 AND virtual_storage = 'default' AND storage = 'gitaly-2'",
                &[],
            )
            .await?
            .get(0);
        anyhow::ensure!(down, "gitaly-2 still answered the last probe");
        Ok(())
    });
    let write = set_default_branch(&router, "k.git", "refs/heads/main").await;
    if primary == "gitaly-2" {
        let err = write.expect_err("primary down");
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("is not healthy"), "{err:?}");
    } else {
        write.expect("write with a secondary down");
    }
}

/// The read lane holds one HTTP/2 connection per storage: after the node restarts,
/// that connection is dead, and reads must reach the node again on a fresh one.
#[tokio::test]
async fn reads_reach_a_restarted_replica_again() {
    let mut cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    create(&router, "rr.git").await;
    let (_, _, primary, _) = record(&cluster, "rr.git").await.expect("record");
    let index = STORAGES
        .iter()
        .position(|s| *s == primary)
        .expect("primary");
    for _ in 0..5 {
        read(&router, "rr.git", true)
            .await
            .expect("read before restart");
    }
    cluster.storages[index].member.restart().await;
    // A health probe may have seen the node down; once it is back, reads must flow.
    eventually!("primary-only read after restart", {
        read(&router, "rr.git", true)
            .await
            .map(drop)
            .map_err(|e| anyhow::anyhow!("{e:?}"))
    });
    let before = reads_on(&router.metrics().await, &primary);
    for i in 0..10 {
        read(&router, "rr.git", true)
            .await
            .unwrap_or_else(|e| panic!("read {i} after restart: {e:?}"));
    }
    assert_eq!(reads_on(&router.metrics().await, &primary), before + 10.0);
}
