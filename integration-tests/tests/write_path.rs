//! The write path from outside: push-to-create and its undo, writes that change
//! nothing, the default branch after a first push, the router's path rules, job
//! timestamps, and a push that is acknowledged only once recorded. Whole clusters of
//! our binaries against real Postgres, RabbitMQ and git.

#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gitcluster_integration_tests::{Cluster, eventually, git};
use gitcluster_proto::v1::ref_service_client::RefServiceClient;
use gitcluster_proto::v1::repository_service_client::RepositoryServiceClient;
use gitcluster_proto::v1::smart_http_service_client::SmartHttpServiceClient;
use gitcluster_proto::v1::update_references_request::Update;
use gitcluster_proto::v1::{
    CreateRepositoryRequest, ListRefsRequest, PostReceivePackRequest, RenameRepositoryRequest,
    RepositoryExistsRequest, SetDefaultBranchRequest, UpdateReferencesRequest,
};
use tonic::Code;

async fn cluster(storages: usize, replicators: usize) -> Cluster {
    Cluster::builder()
        .storages(storages)
        .routers(1)
        .replicators(replicators)
        .gateway()
        .start()
        .await
}

fn work_repo(cluster: &Cluster, name: &str, branch: &str) -> PathBuf {
    let work = cluster.dir().join(name);
    std::fs::create_dir_all(&work).unwrap();
    git::run(
        &work,
        &["init", "-q", &format!("--initial-branch={branch}")],
    );
    std::fs::write(work.join("README.md"), format!("{name}\n")).unwrap();
    git::commit_all(&work, "initial");
    work
}

/// A work repository `w` with one commit on `main`, pushed through the gateway to
/// `path` (push-to-create): its work tree and the URL pushed to.
fn pushed_repo(cluster: &Cluster, path: &str) -> (PathBuf, String) {
    let work = work_repo(cluster, "w", "main");
    let url = cluster.repo_url(path);
    git::run(&work, &["push", "-q", &url, "main"]);
    (work, url)
}

/// `(generation, jobs)` of a repository: its generation and how many replication
/// jobs it ever had. `None` when there is no such repository.
async fn generation_and_jobs(cluster: &Cluster, path: &str) -> Option<(i64, i64)> {
    let db = cluster.db.as_ref().unwrap().client().await;
    db.query_opt(
        "SELECT r.generation, (SELECT count(*) FROM replication_jobs j WHERE j.repository_id = r.repository_id)
           FROM repositories r WHERE relative_path = $1",
        &[&path],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

async fn exists(cluster: &Cluster, path: &str) -> bool {
    let mut client = RepositoryServiceClient::with_interceptor(
        cluster.router_channel(0).await,
        cluster.external_auth(),
    );
    client
        .repository_exists(RepositoryExistsRequest {
            repository: Some(cluster.virtual_repository(path)),
        })
        .await
        .unwrap()
        .into_inner()
        .exists
}

/// `host:port` of the gateway.
fn gateway_addr(cluster: &Cluster) -> String {
    cluster
        .gateway_url()
        .trim_start_matches("http://")
        .to_owned()
}

/// Opens a receive-pack POST to `path` with a chunked body whose first chunk is
/// `first`, and leaves the body open.
fn open_push(cluster: &Cluster, path: &str, first: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(gateway_addr(cluster)).unwrap();
    let head = format!(
        "POST /default/{path}/git-receive-pack HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/x-git-receive-pack-request\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        first.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(first).unwrap();
    s.write_all(b"\r\n").unwrap();
    s
}

/// A pkt-line holding `payload`.
fn pkt(payload: &str) -> Vec<u8> {
    format!("{:04x}{payload}", payload.len() + 4).into_bytes()
}

/// The first command of a push creating `refs/heads/main` at `oid`.
fn create_main(oid: &str) -> Vec<u8> {
    pkt(&format!(
        "{} {oid} refs/heads/main\0report-status side-band-64k\n",
        "0".repeat(40)
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanishing_first_push_cannot_remove_another_clients_push() {
    let mut cluster = cluster(2, 0).await;
    cluster.expect_error("aborted first push");
    let work = work_repo(&cluster, "b", "main");
    let head = git::run(&work, &["rev-parse", "HEAD"]);
    // Client A: the gateway creates the repository for it; its body stays open.
    let a = open_push(&cluster, "race.git", &create_main(&head));
    eventually!("the gateway created the repository for A", {
        anyhow::ensure!(exists(&cluster, "race.git").await, "not yet");
        Ok(())
    });
    // Client B pushes into it and is told it succeeded.
    let url = cluster.repo_url("race.git");
    let out = git::run_output(&work, &["push", &url, "main"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("[new branch]"));
    // A goes away; its undo must leave B's acknowledged push alone.
    drop(a);
    let gateway = cluster.gateway.as_ref().unwrap();
    eventually!("A's undo ran", {
        anyhow::ensure!(
            gateway.member.log().contains("aborted first push"),
            "not yet"
        );
        Ok(())
    });
    assert_eq!(git::clone_head(cluster.dir(), &url, "clone"), head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_first_push_and_a_probe_leave_no_repository() {
    let cluster = cluster(2, 0).await;
    // git's probe POST before a push over http.postBuffer: four bytes, no commands.
    let mut probe = TcpStream::connect(gateway_addr(&cluster)).unwrap();
    probe
        .write_all(
            b"POST /default/probe.git/git-receive-pack HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/x-git-receive-pack-request\r\n\
              Content-Length: 4\r\nConnection: close\r\n\r\n0000",
        )
        .unwrap();
    let mut answer = String::new();
    probe.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !exists(&cluster, "probe.git").await,
        "the probe created a repository"
    );

    // A real first push whose client disappears mid-body.
    let work = work_repo(&cluster, "w", "main");
    let head = git::run(&work, &["rev-parse", "HEAD"]);
    let mut body = create_main(&head);
    body.extend_from_slice(b"0000PACK");
    let cut = open_push(&cluster, "cut.git", &body);
    eventually!("the gateway created the repository", {
        anyhow::ensure!(exists(&cluster, "cut.git").await, "not yet");
        Ok(())
    });
    drop(cut);
    eventually!("the aborted first push left no repository", {
        anyhow::ensure!(!exists(&cluster, "cut.git").await, "still there");
        Ok(())
    });

    // A real git push with the probe (postBuffer below the pack size) lands whole.
    git::write_random_file(&work.join("big.bin"), 256 * 1024);
    git::commit_all(&work, "big");
    let url = cluster.repo_url("probe.git");
    git::run(
        &work,
        &["-c", "http.postBuffer=65536", "push", "-q", &url, "main"],
    );
    assert_eq!(
        git::clone_head(cluster.dir(), &url, "clone"),
        git::run(&work, &["rev-parse", "HEAD"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_change_nothing_bump_nothing_and_queue_nothing() {
    let cluster = cluster(3, 1).await;
    let (work, url) = pushed_repo(&cluster, "same.git");
    let (first, jobs) = generation_and_jobs(&cluster, "same.git").await.unwrap();

    // A push over http.postBuffer: the probe plus one real POST is one write.
    git::write_random_file(&work.join("big.bin"), 2 * 1024 * 1024);
    git::commit_all(&work, "big");
    git::run(&work, &["push", "-q", &url, "main"]);
    let (generation, after) = generation_and_jobs(&cluster, "same.git").await.unwrap();
    assert_eq!(generation, first + 1, "a push over postBuffer is one write");
    assert_eq!(after, jobs + 2, "one job per secondary");
    let (base, jobs) = (generation, after);

    // An all-rejected push (non-fast-forward without force).
    let other = work_repo(&cluster, "other", "main");
    let rejected = git::run_output(&other, &["push", &url, "main"]);
    assert!(!rejected.status.success());
    // The same value again, through the router.
    let head = git::run(&work, &["rev-parse", "HEAD"]);
    let mut refs = RefServiceClient::with_interceptor(
        cluster.router_channel(0).await,
        cluster.external_auth(),
    );
    refs.update_references(UpdateReferencesRequest {
        repository: Some(cluster.virtual_repository("same.git")),
        updates: vec![Update {
            reference: "refs/heads/main".into(),
            old_oid: head.clone(),
            new_oid: head.clone(),
        }],
    })
    .await
    .unwrap();
    refs.set_default_branch(SetDefaultBranchRequest {
        repository: Some(cluster.virtual_repository("same.git")),
        name: "refs/heads/main".into(),
    })
    .await
    .unwrap();
    // git's own "Everything up-to-date" sends no POST at all; a push of nothing
    // through the protocol is the probe, tried above.
    assert_eq!(
        generation_and_jobs(&cluster, "same.git").await.unwrap(),
        (base, jobs),
        "writes that changed nothing bumped the generation or queued jobs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_of_a_master_only_repository_clones_with_master_checked_out() {
    let cluster = cluster(2, 1).await;
    let work = work_repo(&cluster, "old", "master");
    let url = cluster.repo_url("mirror.git");
    git::run(&work, &["push", "-q", "--mirror", &url]);
    let clone = cluster.dir().join("clone");
    let out = git::run_output(cluster.dir(), &["clone", &url, clone.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("nonexistent ref"), "{stderr}");
    assert_eq!(
        git::run(&clone, &["symbolic-ref", "HEAD"]),
        "refs/heads/master"
    );
    // Every replica agrees: the change is a recorded write that replicates.
    let replica_path = cluster
        .repository_record("mirror.git")
        .await
        .unwrap()
        .replica_path;
    for node in &cluster.storages {
        let dir = node.root.join(&replica_path);
        eventually!("every replica's HEAD is master", {
            let head = std::fs::read_to_string(dir.join("HEAD")).unwrap_or_default();
            anyhow::ensure!(head.trim() == "ref: refs/heads/master", "{head}");
            Ok(())
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_a_node_would_refuse_are_refused_by_the_router_and_nothing_is_created() {
    let cluster = cluster(2, 0).await;
    let mut repos = RepositoryServiceClient::with_interceptor(
        cluster.router_channel(0).await,
        cluster.external_auth(),
    );
    let huge = "a".repeat(5 * 1024 * 1024);
    let bad = [
        "../../../etc/cron.d/x",
        "/abs.git",
        "a//b.git",
        "x.git/",
        "a\\b.git",
        "new\nline.git",
        "nul\0.git",
        "+gitcluster/tmp/x.git",
        "@cluster/repositories/aa/bb/1",
        huge.as_str(),
    ];
    for path in bad {
        let err = repos
            .create_repository(CreateRepositoryRequest {
                repository: Some(cluster.virtual_repository(path)),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{:?}: {err:?}",
            &path[..path.len().min(40)]
        );
        assert!(err.message().contains("relative path"), "{}", err.message());
    }
    repos
        .create_repository(CreateRepositoryRequest {
            repository: Some(cluster.virtual_repository("good.git")),
            ..Default::default()
        })
        .await
        .unwrap();
    for path in bad {
        let err = repos
            .rename_repository(RenameRepositoryRequest {
                repository: Some(cluster.virtual_repository("good.git")),
                relative_path: path.to_owned(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "rename to {:?}",
            &path[..path.len().min(40)]
        );
    }
    // A read of a path with NUL is the client's mistake too, never a database error.
    let mut refs = RefServiceClient::with_interceptor(
        cluster.router_channel(0).await,
        cluster.external_auth(),
    );
    let err = refs
        .list_refs(ListRefsRequest {
            repository: Some(cluster.virtual_repository("nul\0.git")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Push-to-create through the gateway refuses the same way.
    let work = work_repo(&cluster, "w", "main");
    let out = git::run_output(
        &work,
        &[
            "push",
            &format!(
                "{}/default/@cluster/repositories/x.git",
                cluster.gateway_url()
            ),
            "main",
        ],
    );
    assert!(!out.status.success());
    // Nothing but good.git was made, in the metadata or on disk.
    let db = cluster.db.as_ref().unwrap().client().await;
    let paths: Vec<String> = db
        .query("SELECT relative_path FROM repositories", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(paths, vec!["good.git".to_owned()]);
    for node in &cluster.storages {
        assert!(!node.root.join("../../../etc/cron.d/x").exists());
        let top: Vec<String> = std::fs::read_dir(&node.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        for name in &top {
            assert!(
                name == "@cluster" || name == "+gitcluster",
                "unexpected {name} on {}",
                node.storage
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_timestamps_follow_the_order_of_events() {
    let cluster = cluster(3, 1).await;
    let work = work_repo(&cluster, "w", "main");
    let url = cluster.repo_url("times.git");
    for i in 0..4 {
        std::fs::write(work.join("n.txt"), format!("{i}\n")).unwrap();
        git::commit_all(&work, &format!("c{i}"));
        git::run(&work, &["push", "-q", &url, "main"]);
    }
    let db = cluster.db.as_ref().unwrap().client().await;
    let rows = eventually!("every job is done", {
        let rows = db
            .query(
                "SELECT state::text, created_at, published_at, started_at, finished_at FROM replication_jobs",
                &[],
            )
            .await?;
        anyhow::ensure!(rows.len() >= 8, "{} jobs", rows.len());
        anyhow::ensure!(
            rows.iter().all(|r| r.get::<_, String>(0) == "done"),
            "not all done"
        );
        Ok(rows)
    });
    type Ts = Option<std::time::SystemTime>;
    for row in rows {
        let created: Ts = row.get(1);
        let published: Ts = row.get(2);
        let started: Ts = row.get(3);
        let finished: Ts = row.get(4);
        let (c, p, s, f) = (
            created.unwrap(),
            published.expect("a done job has published_at"),
            started.unwrap(),
            finished.unwrap(),
        );
        assert!(
            c <= p && p <= s && s <= f,
            "created {c:?} published {p:?} started {s:?} finished {f:?}"
        );
    }
}

/// The lock of one `repositories` row, held in an open transaction (a write's record
/// needs it), and a second connection that sees who waits for it.
struct RowLock {
    holder: tokio_postgres::Client,
    watcher: tokio_postgres::Client,
}

impl RowLock {
    /// Locks the row of `path` (`SELECT ... FOR UPDATE` in a transaction left open).
    async fn hold(cluster: &Cluster, path: &str) -> RowLock {
        let holder = cluster.db_client().await;
        holder.batch_execute("BEGIN").await.unwrap();
        holder
            .execute(
                "SELECT 1 FROM repositories WHERE relative_path = $1 FOR UPDATE",
                &[&path],
            )
            .await
            .unwrap();
        RowLock {
            holder,
            watcher: cluster.db_client().await,
        }
    }

    /// Waits until a backend of the cluster's database waits for a lock: the
    /// router's record stuck behind this one.
    async fn wait_for_a_waiter(&self) {
        eventually!("the router's record waits for the lock", {
            let waiting: i64 = self
                .watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await?
                .get(0);
            anyhow::ensure!(waiting > 0, "not waiting yet");
            Ok(())
        });
    }

    /// Commits the transaction, freeing the row.
    async fn release(self) {
        self.holder.batch_execute("COMMIT").await.unwrap();
    }
}

/// Starts `git push` with stderr to a file.
fn spawn_push(work: &Path, url: &str, stderr: &Path) -> std::process::Child {
    git::command(work)
        .args(["push", url, "main"])
        .stderr(std::fs::File::create(stderr).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_hears_of_success_only_once_the_write_is_recorded() {
    let mut cluster = cluster(2, 0).await;
    cluster.expect_error("not recorded");
    let (work, url) = pushed_repo(&cluster, "held.git");
    for fail in [false, true] {
        std::fs::write(work.join("n.txt"), format!("{fail}\n")).unwrap();
        git::commit_all(&work, "next");
        // Stall the record: hold the repository row's lock the record needs.
        let lock = RowLock::hold(&cluster, "held.git").await;
        let stderr = cluster.dir().join(format!("push-{fail}.err"));
        let mut push = spawn_push(&work, &url, &stderr);
        lock.wait_for_a_waiter().await;
        // The primary applied the push; git must not know yet. That is an absence,
        // which polling cannot show: a router answering before its record would have
        // sent the report already, so give it a bounded time to travel through the
        // gateway to git before looking (no later event exists to wait for instead).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            push.try_wait().unwrap().is_none(),
            "git exited before the record"
        );
        let said = std::fs::read_to_string(&stderr).unwrap();
        assert!(
            !said.contains("main -> main"),
            "git printed the update early: {said}"
        );
        if fail {
            // The record cannot land: the repository is gone when the lock frees.
            lock.holder
                .execute(
                    "DELETE FROM repositories WHERE relative_path = 'held.git'",
                    &[],
                )
                .await
                .unwrap();
        }
        lock.release().await;
        let status = tokio::task::spawn_blocking(move || push.wait().unwrap())
            .await
            .unwrap();
        let said = std::fs::read_to_string(&stderr).unwrap();
        if fail {
            assert!(
                !status.success(),
                "a push whose record failed exited 0: {said}"
            );
        } else {
            assert!(status.success(), "{said}");
            assert!(said.contains("main -> main"), "{said}");
        }
    }
}

/// A receive-pack request body moving `refs/heads/main` from `old` to `new` in `work`.
fn push_body(work: &Path, old: &str, new: &str) -> Vec<u8> {
    let mut body = pkt(&format!(
        "{old} {new} refs/heads/main\0report-status side-band-64k\n"
    ));
    body.extend_from_slice(b"0000");
    let mut pack = git::command(work)
        .args(["pack-objects", "--stdout", "--revs", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    pack.stdin
        .take()
        .unwrap()
        .write_all(format!("{new}\n^{old}\n").as_bytes())
        .unwrap();
    body.extend(pack.wait_with_output().unwrap().stdout);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_push_gets_no_answer_until_its_write_is_recorded() {
    let cluster = cluster(2, 0).await;
    let (work, _) = pushed_repo(&cluster, "grpc.git");
    let old = git::run(&work, &["rev-parse", "HEAD"]);
    std::fs::write(work.join("n.txt"), "next\n").unwrap();
    let new = git::commit_all(&work, "next");
    let body = push_body(&work, &old, &new);

    let lock = RowLock::hold(&cluster, "grpc.git").await;
    let mut client = SmartHttpServiceClient::with_interceptor(
        cluster.router_channel(0).await,
        cluster.external_auth(),
    );
    let request = PostReceivePackRequest {
        repository: Some(cluster.virtual_repository("grpc.git")),
        data: body,
        git_protocol: String::new(),
    };
    let mut answer = client
        .post_receive_pack(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    lock.wait_for_a_waiter().await;
    // The primary applied the push; nothing of its report may reach the client yet.
    let early = tokio::time::timeout(Duration::from_millis(500), answer.message()).await;
    assert!(
        early.is_err(),
        "the report arrived before the record: {early:?}"
    );
    lock.release().await;
    let mut report = Vec::new();
    while let Some(m) = answer.message().await.unwrap() {
        report.extend(m.data);
    }
    assert!(
        String::from_utf8_lossy(&report).contains("ok refs/heads/main"),
        "{}",
        String::from_utf8_lossy(&report)
    );
}
