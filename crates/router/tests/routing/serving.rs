//! The serving threads: connections are spread over them and drained on SIGTERM.

use gitcluster_integration_tests::{eventually, metric_sum};
use gitcluster_proto::v1::FindDefaultBranchRequest;

use crate::support::{Options, TestRouter, cluster, create, repo};

/// Client connections are handed to the serving threads in turn, each counted on its
/// thread while open; with clients still connected, SIGTERM drains and exits 0.
#[tokio::test]
async fn connections_spread_over_serving_threads_and_drain_on_sigterm() {
    const CONNECTIONS: &str = gitcluster_router::serve::CONNECTIONS_METRIC;
    let cluster = cluster().await;
    let mut router = TestRouter::start(
        &cluster,
        Options {
            serve_threads: Some(2),
            ..Options::default()
        },
    )
    .await;
    create(&router, "threads.git").await;
    let request = || FindDefaultBranchRequest {
        repository: Some(repo("threads.git")),
    };
    // Each client is its own connection.
    let mut first = router.ref_client().await;
    let mut second = router.ref_client().await;
    for client in [&mut first, &mut second] {
        client.find_default_branch(request()).await.expect("read");
    }
    // The creating client's connection has closed by now or soon will.
    eventually!("one open connection on each thread", {
        let m = router.metrics().await;
        let open = |t: &str| metric_sum(&m, CONNECTIONS, &[("thread", t)]);
        anyhow::ensure!(
            open("0") == 1.0 && open("1") == 1.0,
            "thread 0: {}, thread 1: {}",
            open("0"),
            open("1")
        );
        Ok(())
    });
    drop(second);
    eventually!("the closed connection is no longer counted", {
        let m = router.metrics().await;
        let total = metric_sum(&m, CONNECTIONS, &[]);
        anyhow::ensure!(total == 1.0, "{total} open");
        Ok(())
    });
    first
        .find_default_branch(request())
        .await
        .expect("read on the remaining connection");

    let status = router.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM:\n{}",
        router.log()
    );
    assert!(
        first.find_default_branch(request()).await.is_err(),
        "a stopped router answered"
    );
}
