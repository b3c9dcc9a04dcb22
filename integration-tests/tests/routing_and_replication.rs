//! Whole clusters: gateway → router → 3 storage nodes, replicator on the RabbitMQ bus,
//! all from our binaries against real Postgres, RabbitMQ and git.

#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use gitcluster_integration_tests::{Cluster, bus, eventually, git, http_get, metric_sum};
use gitcluster_proto::jobs::BusNames;
use gitcluster_proto::v1::ref_service_client::RefServiceClient;
use gitcluster_proto::v1::repository_service_client::RepositoryServiceClient;
use gitcluster_proto::v1::{
    CalculateChecksumRequest, CreateRepositoryRequest, FindDefaultBranchRequest,
    RemoveRepositoryRequest, RenameRepositoryRequest, Repository, RepositoryExistsRequest,
};
use tonic::Code;

/// `(repository_id, replica_path, generation)` of a repository, by relative path.
async fn repository_row(cluster: &Cluster, path: &str) -> Option<(i64, String, i64)> {
    let r = cluster.repository_record(path).await?;
    Some((r.id, r.replica_path, r.generation))
}

async fn node_checksum(
    cluster: &Cluster,
    node: usize,
    replica_path: &str,
) -> anyhow::Result<String> {
    let mut c = cluster.repository_client(node).await;
    Ok(c.calculate_checksum(CalculateChecksumRequest {
        repository: Some(cluster.repository(node, replica_path)),
    })
    .await?
    .into_inner()
    .checksum)
}

/// Waits until every storage holds the repository at its latest generation with equal checksums.
async fn wait_converged(cluster: &Cluster, path: &str) -> (i64, String) {
    eventually!(format!("{path} converges on every replica").as_str(), {
        let (id, replica_path, generation) = repository_row(cluster, path)
            .await
            .ok_or_else(|| anyhow::anyhow!("no metadata"))?;
        let gens = cluster.replica_generations(id).await;
        anyhow::ensure!(
            gens.len() == cluster.storages.len() && gens.iter().all(|(_, g)| *g == generation),
            "generation {generation}, replicas {gens:?}"
        );
        let mut sums = Vec::new();
        for i in 0..cluster.storages.len() {
            sums.push(node_checksum(cluster, i, &replica_path).await?);
        }
        anyhow::ensure!(
            sums.windows(2).all(|w| w[0] == w[1]),
            "checksums differ: {sums:?}"
        );
        Ok((id, replica_path))
    })
}

fn new_work_repo(cluster: &Cluster, name: &str) -> std::path::PathBuf {
    let work = cluster.dir().join(name);
    std::fs::create_dir_all(&work).unwrap();
    git::run(&work, &["init", "-q", "--initial-branch=main"]);
    std::fs::write(work.join("README.md"), format!("{name}\n")).unwrap();
    git::commit_all(&work, "initial");
    work
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_through_router_reaches_every_replica_and_reads_spread_and_survive_a_dead_node() {
    let mut cluster = Cluster::builder()
        .storages(3)
        .routers(1)
        .replicators(1)
        .gateway()
        .start()
        .await;
    let work = new_work_repo(&cluster, "work");
    git::write_random_file(&work.join("data.bin"), 256 * 1024);
    git::commit_all(&work, "data");
    git::run(&work, &["branch", "feature"]);
    let url = cluster.repo_url("group/project.git");
    git::run(&work, &["push", "-q", &url, "main", "feature"]);
    let (id, replica_path) = wait_converged(&cluster, "group/project.git").await;
    assert!(
        replica_path.starts_with("@cluster/repositories/"),
        "{replica_path}"
    );
    assert_eq!(
        git::refs(&cluster.storages[2].root.join(&replica_path)),
        git::refs(&work),
        "a secondary holds exactly the pushed refs"
    );

    // A second push bumps the generation again and converges again.
    std::fs::write(work.join("README.md"), "second\n").unwrap();
    git::commit_all(&work, "second");
    git::run(&work, &["push", "-q", &url, "main"]);
    wait_converged(&cluster, "group/project.git").await;
    let (_, _, generation) = repository_row(&cluster, "group/project.git").await.unwrap();
    assert!(
        generation >= 2,
        "two pushes recorded, generation {generation}"
    );

    // Reads are spread over all three up-to-date replicas.
    let mut refs = RefServiceClient::with_interceptor(
        cluster.router_channel(0).await,
        cluster.external_auth(),
    );
    for _ in 0..60 {
        refs.find_default_branch(FindDefaultBranchRequest {
            repository: Some(cluster.virtual_repository("group/project.git")),
        })
        .await
        .expect("read through router");
    }
    let (_, metrics) = http_get(cluster.routers[0].member.metrics_addr, "/metrics")
        .await
        .unwrap();
    for s in &cluster.storages {
        let n = metric_sum(
            &metrics,
            "gitcluster_router_read_distribution_total",
            &[("storage", s.storage.as_str())],
        );
        assert!(n > 0.0, "no reads served by {}:\n{metrics}", s.storage);
    }

    // One replica dies: reads and clones keep working.
    cluster.storages[1].member.kill();
    for i in 0..20 {
        refs.find_default_branch(FindDefaultBranchRequest {
            repository: Some(cluster.virtual_repository("group/project.git")),
        })
        .await
        .unwrap_or_else(|e| panic!("read {i} with a replica down: {e:?}"));
    }
    assert_eq!(
        git::clone_head(cluster.dir(), &url, "clone-after-kill"),
        git::run(&work, &["rev-parse", "HEAD"])
    );
    let _ = id;
    cluster.expect_error("gitaly-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_one_wins_recreate_gets_new_id_and_rename_moves_no_bytes() {
    let cluster = Cluster::builder()
        .storages(3)
        .routers(1)
        .replicators(1)
        .start()
        .await;
    let client = RepositoryServiceClient::with_interceptor(
        cluster.router_channel(0).await,
        cluster.external_auth(),
    );
    let create = |path: &str| {
        let mut c = client.clone();
        let repo = cluster.virtual_repository(path);
        async move {
            c.create_repository(CreateRepositoryRequest {
                repository: Some(repo),
                ..Default::default()
            })
            .await
        }
    };

    let (a, b) = tokio::join!(create("race.git"), create("race.git"));
    let codes: Vec<Code> = [&a, &b]
        .iter()
        .map(|r| r.as_ref().map_or_else(|e| e.code(), |_| Code::Ok))
        .collect();
    assert!(
        codes.contains(&Code::Ok) && codes.contains(&Code::AlreadyExists),
        "{codes:?}"
    );
    assert_eq!(
        cluster.repositories_at("race.git").await,
        1,
        "the loser leaves no metadata"
    );
    let (first_id, first_path, _) = repository_row(&cluster, "race.git").await.unwrap();

    // Delete, then re-create the same path: a different repository.
    client
        .clone()
        .remove_repository(RemoveRepositoryRequest {
            repository: Some(cluster.virtual_repository("race.git")),
            only_if_empty: false,
        })
        .await
        .expect("remove");
    let err = client
        .clone()
        .remove_repository(RemoveRepositoryRequest {
            repository: Some(cluster.virtual_repository("race.git")),
            only_if_empty: false,
        })
        .await
        .expect_err("second remove");
    assert_eq!(err.code(), Code::NotFound);
    create("race.git").await.expect("re-create");
    let (second_id, second_path, _) = repository_row(&cluster, "race.git").await.unwrap();
    assert_ne!(first_id, second_id);
    assert_ne!(first_path, second_path);
    eventually!("old replicas removed from disk", {
        for s in &cluster.storages {
            anyhow::ensure!(
                !s.root.join(&first_path).exists(),
                "{} still has {first_path}",
                s.storage
            );
        }
        Ok(())
    });

    // Rename: metadata only, the replica directory is untouched.
    let replica_dir = cluster.storages[0].root.join(&second_path);
    let inode_before =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&replica_dir).unwrap());
    client
        .clone()
        .rename_repository(RenameRepositoryRequest {
            repository: Some(cluster.virtual_repository("race.git")),
            relative_path: "renamed/elsewhere.git".into(),
        })
        .await
        .expect("rename");
    let (renamed_id, renamed_path, _) = repository_row(&cluster, "renamed/elsewhere.git")
        .await
        .unwrap();
    assert_eq!(
        (renamed_id, renamed_path.as_str()),
        (second_id, second_path.as_str())
    );
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&replica_dir).unwrap()),
        inode_before
    );
    let exists = |p: &str| {
        let mut c = client.clone();
        let repo = cluster.virtual_repository(p);
        async move {
            c.repository_exists(RepositoryExistsRequest {
                repository: Some(repo),
            })
            .await
            .unwrap()
            .into_inner()
            .exists
        }
    };
    assert!(!exists("race.git").await);
    assert!(exists("renamed/elsewhere.git").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicator_killed_mid_backlog_converges_after_restart_and_duplicates_are_harmless() {
    let mut cluster = Cluster::builder()
        .storages(3)
        .routers(1)
        .replicators(1)
        .gateway()
        .start()
        .await;
    let repos: Vec<String> = (0..6).map(|i| format!("backlog/r{i}.git")).collect();
    let mut works = Vec::new();
    for (i, path) in repos.iter().enumerate() {
        let work = new_work_repo(&cluster, &format!("w{i}"));
        git::run(&work, &["push", "-q", &cluster.repo_url(path), "main"]);
        works.push(work);
        if i == 2 {
            // Crash in the middle of the backlog.
            cluster.replicators[0].kill();
        }
    }
    for (work, path) in works.iter().zip(&repos) {
        std::fs::write(work.join("more.txt"), "more\n").unwrap();
        git::commit_all(work, "more");
        git::run(work, &["push", "-q", &cluster.repo_url(path), "main"]);
    }
    cluster.replicators[0].restart().await;
    for path in &repos {
        wait_converged(&cluster, path).await;
    }

    // Publishing a finished job again changes nothing.
    let db = cluster.db.as_ref().unwrap().client().await;
    let row = db
        .query_one(
            "SELECT j.id::text, j.repository_id, j.target_storage, j.source_storage, r.relative_path, r.replica_path
             FROM replication_jobs j JOIN repositories r USING (repository_id)
             WHERE j.state = 'done' ORDER BY j.created_at LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let job = gitcluster_proto::jobs::ReplicationJob {
        job_id: row.get(0),
        change: gitcluster_proto::jobs::Change::Update,
        repository_id: row.get(1),
        virtual_storage: "default".into(),
        relative_path: row.get(4),
        replica_path: row.get(5),
        source_storage: row.get(3),
        target_storage: row.get(2),
    };
    let before = cluster.replica_generations(job.repository_id).await;
    let conn = gitcluster_common::bus::connect(&gitcluster_integration_tests::amqp_url(), "test")
        .await
        .unwrap();
    let publisher =
        gitcluster_common::bus::Publisher::new(&conn, BusNames::new(&cluster.bus_prefix), "test")
            .await
            .unwrap();
    for _ in 0..2 {
        publisher
            .publish(
                &job,
                gitcluster_common::bus::Destination::Queue,
                gitcluster_common::bus::Envelope {
                    attempt: 1,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let queue =
        BusNames::new(&cluster.bus_prefix).replication_queue("default", &job.target_storage);
    eventually!("duplicates consumed", {
        anyhow::ensure!(bus::queue_depth(&queue).await? == 0, "queue not drained");
        Ok(())
    });
    let state: String = db
        .query_one(
            "SELECT state::text FROM replication_jobs WHERE id::text = $1",
            &[&job.job_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "done");
    assert_eq!(cluster.replica_generations(job.repository_id).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_for_a_dead_target_retries_with_growing_delays_then_dead_letters() {
    let mut cluster = Cluster::builder()
        .storages(3)
        .routers(1)
        .replicators(1)
        .replicator_arg("--retry-delays-ms=100,300")
        .replicator_arg("--max-attempts=3")
        .gateway()
        .start()
        .await;
    let work = new_work_repo(&cluster, "work");
    let url = cluster.repo_url("doomed.git");
    git::run(&work, &["push", "-q", &url, "main"]);
    wait_converged(&cluster, "doomed.git").await;

    // Kill a secondary: until the election service exists a dead primary means no writes.
    let (id, _, _) = repository_row(&cluster, "doomed.git").await.unwrap();
    let db = cluster.db.as_ref().unwrap().client().await;
    let primary: String = db
        .query_one(
            "SELECT \"primary\" FROM repositories WHERE repository_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    let victim = cluster
        .storages
        .iter()
        .position(|s| s.storage != primary)
        .unwrap();
    let victim_name = cluster.storages[victim].storage.clone();
    cluster.storages[victim].member.kill();
    std::fs::write(work.join("README.md"), "after the crash\n").unwrap();
    git::commit_all(&work, "after");
    git::run(&work, &["push", "-q", &url, "main"]);

    let (attempts, error): (i32, Option<String>) = eventually!(
        "job to the dead secondary is dead",
        {
            let row = db
            .query_opt(
                "SELECT attempts, error FROM replication_jobs WHERE target_storage = $1 AND state = 'dead'",
                &[&victim_name],
            )
            .await?
            .ok_or_else(|| anyhow::anyhow!("no dead job yet"))?;
            Ok((row.get(0), row.get(1)))
        }
    );
    assert_eq!(attempts, 3);
    assert!(
        error.as_deref().is_some_and(|e| !e.is_empty()),
        "dead job keeps its error"
    );
    let dead_queue = BusNames::new(&cluster.bus_prefix).dead_letter();
    assert!(
        bus::queue_depth(&dead_queue).await.unwrap() >= 1,
        "dead letter visible in the broker"
    );
    // The other secondary still got the write; the dead one stays behind.
    let (_, _, generation) = repository_row(&cluster, "doomed.git").await.unwrap();
    let gens = cluster.replica_generations(id).await;
    assert_eq!(
        gens.iter().filter(|(_, g)| *g == generation).count(),
        2,
        "{gens:?}"
    );
    assert!(
        gens.iter()
            .any(|(s, g)| *s == victim_name && *g < generation),
        "{gens:?}"
    );
    // A dead job is an operator's problem: the replicator says so at ERROR.
    cluster.expect_error("dead");
    cluster.expect_error(&victim_name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_refuses_bad_requests_with_precise_codes() {
    let cluster = Cluster::builder().storages(1).routers(1).start().await;
    let ch = cluster.router_channel(0).await;
    let exists = |repo: Option<Repository>| RepositoryExistsRequest { repository: repo };

    let mut ok = RepositoryServiceClient::with_interceptor(ch.clone(), cluster.external_auth());
    let err = ok
        .repository_exists(exists(Some(Repository {
            storage_name: "nope".into(),
            relative_path: "a.git".into(),
        })))
        .await
        .expect_err("unknown virtual storage");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = ok
        .repository_exists(exists(None))
        .await
        .expect_err("no repository");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let mut anonymous = RepositoryServiceClient::new(ch.clone());
    let err = anonymous
        .repository_exists(exists(Some(cluster.virtual_repository("a.git"))))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let wrong = gitcluster_proto::auth::BearerToken::new(Some("wrong")).unwrap();
    let err = RepositoryServiceClient::with_interceptor(ch.clone(), wrong)
        .repository_exists(exists(Some(cluster.virtual_repository("a.git"))))
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), Code::PermissionDenied);
    // The internal token is for storage nodes only.
    let err = RepositoryServiceClient::with_interceptor(ch.clone(), cluster.auth())
        .repository_exists(exists(Some(cluster.virtual_repository("a.git"))))
        .await
        .expect_err("internal token");
    assert_eq!(err.code(), Code::PermissionDenied);
    // And the router keeps answering properly.
    assert!(
        !ok.repository_exists(exists(Some(cluster.virtual_repository("a.git"))))
            .await
            .unwrap()
            .into_inner()
            .exists
    );
}
