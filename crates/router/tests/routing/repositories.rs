//! Repository lifecycle through the router: create (also racing), remove and
//! re-create, rename, and the calls that are not writes (exists, list, maintenance).

use gitcluster_integration_tests::eventually;
use gitcluster_proto::v1::{
    CreateRepositoryRequest, ListRepositoriesRequest, OptimizeRepositoryRequest,
    RemoveRepositoryRequest, RenameRepositoryRequest, RepositoryExistsRequest,
};
use gitcluster_router::replica_path::ReplicaPath;
use tonic::Code;

use crate::support::{
    Options, STORAGES, TestRouter, cluster, create, db, generations, read, record, replica_dir,
    repo,
};

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
    assert_eq!(cluster.repositories_at("race.git").await, 1);
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
