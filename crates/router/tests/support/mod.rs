//! A real `gitcluster-router` process in front of a harness cluster of real storage
//! nodes, Postgres and RabbitMQ, plus the helpers the scenarios share.

#![allow(dead_code, clippy::disallowed_methods)] // not every test uses every helper; tests block on children

use std::path::{Path, PathBuf};
use std::process::Stdio;

use gitcluster_integration_tests::{
    Cluster, Member, amqp_url, eventually, free_port, git, grpc_channel, wait_router_on_bus,
};
use gitcluster_proto::auth::BearerToken;
use gitcluster_proto::v1::ref_service_client::RefServiceClient;
use gitcluster_proto::v1::repository_service_client::RepositoryServiceClient;
use gitcluster_proto::v1::update_references_request::Update;
use gitcluster_proto::v1::{
    CreateRepositoryRequest, FindDefaultBranchRequest, Repository, SetDefaultBranchRequest,
    UpdateReferencesRequest,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A router [`Member`] in front of a harness cluster; killed on drop, and its log
/// checked for ERROR lines not declared with [`expect_error`](Self::expect_error).
pub struct TestRouter {
    member: Member,
    /// gRPC address, `http://127.0.0.1:<port>`.
    pub address: String,
    expected_errors: Vec<String>,
    /// Token clients present.
    pub external_token: String,
}

/// Options of a test router.
pub struct Options {
    /// `--amqp-url`.
    pub amqp_url: String,
    /// `--serve-threads`; the router's default when `None`.
    pub serve_threads: Option<usize>,
    /// `--name`; `test-router` when `None`.
    pub name: Option<String>,
    /// `DATABASE_URL`; the cluster's database when `None`.
    pub database_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            amqp_url: amqp_url(),
            serve_threads: None,
            name: None,
            database_url: None,
        }
    }
}

impl TestRouter {
    /// Starts a router for `cluster` (which must have a database) and waits until it
    /// serves and, unless `options` point it at another broker, holds a publisher on
    /// the job bus.
    pub async fn start(cluster: &Cluster, options: Options) -> TestRouter {
        let port = free_port();
        let database_url = options
            .database_url
            .clone()
            .unwrap_or_else(|| cluster.db.as_ref().expect("database").url.clone());
        let member = Member::new(
            format!("router-{port}"),
            env!("CARGO_BIN_EXE_gitcluster-router"),
            cluster.dir(),
        )
        .args([
            format!("--listen=127.0.0.1:{port}"),
            format!("--amqp-url={}", options.amqp_url),
            format!("--bus-prefix={}", cluster.bus_prefix),
            format!(
                "--name={}",
                options.name.as_deref().unwrap_or("test-router")
            ),
            "--health-interval-ms=200".to_owned(),
        ])
        .args(
            options
                .serve_threads
                .map(|n| format!("--serve-threads={n}")),
        )
        .env("DATABASE_URL", database_url)
        .env("GITCLUSTER_ROUTER_TOKEN", &cluster.external_token)
        .env("GITCLUSTER_INTERNAL_TOKEN", &cluster.token)
        .start()
        .await;
        // Jobs written before the publisher connects stay pending (the outbox relay is
        // the reconciler's): wait for the bus unless the test points it nowhere.
        if options.amqp_url == amqp_url() {
            wait_router_on_bus(&member).await;
        }
        TestRouter {
            member,
            address: format!("http://127.0.0.1:{port}"),
            expected_errors: Vec::new(),
            external_token: cluster.external_token.clone(),
        }
    }

    /// The router's log so far.
    pub fn log(&self) -> String {
        self.member.log()
    }

    /// Declares ERROR log lines containing `needle` as expected.
    pub fn expect_error(&mut self, needle: &str) {
        self.expected_errors.push(needle.to_owned());
    }

    /// A channel to the router.
    pub async fn channel(&self) -> Channel {
        grpc_channel(&self.address).await
    }

    /// Repository client presenting `token`.
    pub async fn repository_client_with(
        &self,
        token: Option<&str>,
    ) -> RepositoryServiceClient<InterceptedService<Channel, BearerToken>> {
        RepositoryServiceClient::with_interceptor(
            self.channel().await,
            BearerToken::new(token).expect("token"),
        )
    }

    /// Repository client presenting the external token.
    pub async fn repository_client(
        &self,
    ) -> RepositoryServiceClient<InterceptedService<Channel, BearerToken>> {
        self.repository_client_with(Some(&self.external_token.clone()))
            .await
    }

    /// Ref client presenting the external token.
    pub async fn ref_client(&self) -> RefServiceClient<InterceptedService<Channel, BearerToken>> {
        RefServiceClient::with_interceptor(
            self.channel().await,
            BearerToken::new(Some(&self.external_token)).expect("token"),
        )
    }

    /// Sends SIGTERM and waits (at most the harness's patience) for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.member.terminate().await
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.member.sigterm();
    }

    /// Waits (at most the harness's patience) for the router to exit.
    pub async fn exit_status(&mut self) -> std::process::ExitStatus {
        self.member.wait_exit().await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.member.metrics().await.expect("GET /metrics")
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        self.member.kill();
        if std::thread::panicking() {
            eprintln!("router log:\n{}", self.log());
            return;
        }
        let errors = self.member.unexpected_errors(&self.expected_errors);
        assert!(
            errors.is_empty(),
            "unexpected ERROR lines:\n{}",
            errors.join("\n")
        );
    }
}

/// A cluster of three storage nodes with a database and topology `default`.
pub async fn cluster() -> Cluster {
    Cluster::builder().storages(3).database().start().await
}

/// A repository on the virtual storage.
pub fn repo(path: &str) -> Repository {
    Repository {
        storage_name: "default".into(),
        relative_path: path.into(),
    }
}

/// Creates `path` through the router.
pub async fn create(router: &TestRouter, path: &str) {
    router
        .repository_client()
        .await
        .create_repository(CreateRepositoryRequest {
            repository: Some(repo(path)),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create {path}: {e:?}"));
}

/// A database connection.
pub async fn db(cluster: &Cluster) -> tokio_postgres::Client {
    cluster.db_client().await
}

/// `(repository_id, replica_path, primary, generation)` of `path`.
pub async fn record(cluster: &Cluster, path: &str) -> Option<(i64, String, String, i64)> {
    let r = cluster.repository_record(path).await?;
    Some((r.id, r.replica_path, r.primary, r.generation))
}

/// Replica generations of repository `id`, by storage, sorted.
pub async fn generations(cluster: &Cluster, id: i64) -> Vec<(String, i64)> {
    cluster.replica_generations(id).await
}

/// Directory of `replica_path` on storage node `i`.
pub fn replica_dir(cluster: &Cluster, i: usize, replica_path: &str) -> PathBuf {
    cluster.storages[i].root.join(replica_path)
}

/// Writes the same root commit (empty tree, fixed dates) into `dir` and returns its id.
pub fn seed_commit(dir: &Path) -> String {
    let tree = git::command(dir)
        .arg("mktree")
        .stdin(Stdio::null())
        .output()
        .expect("git mktree");
    assert!(tree.status.success(), "mktree failed");
    let tree = String::from_utf8_lossy(&tree.stdout).trim().to_owned();
    let out = git::command(dir)
        .args(["commit-tree", &tree, "-m", "seed"])
        .env("GIT_AUTHOR_DATE", "1700000000 +0000")
        .env("GIT_COMMITTER_DATE", "1700000000 +0000")
        .output()
        .expect("git commit-tree");
    assert!(
        out.status.success(),
        "commit-tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Sum of the read-distribution counter for `storage`.
pub fn reads_on(metrics: &str, storage: &str) -> f64 {
    gitcluster_integration_tests::metric_sum(
        metrics,
        "gitcluster_router_read_distribution_total",
        &[("virtual_storage", "default"), ("storage", storage)],
    )
}

/// The storages of [`cluster`], in order.
pub const STORAGES: [&str; 3] = ["gitaly-1", "gitaly-2", "gitaly-3"];

/// A repository created through the router with a commit written into its primary.
pub struct Seeded {
    /// `repository_id`.
    pub id: i64,
    /// Its replica path.
    pub replica_path: String,
    /// Its primary storage.
    pub primary: String,
    /// Index of the primary in [`STORAGES`].
    pub primary_index: usize,
    /// The commit written (and, after [`create_with_main`], the one `main` points at).
    pub oid: String,
}

/// Creates `path` through the router and writes a commit (no ref yet) straight into
/// its primary's replica.
pub async fn seeded(cluster: &Cluster, router: &TestRouter, path: &str) -> Seeded {
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

/// Creates `path`, writes a root commit into the primary's replica and points
/// `refs/heads/main` at it with UpdateReferences through the router (one write: the
/// primary goes to generation 1, the others stay at 0 until replicated).
pub async fn create_with_main(cluster: &Cluster, router: &TestRouter, path: &str) -> Seeded {
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

/// SetDefaultBranch of `path` to `name` through the router: a write.
pub async fn set_default_branch(
    router: &TestRouter,
    path: &str,
    name: &str,
) -> Result<(), tonic::Status> {
    router
        .ref_client()
        .await
        .set_default_branch(SetDefaultBranchRequest {
            repository: Some(repo(path)),
            name: name.into(),
        })
        .await
        .map(drop)
}

/// FindDefaultBranch of `path` through the router, with the primary-only routing
/// header when `primary_only`: a read.
pub async fn read(
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

/// Waits until 30 reads in a row of `path` avoid gitaly-2 (30 uniform reads over
/// three replicas all miss one of them with probability (2/3)^30, about 5e-6).
pub async fn reads_avoid_gitaly_2(router: &TestRouter, path: &str, what: &str) {
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
