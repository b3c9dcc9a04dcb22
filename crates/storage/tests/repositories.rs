//! Repository lifecycle, validation, auth, refs and objects against an in-process node.

mod common;

use common::{ZERO_OID, commit, git, start, update_ref};
use gitcluster_proto::v1;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_exists_remove_and_already_exists() {
    let node = start("default", None, false).await;
    let mut repos = node.repos().await;
    let exists = |r: &str| v1::RepositoryExistsRequest {
        repository: Some(node.repo(r)),
    };

    assert!(
        !repos
            .repository_exists(exists("a/b.git"))
            .await
            .expect("exists")
            .into_inner()
            .exists
    );
    node.create("a/b.git").await;
    assert!(
        repos
            .repository_exists(exists("a/b.git"))
            .await
            .expect("exists")
            .into_inner()
            .exists
    );
    assert!(common::is_bare_repo(&node.path("a/b.git")));

    let again = repos
        .create_repository(v1::CreateRepositoryRequest {
            repository: Some(node.repo("a/b.git")),
            ..Default::default()
        })
        .await
        .expect_err("second create");
    assert_eq!(again.code(), Code::AlreadyExists);

    let head = node
        .refs()
        .await
        .find_default_branch(v1::FindDefaultBranchRequest {
            repository: Some(node.repo("a/b.git")),
        })
        .await
        .expect("default branch")
        .into_inner();
    assert_eq!(head.name, "refs/heads/main");
    assert_eq!(node.checksum("a/b.git").await, "0".repeat(40));
    let size = repos
        .repository_size(v1::RepositorySizeRequest {
            repository: Some(node.repo("a/b.git")),
        })
        .await
        .expect("size")
        .into_inner();
    assert!(size.size_bytes > 0);

    repos
        .remove_repository(v1::RemoveRepositoryRequest {
            repository: Some(node.repo("a/b.git")),
            only_if_empty: false,
        })
        .await
        .expect("remove");
    assert!(
        !repos
            .repository_exists(exists("a/b.git"))
            .await
            .expect("exists")
            .into_inner()
            .exists
    );
    let gone = repos
        .remove_repository(v1::RemoveRepositoryRequest {
            repository: Some(node.repo("a/b.git")),
            only_if_empty: false,
        })
        .await
        .expect_err("second remove");
    assert_eq!(gone.code(), Code::NotFound);
    let missing = repos
        .calculate_checksum(v1::CalculateChecksumRequest {
            repository: Some(node.repo("nope.git")),
        })
        .await
        .expect_err("missing repo");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(missing.message(), "repository not found");

    // A custom default branch and the SHA-256 object format.
    repos
        .create_repository(v1::CreateRepositoryRequest {
            repository: Some(node.repo("sha256.git")),
            default_branch: "trunk".into(),
            object_format: v1::ObjectFormat::Sha256 as i32,
        })
        .await
        .expect("create sha256");
    let format = git(
        &node.path("sha256.git"),
        &["rev-parse", "--show-object-format"],
        b"",
    )
    .await;
    assert_eq!(format, "sha256");
    let head = git(&node.path("sha256.git"), &["symbolic-ref", "HEAD"], b"").await;
    assert_eq!(head, "refs/heads/trunk");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_unknown_storage_and_missing_repository_are_invalid_argument() {
    let node = start("default", None, false).await;
    let mut repos = node.repos().await;
    let bad = [
        node.repo("../escape.git"),
        node.repo("/etc/passwd"),
        node.repo("a/../../b"),
        node.repo("a//b"),
        node.repo("+gitcluster/tmp/x"),
        node.repo(""),
        v1::Repository {
            storage_name: "other".into(),
            relative_path: "a.git".into(),
        },
    ];
    for repo in bad {
        let err = repos
            .create_repository(v1::CreateRepositoryRequest {
                repository: Some(repo.clone()),
                ..Default::default()
            })
            .await
            .expect_err("must be rejected");
        assert_eq!(err.code(), Code::InvalidArgument, "{repo:?}: {err:?}");
    }
    let unknown = repos
        .repository_exists(v1::RepositoryExistsRequest {
            repository: Some(v1::Repository {
                storage_name: "x".into(),
                relative_path: "a.git".into(),
            }),
        })
        .await
        .expect_err("unknown storage");
    assert_eq!(unknown.message(), "storage \"x\" is not configured");
    let missing = repos
        .repository_exists(v1::RepositoryExistsRequest { repository: None })
        .await
        .expect_err("missing repository");
    assert_eq!(missing.code(), Code::InvalidArgument);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_missing_is_unauthenticated_wrong_is_denied_and_transitioning_accepts() {
    let node = start("default", Some("s3cret"), false).await;
    let req = || v1::RepositoryExistsRequest {
        repository: Some(node.repo("a.git")),
    };
    let none = node
        .repos_with(None)
        .await
        .repository_exists(req())
        .await
        .expect_err("no token");
    assert_eq!(none.code(), Code::Unauthenticated);
    let wrong = node
        .repos_with(Some("nope"))
        .await
        .repository_exists(req())
        .await
        .expect_err("wrong");
    assert_eq!(wrong.code(), Code::PermissionDenied);
    node.repos_with(Some("s3cret"))
        .await
        .repository_exists(req())
        .await
        .expect("right token");
    node.stop().await;

    let lenient = start("default", Some("s3cret"), true).await;
    let req = || v1::RepositoryExistsRequest {
        repository: Some(lenient.repo("a.git")),
    };
    lenient
        .repos_with(None)
        .await
        .repository_exists(req())
        .await
        .expect("transitioning, no token");
    lenient
        .repos_with(Some("nope"))
        .await
        .repository_exists(req())
        .await
        .expect("transitioning, wrong");
    lenient.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_references_applies_and_rejects_a_stale_old_value() {
    let node = start("default", None, false).await;
    node.create("r.git").await;
    let dir = node.path("r.git");
    let c1 = commit(&dir, "one", &[]).await;
    let c2 = commit(&dir, "two", &[&c1]).await;

    update_ref(&node, "r.git", "refs/heads/main", ZERO_OID, &c1)
        .await
        .expect("create main");
    update_ref(&node, "r.git", "refs/heads/main", &c1, &c2)
        .await
        .expect("fast-forward main");
    let stale = update_ref(&node, "r.git", "refs/heads/main", &c1, &c1)
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(
        stale.message().contains("refs/heads/main"),
        "{}",
        stale.message()
    );
    let exists = update_ref(&node, "r.git", "refs/heads/main", ZERO_OID, &c1)
        .await
        .expect_err("exists");
    assert_eq!(exists.code(), Code::FailedPrecondition);
    let bad_name = update_ref(&node, "r.git", "refs/heads/a..b", "", &c1)
        .await
        .expect_err("bad name");
    assert_eq!(bad_name.code(), Code::InvalidArgument);
    let bad_oid = update_ref(&node, "r.git", "refs/heads/x", "", "1234")
        .await
        .expect_err("bad oid");
    assert_eq!(bad_oid.code(), Code::InvalidArgument);

    // Several updates are one transaction: a failing one leaves the others undone.
    let mut refs = node.refs().await;
    let err = refs
        .update_references(v1::UpdateReferencesRequest {
            repository: Some(node.repo("r.git")),
            updates: vec![
                v1::update_references_request::Update {
                    reference: "refs/heads/feature".into(),
                    old_oid: String::new(),
                    new_oid: c1.clone(),
                },
                v1::update_references_request::Update {
                    reference: "refs/heads/main".into(),
                    old_oid: c1.clone(),
                    new_oid: c1.clone(),
                },
            ],
        })
        .await
        .expect_err("one stale update");
    assert_eq!(err.code(), Code::FailedPrecondition);

    update_ref(&node, "r.git", "refs/tags/v1", "", &c1)
        .await
        .expect("tag");
    let mut stream = refs
        .list_refs(v1::ListRefsRequest {
            repository: Some(node.repo("r.git")),
            patterns: vec![],
            head: true,
        })
        .await
        .expect("list refs")
        .into_inner();
    let mut listed = Vec::new();
    while let Some(msg) = stream.message().await.expect("message") {
        listed.extend(msg.references.into_iter().map(|r| (r.name, r.target)));
    }
    assert_eq!(
        listed,
        vec![
            ("HEAD".to_string(), c2.clone()),
            ("refs/heads/main".to_string(), c2.clone()),
            ("refs/tags/v1".to_string(), c1.clone()),
        ]
    );

    // Delete with zeros, then default branch changes.
    update_ref(&node, "r.git", "refs/tags/v1", &c1, ZERO_OID)
        .await
        .expect("delete tag");
    refs.set_default_branch(v1::SetDefaultBranchRequest {
        repository: Some(node.repo("r.git")),
        name: "refs/heads/feature".into(),
    })
    .await
    .expect("set default branch");
    let bad = refs
        .set_default_branch(v1::SetDefaultBranchRequest {
            repository: Some(node.repo("r.git")),
            name: "refs/tags/v1".into(),
        })
        .await
        .expect_err("not a branch");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let head = refs
        .find_default_branch(v1::FindDefaultBranchRequest {
            repository: Some(node.repo("r.git")),
        })
        .await
        .expect("head")
        .into_inner();
    assert_eq!(head.name, "refs/heads/feature");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_matches_an_independent_computation_over_git_show_ref() {
    use sha1::Digest as _;
    let node = start("default", None, false).await;
    node.create("c.git").await;
    let dir = node.path("c.git");
    let c1 = commit(&dir, "one", &[]).await;
    for r in [
        "refs/heads/main",
        "refs/tags/v1",
        "refs/keep-around/x",
        "refs/remotes/origin/main",
    ] {
        update_ref(&node, "c.git", r, "", &c1)
            .await
            .expect("update");
    }
    let mut expected = [0u8; 20];
    for line in [
        "HEAD",
        "refs/heads/main",
        "refs/tags/v1",
        "refs/keep-around/x",
    ] {
        let digest = sha1::Sha1::digest(format!("{c1} {line}").as_bytes());
        for (e, d) in expected.iter_mut().zip(digest) {
            *e ^= d;
        }
    }
    assert_eq!(node.checksum("c.git").await, hex::encode(expected));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_stream_with_limits_and_commits_resolve() {
    let node = start("default", None, false).await;
    node.create("o.git").await;
    let dir = node.path("o.git");
    let big: String = "0123456789".repeat(20_000);
    let blob = git(&dir, &["hash-object", "-w", "--stdin"], big.as_bytes()).await;
    let c1 = commit(&dir, "first commit\n\nwith a body", &[]).await;
    update_ref(&node, "o.git", "refs/heads/main", "", &c1)
        .await
        .expect("main");

    let mut objects = node.objects().await;
    let read = |limit: i64| v1::GetBlobRequest {
        repository: Some(node.repo("o.git")),
        oid: blob.clone(),
        limit,
    };
    let mut stream = objects.get_blob(read(0)).await.expect("blob").into_inner();
    let mut data = Vec::new();
    let mut first = None;
    while let Some(msg) = stream.message().await.expect("message") {
        if first.is_none() {
            first = Some((msg.size, msg.oid.clone()));
        }
        data.extend_from_slice(&msg.data);
    }
    assert_eq!(first, Some((big.len() as u64, blob.clone())));
    assert_eq!(data, big.as_bytes());

    let mut limited = objects.get_blob(read(10)).await.expect("blob").into_inner();
    let mut data = Vec::new();
    while let Some(msg) = limited.message().await.expect("message") {
        data.extend_from_slice(&msg.data);
    }
    assert_eq!(data, b"0123456789");

    let missing = objects
        .get_blob(v1::GetBlobRequest {
            repository: Some(node.repo("o.git")),
            oid: "1".repeat(40),
            limit: 0,
        })
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
    let not_blob = objects
        .get_blob(v1::GetBlobRequest {
            repository: Some(node.repo("o.git")),
            oid: c1.clone(),
            limit: 0,
        })
        .await
        .expect_err("commit is not a blob");
    assert_eq!(not_blob.code(), Code::InvalidArgument);

    let found = objects
        .find_commit(v1::FindCommitRequest {
            repository: Some(node.repo("o.git")),
            revision: "main".into(),
        })
        .await
        .expect("commit")
        .into_inner();
    assert_eq!(found.id, c1);
    assert_eq!(found.subject, "first commit");
    assert_eq!(found.author.expect("author").email, "author@example.com");
    let nope = objects
        .find_commit(v1::FindCommitRequest {
            repository: Some(node.repo("o.git")),
            revision: "nope".into(),
        })
        .await
        .expect_err("unknown revision");
    assert_eq!(nope.code(), Code::NotFound);
    let dash = objects
        .find_commit(v1::FindCommitRequest {
            repository: Some(node.repo("o.git")),
            revision: "--all".into(),
        })
        .await
        .expect_err("option injection");
    assert_eq!(dash.code(), Code::InvalidArgument);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_repositories_reports_repos_and_skips_internal_dir() {
    let node = start("default", None, false).await;
    for r in ["a.git", "group/b.git", "group/sub/c.git"] {
        node.create(r).await;
    }
    let mut stream = node
        .repos()
        .await
        .list_repositories(v1::ListRepositoriesRequest {
            storage_name: "default".into(),
        })
        .await
        .expect("list")
        .into_inner();
    let mut found = Vec::new();
    while let Some(msg) = stream.message().await.expect("message") {
        for e in msg.repositories {
            assert!(e.modified_at.is_some_and(|t| t.seconds > 0));
            found.push(e.relative_path);
        }
    }
    found.sort();
    assert_eq!(found, vec!["a.git", "group/b.git", "group/sub/c.git"]);

    node.repos()
        .await
        .optimize_repository(v1::OptimizeRepositoryRequest {
            repository: Some(node.repo("a.git")),
        })
        .await
        .expect("optimize");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_refs_prefixes_v0_advertisements_and_advertises_empty_when_asked() {
    let node = start("default", None, false).await;
    node.create("h.git").await;
    let dir = node.path("h.git");
    let c1 = commit(&dir, "one", &[]).await;
    update_ref(&node, "h.git", "refs/heads/main", "", &c1)
        .await
        .expect("main");
    let mut http = node.smarthttp().await;
    let collect = |mut s: tonic::Streaming<v1::InfoRefsResponse>| async move {
        let mut data = Vec::new();
        while let Some(m) = s.message().await.expect("message") {
            data.extend_from_slice(&m.data);
        }
        data
    };
    let req = |rel: &str, proto: &str, empty: bool| v1::InfoRefsRequest {
        repository: Some(node.repo(rel)),
        git_protocol: proto.into(),
        advertise_empty_if_missing: empty,
    };
    let v0 = collect(
        http.info_refs_upload_pack(req("h.git", "", false))
            .await
            .expect("v0")
            .into_inner(),
    )
    .await;
    assert!(v0.starts_with(b"001e# service=git-upload-pack\n0000"));
    assert!(String::from_utf8_lossy(&v0).contains(&c1));
    let v2 = collect(
        http.info_refs_upload_pack(req("h.git", "version=2", false))
            .await
            .expect("v2")
            .into_inner(),
    )
    .await;
    assert!(
        v2.starts_with(b"000eversion 2\n"),
        "{}",
        String::from_utf8_lossy(&v2)
    );
    let push = collect(
        http.info_refs_receive_pack(req("new.git", "", true))
            .await
            .expect("empty")
            .into_inner(),
    )
    .await;
    assert!(push.starts_with(b"001f# service=git-receive-pack\n0000"));
    assert!(String::from_utf8_lossy(&push).contains("capabilities^{}"));
    let missing = http
        .info_refs_receive_pack(req("new.git", "", false))
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
    // The throwaway repository does not linger as a real one.
    assert!(!node.path("new.git").exists());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_request_metrics_are_exposed() {
    let node = start("default", None, false).await;
    let _ = node
        .repos()
        .await
        .repository_exists(v1::RepositoryExistsRequest {
            repository: Some(node.repo("../x")),
        })
        .await
        .expect_err("invalid");
    node.repos()
        .await
        .repository_exists(v1::RepositoryExistsRequest {
            repository: Some(node.repo("x.git")),
        })
        .await
        .expect("exists");
    let health = common::admin_get(&node, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = common::admin_get(&node, "/metrics").await;
    let method = "/gitcluster.v1.RepositoryService/RepositoryExists";
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gitcluster_storage_requests_total")
                && l.contains(method)
                && l.contains("code=\"InvalidArgument\"")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gitcluster_storage_requests_total")
                && l.contains(method)
                && l.contains("code=\"Ok\"")),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_moves_the_repository_whole_and_refuses_taken_or_bad_paths() {
    let node = start("default", None, false).await;
    let mut repos = node.repos().await;
    node.create("old/name.git").await;
    node.create("taken.git").await;
    let before = node.checksum("old/name.git").await;
    let rename = |from: &str, to: &str| v1::RenameRepositoryRequest {
        repository: Some(node.repo(from)),
        relative_path: to.into(),
    };

    let err = repos
        .rename_repository(rename("old/name.git", "taken.git"))
        .await
        .expect_err("taken");
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = repos
        .rename_repository(rename("old/name.git", "../escape.git"))
        .await
        .expect_err("traversal");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = repos
        .rename_repository(rename("missing.git", "new.git"))
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        common::is_bare_repo(&node.path("old/name.git")),
        "failed renames move nothing"
    );

    repos
        .rename_repository(rename("old/name.git", "new/place.git"))
        .await
        .expect("rename");
    assert!(!node.path("old/name.git").exists());
    assert!(common::is_bare_repo(&node.path("new/place.git")));
    assert_eq!(node.checksum("new/place.git").await, before);
}
