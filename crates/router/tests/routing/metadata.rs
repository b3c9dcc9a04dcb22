//! What the router knows of the database follows the tables: the metadata cache and
//! its LISTEN connection (lost, silently dead, not yet listening) and the topology.

use gitcluster_integration_tests::eventually;
use gitcluster_integration_tests::relay::Relay;
use gitcluster_proto::v1::CreateRepositoryRequest;
use tonic::Code;

use crate::support::{
    Options, TestRouter, cluster, create, db, read, reads_avoid_gitaly_2, reads_on, record,
};

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
