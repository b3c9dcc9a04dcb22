//! The router against real storage nodes, Postgres and RabbitMQ: creation, writes
//! and their generation bump and jobs, read routing, deletion, rename, bad input.

mod support;

use std::time::Duration;

use gitcluster_integration_tests::bus::queue_depth;
use gitcluster_integration_tests::relay::Relay;
use gitcluster_integration_tests::{Cluster, eventually, metric_sum};
use gitcluster_proto::auth::BearerToken;
use gitcluster_proto::jobs::BusNames;
use gitcluster_proto::v1::object_service_client::ObjectServiceClient;
use gitcluster_proto::v1::update_references_request::Update;
use gitcluster_proto::v1::{
    CreateRepositoryRequest, FindCommitRequest, FindDefaultBranchRequest, ListRefsRequest,
    ListRepositoriesRequest, OptimizeRepositoryRequest, RemoveRepositoryRequest,
    RenameRepositoryRequest, RepositoryExistsRequest, SetDefaultBranchRequest,
    UpdateReferencesRequest,
};
use gitcluster_router::replica_path::ReplicaPath;
use support::{
    Options, TestRouter, cluster, create, db, generations, reads_on, record, replica_dir, repo,
    seed_commit,
};
use tonic::Code;

const STORAGES: [&str; 3] = ["gitaly-1", "gitaly-2", "gitaly-3"];

/// A repository created through the router whose `main` was then set through it.
struct Seeded {
    id: i64,
    replica_path: String,
    primary: String,
    primary_index: usize,
    /// The commit `main` points at.
    oid: String,
}

/// Creates `path`, writes a root commit into the primary's replica and points
/// `refs/heads/main` at it with UpdateReferences through the router (one write: the
/// primary goes to generation 1, the others stay at 0 until replicated).
/// Creates `path` through the router and writes a commit (no ref yet) straight into
/// its primary's replica.
async fn seeded(cluster: &Cluster, router: &TestRouter, path: &str) -> Seeded {
    create(router, path).await;
    let (id, replica_path, primary, _) = record(cluster, path).await.expect("record");
    let primary_index = STORAGES
        .iter()
        .position(|s| *s == primary)
        .expect("primary");
    let oid = seed_commit(&replica_dir(cluster, primary_index, &replica_path));
    Seeded {
        id,
        replica_path,
        primary,
        primary_index,
        oid,
    }
}

async fn create_with_main(cluster: &Cluster, router: &TestRouter, path: &str) -> Seeded {
    let seeded = seeded(cluster, router, path).await;
    let oid = seeded.oid.clone();
    router
        .ref_client()
        .await
        .update_references(UpdateReferencesRequest {
            repository: Some(repo(path)),
            updates: vec![Update {
                reference: "refs/heads/main".into(),
                old_oid: String::new(),
                new_oid: oid.clone(),
            }],
        })
        .await
        .expect("update references through the router");
    seeded
}

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
async fn create_makes_three_replicas_at_generation_zero_on_the_derived_path() {
    let cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    create(&router, "group/project.git").await;

    let (id, replica_path, primary, generation) =
        record(&cluster, "group/project.git").await.expect("record");
    assert_eq!(
        replica_path,
        ReplicaPath::derive(id, "group/project.git").as_str()
    );
    assert!(
        replica_path.starts_with("@cluster/repositories/"),
        "{replica_path}"
    );
    assert!(STORAGES.contains(&primary.as_str()), "{primary}");
    assert_eq!(generation, 0);
    let expected: Vec<(String, i64)> = STORAGES.iter().map(|s| (s.to_string(), 0)).collect();
    assert_eq!(generations(&cluster, id).await, expected);
    let assigned = db(&cluster)
        .await
        .query_one(
            "SELECT count(*) FROM repository_assignments WHERE repository_id = $1",
            &[&id],
        )
        .await
        .expect("count assignments")
        .get::<_, i64>(0);
    assert_eq!(assigned, 3);
    for i in 0..3 {
        assert!(
            replica_dir(&cluster, i, &replica_path)
                .join("HEAD")
                .exists(),
            "replica missing on storage {i}"
        );
    }
    // The health rounds are recorded under the router's observer name.
    let observed: i64 = db(&cluster)
        .await
        .query_one(
            "SELECT count(*) FROM node_status WHERE observer = 'test-router' \
             AND virtual_storage = 'default' AND last_seen_active_at IS NOT NULL",
            &[],
        )
        .await
        .expect("count node_status")
        .get(0);
    assert_eq!(observed, 3);
    // No job: every replica was created.
    let jobs = db(&cluster)
        .await
        .query_one("SELECT count(*) FROM replication_jobs", &[])
        .await
        .expect("count jobs")
        .get::<_, i64>(0);
    assert_eq!(jobs, 0);
    // A second create of the same path is refused.
    let err = router
        .repository_client()
        .await
        .create_repository(CreateRepositoryRequest {
            repository: Some(repo("group/project.git")),
            ..Default::default()
        })
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
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
    router
        .ref_client()
        .await
        .set_default_branch(SetDefaultBranchRequest {
            repository: Some(repo("w.git")),
            name: "refs/heads/other".into(),
        })
        .await
        .expect("second write");
    assert_eq!(record(&cluster, "w.git").await.expect("record").3, 2);
}

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

async fn read(
    router: &TestRouter,
    path: &str,
    primary_only: bool,
) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(FindDefaultBranchRequest {
        repository: Some(repo(path)),
    });
    if primary_only {
        request.metadata_mut().insert(
            "gitcluster-route-repository-accessor-policy",
            "primary-only".parse().expect("ascii"),
        );
    }
    router
        .ref_client()
        .await
        .find_default_branch(request)
        .await
        .map(|r| r.into_inner().name)
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
    // The NOTIFY reaches the router asynchronously; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
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

/// NOTIFY is only a hint: a change the router never heard of (triggers off for the
/// writing session) is picked up once its LISTEN connection is lost and re-made,
/// because every reconnect clears the metadata cache.
#[tokio::test]
async fn a_lost_listen_connection_rebuilds_the_cache_from_the_tables() {
    let cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    create(&router, "l.git").await;
    read(&router, "l.git", false)
        .await
        .expect("read fills the cache");
    let (id, _, _, _) = record(&cluster, "l.git").await.expect("record");
    let client = db(&cluster).await;
    // gitaly-2 falls behind without any notification reaching the router.
    client
        .batch_execute(&format!(
            "SET session_replication_role = replica; BEGIN; \
             UPDATE repositories SET generation = 1 WHERE repository_id = {id}; \
             UPDATE storage_repositories SET generation = 1 \
             WHERE repository_id = {id} AND storage <> 'gitaly-2'; COMMIT; \
             SET session_replication_role = DEFAULT;"
        ))
        .await
        .expect("silent change");
    // The stale cache still sends reads to gitaly-2 (30 uniform reads over three
    // replicas miss one of them with probability (2/3)^30, about 5e-6).
    let before = reads_on(&router.metrics().await, "gitaly-2");
    for _ in 0..30 {
        read(&router, "l.git", false).await.expect("read");
    }
    assert!(
        reads_on(&router.metrics().await, "gitaly-2") > before,
        "the change was not silent: the router already avoids gitaly-2"
    );

    let killed: Vec<bool> = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND datname = current_database()",
            &[&gitcluster_router::notifications::LISTENER_APPLICATION_NAME],
        )
        .await
        .expect("terminate the listener")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(killed, vec![true], "exactly one LISTEN connection");
    reads_avoid_gitaly_2(
        &router,
        "l.git",
        "reads avoid the outdated replica after the reconnect",
    )
    .await;
}

/// Waits until 30 reads in a row of `path` avoid gitaly-2 (30 uniform reads over
/// three replicas all miss one of them with probability (2/3)^30, about 5e-6).
async fn reads_avoid_gitaly_2(router: &TestRouter, path: &str, what: &str) {
    eventually!(what, {
        let before = reads_on(&router.metrics().await, "gitaly-2");
        for _ in 0..30 {
            read(router, path, false).await?;
        }
        let after = reads_on(&router.metrics().await, "gitaly-2");
        anyhow::ensure!(
            after == before,
            "gitaly-2 still served {} reads",
            after - before
        );
        Ok(())
    });
}

/// A LISTEN connection whose server went silent without closing the socket is
/// noticed by the heartbeat and replaced; notifications lost on it cannot keep a
/// stale cache alive.
#[tokio::test]
async fn a_silently_dead_listen_connection_is_replaced_and_the_cache_rebuilt() {
    let cluster = cluster().await;
    let test_db = cluster.db.as_ref().expect("database");
    let relay = Relay::start(&test_db.server_address());
    let router = TestRouter::start(
        &cluster,
        Options {
            database_url: Some(test_db.url_via(relay.addr)),
            ..Options::default()
        },
    )
    .await;
    create(&router, "h.git").await;
    read(&router, "h.git", false)
        .await
        .expect("read fills the cache");
    let client = db(&cluster).await;
    let listener_port = || async {
        client
            .query(
                "SELECT client_port FROM pg_stat_activity \
                 WHERE application_name = $1 AND datname = current_database()",
                &[&gitcluster_router::notifications::LISTENER_APPLICATION_NAME],
            )
            .await
            .expect("pg_stat_activity")
            .iter()
            .map(|r| r.get::<_, i32>(0))
            .collect::<Vec<_>>()
    };
    let ports = listener_port().await;
    assert_eq!(ports.len(), 1, "exactly one LISTEN connection: {ports:?}");
    let frozen = ports[0];
    assert!(
        relay.freeze(u16::try_from(frozen).expect("port")),
        "the LISTEN connection passes through the relay"
    );

    // gitaly-2 falls behind; the notification goes to the frozen connection.
    let (id, _, _, _) = record(&cluster, "h.git").await.expect("record");
    client
        .batch_execute(&format!(
            "BEGIN; \
             UPDATE repositories SET generation = 1 WHERE repository_id = {id}; \
             UPDATE storage_repositories SET generation = 1 \
             WHERE repository_id = {id} AND storage <> 'gitaly-2'; COMMIT;"
        ))
        .await
        .expect("change");

    eventually!("a new LISTEN connection replaces the silent one", {
        let ports = listener_port().await;
        anyhow::ensure!(ports.iter().any(|p| *p != frozen), "still only {ports:?}");
        Ok(())
    });
    reads_avoid_gitaly_2(&router, "h.git", "reads avoid the outdated replica").await;
    assert!(
        router
            .log()
            .contains("LISTEN connection lost; reconnecting"),
        "the router says why it reconnected"
    );
}

/// The cache keeps entries only while the LISTEN connection listens: a change made
/// while it is down notifies nobody, so rows read meanwhile must not be kept.
#[tokio::test]
async fn metadata_is_cached_only_while_listening() {
    let cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    create(&router, "c.git").await;
    let url = &cluster.db.as_ref().expect("database").url;
    let cache = gitcluster_router::metadata::MetadataCache::new(
        gitcluster_router::db::pool(url).expect("pool"),
    );
    let get = || cache.get("default", "c.git");

    // Not listening yet (as after a lost connection): read through, keep nothing.
    assert!(get().await.expect("read").is_some());
    assert!(cache.is_empty(), "kept a row while not listening");

    cache.start_listening();
    let first = get().await.expect("read").expect("exists");
    assert_eq!(cache.len(), 1);
    assert_eq!(get().await.expect("read").expect("exists"), first);

    cache.stop_listening();
    assert!(cache.is_empty(), "a lost connection drops every entry");
    assert!(get().await.expect("read").is_some());
    assert!(cache.is_empty(), "kept a row after the connection was lost");
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
    tokio::time::sleep(Duration::from_millis(600)).await;
    let write = router
        .ref_client()
        .await
        .set_default_branch(SetDefaultBranchRequest {
            repository: Some(repo("k.git")),
            name: "refs/heads/main".into(),
        })
        .await;
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

#[tokio::test]
async fn concurrent_creates_of_one_path_leave_one_repository() {
    let cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    let mut a = router.repository_client().await;
    let mut b = router.repository_client().await;
    let req = || CreateRepositoryRequest {
        repository: Some(repo("race.git")),
        ..Default::default()
    };
    let (ra, rb) = tokio::join!(a.create_repository(req()), b.create_repository(req()));
    let mut codes = vec![
        ra.map_or_else(|e| e.code(), |_| Code::Ok),
        rb.map_or_else(|e| e.code(), |_| Code::Ok),
    ];
    codes.sort_by_key(|c| *c as i32);
    assert_eq!(codes, vec![Code::Ok, Code::AlreadyExists]);
    let client = db(&cluster).await;
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM repositories WHERE relative_path = 'race.git'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 1);
    let (id, replica_path, _, _) = record(&cluster, "race.git").await.expect("record");
    assert_eq!(generations(&cluster, id).await.len(), 3);
    // Only the winner's replicas remain on disk.
    for i in 0..3 {
        let parent = replica_dir(&cluster, i, &replica_path);
        let cluster_dir = parent
            .ancestors()
            .nth(3)
            .expect("@cluster/repositories")
            .to_path_buf();
        let mut found = Vec::new();
        for h0 in std::fs::read_dir(&cluster_dir).expect("read dir") {
            for h1 in std::fs::read_dir(h0.expect("entry").path()).expect("read dir") {
                for r in std::fs::read_dir(h1.expect("entry").path()).expect("read dir") {
                    found.push(r.expect("entry").path());
                }
            }
        }
        assert_eq!(found, vec![parent], "storage {i}");
    }
}

#[tokio::test]
async fn remove_deletes_metadata_then_replicas_and_recreate_gets_a_new_path() {
    let cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    create(&router, "d.git").await;
    let (id, replica_path, _, _) = record(&cluster, "d.git").await.expect("record");
    let mut client = router.repository_client().await;
    client
        .remove_repository(RemoveRepositoryRequest {
            repository: Some(repo("d.git")),
            only_if_empty: false,
        })
        .await
        .expect("remove");
    assert!(record(&cluster, "d.git").await.is_none());
    assert!(generations(&cluster, id).await.is_empty());
    for i in 0..3 {
        assert!(
            !replica_dir(&cluster, i, &replica_path).exists(),
            "storage {i}"
        );
    }
    let err = client
        .remove_repository(RemoveRepositoryRequest {
            repository: Some(repo("d.git")),
            only_if_empty: false,
        })
        .await
        .expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    let err = read(&router, "d.git", false).await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    let exists = client
        .repository_exists(RepositoryExistsRequest {
            repository: Some(repo("d.git")),
        })
        .await
        .expect("exists")
        .into_inner()
        .exists;
    assert!(!exists);

    create(&router, "d.git").await;
    let (id2, replica_path2, _, _) = record(&cluster, "d.git").await.expect("record");
    assert_ne!(id, id2);
    assert_ne!(replica_path, replica_path2);
    read(&router, "d.git", false).await.expect("read recreated");
}

#[tokio::test]
async fn rename_changes_metadata_only() {
    let cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    create(&router, "old/name.git").await;
    create(&router, "taken.git").await;
    let (id, replica_path, _, _) = record(&cluster, "old/name.git").await.expect("record");
    let mut client = router.repository_client().await;
    // Warm the cache under the old name.
    read(&router, "old/name.git", false).await.expect("read");
    client
        .rename_repository(RenameRepositoryRequest {
            repository: Some(repo("old/name.git")),
            relative_path: "new/name.git".into(),
        })
        .await
        .expect("rename");
    let (id2, replica_path2, _, _) = record(&cluster, "new/name.git").await.expect("record");
    assert_eq!((id, &replica_path), (id2, &replica_path2));
    for i in 0..3 {
        assert!(
            replica_dir(&cluster, i, &replica_path).exists(),
            "storage {i}"
        );
    }
    eventually!("old name gone from the cache", {
        match read(&router, "old/name.git", false).await {
            Err(e) if e.code() == Code::NotFound => Ok(()),
            other => anyhow::bail!("{other:?}"),
        }
    });
    read(&router, "new/name.git", false)
        .await
        .expect("read new name");
    let err = client
        .rename_repository(RenameRepositoryRequest {
            repository: Some(repo("new/name.git")),
            relative_path: "taken.git".into(),
        })
        .await
        .expect_err("taken");
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = client
        .rename_repository(RenameRepositoryRequest {
            repository: Some(repo("missing.git")),
            relative_path: "x.git".into(),
        })
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
}

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

#[tokio::test]
async fn exists_list_and_maintenance_are_served_without_a_write() {
    let cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    create(&router, "a/one.git").await;
    create(&router, "b/two.git").await;
    let mut client = router.repository_client().await;
    let mut list = client
        .list_repositories(ListRepositoriesRequest {
            storage_name: "default".into(),
        })
        .await
        .expect("list")
        .into_inner();
    let mut paths = Vec::new();
    while let Some(m) = list.message().await.expect("list message") {
        paths.extend(m.repositories.into_iter().map(|e| e.relative_path));
    }
    assert_eq!(paths, vec!["a/one.git", "b/two.git"]);
    client
        .optimize_repository(OptimizeRepositoryRequest {
            repository: Some(repo("a/one.git")),
        })
        .await
        .expect("optimize");
    let (id, _, _, generation) = record(&cluster, "a/one.git").await.expect("record");
    assert_eq!(generation, 0);
    let jobs: i64 = db(&cluster)
        .await
        .query_one(
            "SELECT count(*) FROM replication_jobs WHERE repository_id = $1",
            &[&id],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(jobs, 0);
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
    router
        .ref_client()
        .await
        .set_default_branch(SetDefaultBranchRequest {
            repository: Some(repo("nobus.git")),
            name: "refs/heads/other".into(),
        })
        .await
        .expect("write without a broker");
    let (id, _, _, generation) = record(&cluster, "nobus.git").await.expect("record");
    assert_eq!(generation, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
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
    router
        .ref_client()
        .await
        .set_default_branch(SetDefaultBranchRequest {
            repository: Some(repo("rebus.git")),
            name: "refs/heads/other".into(),
        })
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

#[tokio::test]
async fn topology_changes_apply_without_restart() {
    let cluster = cluster().await;
    let router = TestRouter::start(&cluster, Options::default()).await;
    let err = read(&router, "x.git", false).await.expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    db(&cluster)
        .await
        .batch_execute(&format!(
            "INSERT INTO virtual_storages (name) VALUES ('second'); \
             INSERT INTO storages (virtual_storage, storage, address) VALUES ('second', 'gitaly-1', '{}')",
            cluster.storages[0].address
        ))
        .await
        .expect("add virtual storage");
    eventually!("second virtual storage known", {
        let r = router
            .repository_client()
            .await
            .create_repository(CreateRepositoryRequest {
                repository: Some(gitcluster_proto::v1::Repository {
                    storage_name: "second".into(),
                    relative_path: "s.git".into(),
                }),
                ..Default::default()
            })
            .await;
        r.map(drop).map_err(|e| anyhow::anyhow!("{e:?}"))
    });
}
