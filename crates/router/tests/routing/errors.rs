//! Bad input gets precise codes: oversized requests on both paths, unknown storages
//! and repositories, missing or wrong tokens, internal RPCs.

use gitcluster_integration_tests::metric_sum;
use gitcluster_proto::v1::{FindDefaultBranchRequest, RepositoryExistsRequest};
use tonic::Code;

use crate::support::{Options, TestRouter, cluster, create, read, repo};

/// A request message over the 64 MiB limit is refused with tonic's codes on both
/// paths with ResourceExhausted — uncompressed (the fast path's own limit) and when it
/// only exceeds the limit once inflated (tonic's decoder on the general path) — and
/// the router keeps serving.
#[tokio::test]
async fn oversized_requests_are_refused_on_both_paths() {
    let cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    create(&router, "big.git").await;
    let oversized = || FindDefaultBranchRequest {
        repository: Some(gitcluster_proto::v1::Repository {
            storage_name: "default".into(),
            relative_path: "a".repeat(gitcluster_proto::MAX_MESSAGE_BYTES + 1),
        }),
    };
    let err = router
        .ref_client()
        .await
        .find_default_branch(oversized())
        .await
        .expect_err("uncompressed oversized request");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("larger than"), "{err:?}");
    let err = router
        .ref_client()
        .await
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .find_default_branch(oversized())
        .await
        .expect_err("compressed oversized request");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("size limit"), "{err:?}");
    read(&router, "big.git", false)
        .await
        .expect("a normal read afterwards");
}

#[tokio::test]
async fn bad_requests_get_precise_codes() {
    let cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    create(&router, "b.git").await;
    let exists = |token: Option<String>, repository| {
        let router = &router;
        async move {
            router
                .repository_client_with(token.as_deref())
                .await
                .repository_exists(RepositoryExistsRequest { repository })
                .await
        }
    };
    let good = Some(cluster.external_token.clone());
    let err = exists(
        good.clone(),
        Some(gitcluster_proto::v1::Repository {
            storage_name: "nope".into(),
            relative_path: "b.git".into(),
        }),
    )
    .await
    .expect_err("unknown virtual storage");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "virtual storage \"nope\" is not configured");
    let err = exists(good.clone(), None).await.expect_err("no repository");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = exists(None, Some(repo("b.git")))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = exists(Some("wrong".into()), Some(repo("b.git")))
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), Code::PermissionDenied);
    // The internal token is just a wrong external token.
    let err = exists(Some(cluster.token.clone()), Some(repo("b.git")))
        .await
        .expect_err("internal token");
    assert_eq!(err.code(), Code::PermissionDenied);
    // Unknown repository.
    let err = read(&router, "missing.git", false)
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    // Internal RPCs are not served.
    let err = router
        .repository_client()
        .await
        .replicate_repository(gitcluster_proto::v1::ReplicateRepositoryRequest {
            repository: Some(repo("b.git")),
            source: Some(repo("b.git")),
            source_address: "http://127.0.0.1:1".into(),
        })
        .await
        .expect_err("internal");
    assert_eq!(err.code(), Code::PermissionDenied);
    // Health is unauthenticated.
    let mut health = tonic_health::pb::health_client::HealthClient::new(router.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health without a token");
    let metrics = router.metrics().await;
    assert!(
        metric_sum(
            &metrics,
            "gitcluster_router_requests_total",
            &[("code", "PermissionDenied")]
        ) >= 3.0,
        "{metrics}"
    );
    // And the router still answers properly.
    assert!(
        exists(good, Some(repo("b.git")))
            .await
            .expect("exists")
            .into_inner()
            .exists
    );
}
