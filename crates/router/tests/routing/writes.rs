//! Writes through the router: the primary's generation bump and one job per other
//! replica, a record retried until the database takes it (also across SIGTERM), and
//! jobs with the job bus down or reconnected.

use gitcluster_integration_tests::bus::queue_depth;
use gitcluster_integration_tests::{Cluster, eventually, metric_sum};
use gitcluster_proto::jobs::BusNames;
use gitcluster_proto::v1::UpdateReferencesRequest;
use gitcluster_proto::v1::update_references_request::Update;

use crate::support::{
    Options, STORAGES, Seeded, TestRouter, cluster, create, create_with_main, db, generations,
    record, replica_dir, repo, seeded, set_default_branch,
};

/// Starts setting `main` of `path` to `oid` through the router while every
/// generation bump fails (until the test deletes the row of `fail_bump`), and returns
/// once the router has begun retrying the record.
async fn write_failing_to_record(
    router: &TestRouter,
    client: &tokio_postgres::Client,
    path: &str,
    oid: String,
) -> tokio::task::JoinHandle<
    Result<tonic::Response<gitcluster_proto::v1::UpdateReferencesResponse>, tonic::Status>,
> {
    client
        .batch_execute(
            "CREATE TABLE fail_bump (armed boolean); \
             CREATE FUNCTION fail_bump() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF EXISTS (SELECT FROM fail_bump) THEN RAISE EXCEPTION 'injected failure'; \
             END IF; RETURN NEW; END $$; \
             CREATE TRIGGER fail_bump BEFORE UPDATE OF generation ON repositories \
             FOR EACH ROW EXECUTE FUNCTION fail_bump(); \
             INSERT INTO fail_bump VALUES (true);",
        )
        .await
        .expect("arm the failure");
    let mut refs = router.ref_client().await;
    let request = UpdateReferencesRequest {
        repository: Some(repo(path)),
        updates: vec![Update {
            reference: "refs/heads/main".into(),
            old_oid: String::new(),
            new_oid: oid,
        }],
    };
    let write = tokio::spawn(async move { refs.update_references(request).await });
    eventually!("the router retries recording the write", {
        anyhow::ensure!(
            router.log().contains("cannot record a write yet; retrying"),
            "no retry yet"
        );
        Ok(())
    });
    write
}

/// A database failure while the router records a write the primary applied is
/// retried: the client gets OK only once the generation and the jobs are recorded.
#[tokio::test]
async fn a_write_is_recorded_even_when_the_database_fails_at_first() {
    let cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    let Seeded {
        id, primary, oid, ..
    } = seeded(&cluster, &router, "f.git").await;
    let client = db(&cluster).await;
    let write = write_failing_to_record(&router, &client, "f.git", oid).await;
    assert!(
        !write.is_finished(),
        "the client has no answer before the record"
    );
    client
        .batch_execute("DELETE FROM fail_bump")
        .await
        .expect("disarm");
    write
        .await
        .expect("join")
        .expect("the write succeeds once recorded");
    assert_write_recorded(&cluster, "f.git", id, &primary).await;
}

/// The one write on `path` is recorded: generation 1 on the primary only, one job
/// per other replica.
async fn assert_write_recorded(cluster: &Cluster, path: &str, id: i64, primary: &str) {
    let (_, _, _, generation) = record(cluster, path).await.expect("record");
    assert_eq!(generation, 1, "the write is recorded");
    for (storage, g) in generations(cluster, id).await {
        assert_eq!(g, i64::from(storage == primary), "{storage}");
    }
    let jobs: i64 = db(cluster)
        .await
        .query_one(
            "SELECT count(*) FROM replication_jobs WHERE repository_id = $1",
            &[&id],
        )
        .await
        .expect("jobs")
        .get(0);
    assert_eq!(jobs, 2, "one job per other replica");
}

/// SIGTERM while the record of a write is still being retried and its client has
/// gone: the router finishes recording before it exits, so the replicas will follow
/// the write the primary applied.
#[tokio::test]
async fn a_write_whose_client_has_gone_is_still_recorded_across_sigterm() {
    let cluster = cluster().await;
    let mut router = TestRouter::start(&cluster, Options::default()).await;
    let Seeded {
        id, primary, oid, ..
    } = seeded(&cluster, &router, "g.git").await;
    let client = db(&cluster).await;
    let write = write_failing_to_record(&router, &client, "g.git", oid).await;
    // The client goes away (its connection closes), then the router is told to stop.
    write.abort();
    let _ = write.await;
    router.sigterm();
    eventually!("the router waits for the write's record", {
        anyhow::ensure!(
            router
                .log()
                .contains("waiting for calls whose clients have gone to finish"),
            "not waiting"
        );
        Ok(())
    });
    client
        .batch_execute("DELETE FROM fail_bump")
        .await
        .expect("disarm");
    assert!(router.exit_status().await.success());
    assert_write_recorded(&cluster, "g.git", id, &primary).await;
}

#[tokio::test]
async fn update_references_bumps_the_primary_and_publishes_one_job_per_other_replica() {
    let cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    let Seeded {
        id,
        replica_path,
        primary,
        primary_index,
        oid,
    } = create_with_main(&cluster, &router, "w.git").await;

    // The ref landed on the primary's replica.
    let refs = gitcluster_integration_tests::git::refs(&replica_dir(
        &cluster,
        primary_index,
        &replica_path,
    ));
    assert!(refs.contains(&oid), "{refs}");
    // Generation rule: the primary is at 1, the others still at 0.
    let (_, _, _, generation) = record(&cluster, "w.git").await.expect("record");
    assert_eq!(generation, 1);
    for (storage, g) in generations(&cluster, id).await {
        assert_eq!(g, i64::from(storage == primary), "{storage}");
    }
    // One job per other assigned storage, confirmed by the broker.
    let names = BusNames::new(&cluster.bus_prefix);
    let jobs = eventually!("both jobs published", {
        let rows = db(&cluster)
            .await
            .query(
                "SELECT target_storage, source_storage, change, state::text, virtual_storage \
                 FROM replication_jobs WHERE repository_id = $1 ORDER BY target_storage",
                &[&id],
            )
            .await?;
        let jobs: Vec<(String, String, String, String, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect();
        anyhow::ensure!(
            jobs.len() == 2 && jobs.iter().all(|j| j.3 == "published"),
            "{jobs:?}"
        );
        Ok(jobs)
    });
    let targets: Vec<&str> = STORAGES.iter().copied().filter(|s| *s != primary).collect();
    for (job, target) in jobs.iter().zip(&targets) {
        assert_eq!(job.0, *target);
        assert_eq!(job.1, primary);
        assert_eq!(job.2, "update");
        assert_eq!(job.4, "default");
    }
    for target in &targets {
        let queue = names.replication_queue("default", target);
        eventually!("message in {queue}", {
            let depth = queue_depth(&queue).await?;
            anyhow::ensure!(depth == 1, "depth {depth}");
            Ok(())
        });
    }
    let metrics = router.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "gitcluster_router_replication_jobs_published_total",
            &[("outcome", "ok")]
        ),
        2.0
    );

    // The primary is up to date, so a second write goes through too.
    set_default_branch(&router, "w.git", "refs/heads/other")
        .await
        .expect("second write");
    assert_eq!(record(&cluster, "w.git").await.expect("record").3, 2);
}

#[tokio::test]
async fn writes_succeed_with_the_bus_down_and_jobs_stay_pending() {
    let cluster = cluster().await;
    let closed = gitcluster_integration_tests::free_port();
    let router = TestRouter::start(
        &cluster,
        Options {
            amqp_url: format!("amqp://guest:guest@127.0.0.1:{closed}/%2f"),
            ..Options::default()
        },
    )
    .await;
    create(&router, "nobus.git").await;
    set_default_branch(&router, "nobus.git", "refs/heads/other")
        .await
        .expect("write without a broker");
    let (id, _, _, generation) = record(&cluster, "nobus.git").await.expect("record");
    assert_eq!(generation, 1);
    // Polling cannot show that the jobs are never published; the router's publish
    // task counts them `unavailable` once it has given up on them, and nothing else
    // (no reconciler runs here) would publish them afterwards.
    eventually!("the publish task finds no bus", {
        let m = router.metrics().await;
        let unavailable = metric_sum(
            &m,
            "gitcluster_router_replication_jobs_published_total",
            &[("outcome", "unavailable")],
        );
        anyhow::ensure!(unavailable == 2.0, "{unavailable} jobs counted unavailable");
        Ok(())
    });
    let states: Vec<String> = db(&cluster)
        .await
        .query(
            "SELECT state::text FROM replication_jobs WHERE repository_id = $1",
            &[&id],
        )
        .await
        .expect("jobs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(states, vec!["pending", "pending"]);
}

/// The broker closes the router's publishing connection: the router reconnects (its
/// connection is named after it in the broker UI) and later writes publish their jobs.
#[tokio::test]
async fn the_job_bus_connection_is_reopened_after_the_broker_closes_it() {
    use gitcluster_integration_tests::bus::{close_connection, connections_labelled};
    let cluster = cluster().await;
    let name = format!("test-router-{}", cluster.bus_prefix);
    let mut router = TestRouter::start(
        &cluster,
        Options {
            name: Some(name.clone()),
            ..Options::default()
        },
    )
    .await;
    router.expect_error("CONNECTION_FORCED - closed by a gitcluster test");
    let label = format!("gitcluster-router {name}@");
    // The management API lists a connection once the broker's statistics include it.
    let before = eventually!("the publishing connection listed", {
        let names = connections_labelled(&label).await?;
        anyhow::ensure!(names.len() == 1, "connections {names:?}");
        Ok(names)
    });
    close_connection(&before[0]).await.expect("close it");
    eventually!("a new publishing connection", {
        let now = connections_labelled(&label).await?;
        anyhow::ensure!(now.len() == 1 && now != before, "connections {now:?}");
        let m = router.metrics().await;
        anyhow::ensure!(
            metric_sum(&m, "gitcluster_router_bus_connected", &[]) == 1.0,
            "not connected"
        );
        Ok(())
    });

    create(&router, "rebus.git").await;
    set_default_branch(&router, "rebus.git", "refs/heads/other")
        .await
        .expect("write after the reconnect");
    let (id, _, _, _) = record(&cluster, "rebus.git").await.expect("record");
    eventually!("both jobs published", {
        let states: Vec<String> = db(&cluster)
            .await
            .query(
                "SELECT state::text FROM replication_jobs WHERE repository_id = $1",
                &[&id],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        anyhow::ensure!(states == ["published", "published"], "states {states:?}");
        Ok(())
    });
    assert!(
        router
            .log()
            .contains("job bus connection lost; reconnecting"),
        "the loss is logged"
    );
}
