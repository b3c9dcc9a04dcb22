//! A real `gitcluster-router` process in front of a harness cluster of real storage
//! nodes, Postgres and RabbitMQ, plus the helpers the scenarios share.

#![allow(dead_code, clippy::disallowed_methods)] // not every test uses every helper; tests block on children

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gitcluster_integration_tests::{
    Cluster, amqp_url, free_port, git, http_get, metric_sum, patience,
};
use gitcluster_proto::auth::BearerToken;
use gitcluster_proto::v1::ref_service_client::RefServiceClient;
use gitcluster_proto::v1::repository_service_client::RepositoryServiceClient;
use gitcluster_proto::v1::{CreateRepositoryRequest, Repository};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A router child process; killed on drop, and its log checked for ERROR lines.
pub struct TestRouter {
    child: Option<Child>,
    /// gRPC address, `http://127.0.0.1:<port>`.
    pub address: String,
    /// Admin address.
    pub metrics_addr: SocketAddr,
    log: PathBuf,
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
    /// serves.
    pub async fn start(cluster: &Cluster, options: Options) -> TestRouter {
        let port = free_port();
        let metrics = free_port();
        let log = cluster.dir().join(format!("router-{port}.log"));
        let file = std::fs::File::create(&log).expect("create router log");
        let child = Command::new(env!("CARGO_BIN_EXE_gitcluster-router"))
            .args([
                format!("--listen=127.0.0.1:{port}"),
                format!("--metrics-listen=127.0.0.1:{metrics}"),
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
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env(
                "DATABASE_URL",
                options
                    .database_url
                    .as_deref()
                    .unwrap_or(&cluster.db.as_ref().expect("database").url),
            )
            .env("GITCLUSTER_ROUTER_TOKEN", &cluster.external_token)
            .env("GITCLUSTER_INTERNAL_TOKEN", &cluster.token)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log"))
            .stderr(file)
            .spawn()
            .expect("spawn router");
        let mut router = TestRouter {
            child: Some(child),
            address: format!("http://127.0.0.1:{port}"),
            metrics_addr: ([127, 0, 0, 1], metrics).into(),
            log,
            expected_errors: Vec::new(),
            external_token: cluster.external_token.clone(),
        };
        let deadline = tokio::time::Instant::now() + patience();
        loop {
            if let Ok((200, _)) = http_get(router.metrics_addr, "/healthz").await {
                break;
            }
            if let Some(Ok(Some(status))) = router.child.as_mut().map(Child::try_wait) {
                panic!("router exited with {status}:\n{}", router.log());
            }
            assert!(tokio::time::Instant::now() < deadline, "router not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Jobs written before the publisher connects stay pending (the outbox relay is
        // the reconciler's): wait for the bus unless the test points it nowhere.
        if options.amqp_url == amqp_url() {
            loop {
                let m = router.metrics().await;
                if metric_sum(&m, "gitcluster_router_bus_connected", &[]) == 1.0 {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "router never reached the bus"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        router
    }

    /// The router's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Declares ERROR log lines containing `needle` as expected.
    pub fn expect_error(&mut self, needle: &str) {
        self.expected_errors.push(needle.to_owned());
    }

    /// A channel to the router.
    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(self.address.clone())
            .expect("address")
            .connect()
            .await
            .expect("connect to router")
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
        self.sigterm();
        self.exit_status().await
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let pid = self.child.as_ref().expect("router running").id();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
    }

    /// Waits (at most the harness's patience) for the router to exit.
    pub async fn exit_status(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + patience();
        loop {
            let exited = self.child.as_mut().map(Child::try_wait);
            if let Some(status) = exited.and_then(|r| r.expect("wait for router")) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "router still running after SIGTERM:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        http_get(self.metrics_addr, "/metrics")
            .await
            .expect("GET /metrics")
            .1
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("router log:\n{}", self.log());
            return;
        }
        let errors: Vec<String> = self
            .log()
            .lines()
            .filter(|l| l.contains("\"level\":\"ERROR\""))
            .filter(|l| !self.expected_errors.iter().any(|n| l.contains(n.as_str())))
            .map(str::to_owned)
            .collect();
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
    cluster.db.as_ref().expect("database").client().await
}

/// `(repository_id, replica_path, primary, generation)` of `path`.
pub async fn record(cluster: &Cluster, path: &str) -> Option<(i64, String, String, i64)> {
    db(cluster)
        .await
        .query_opt(
            "SELECT repository_id, replica_path, \"primary\", generation FROM repositories \
             WHERE virtual_storage = 'default' AND relative_path = $1",
            &[&path],
        )
        .await
        .expect("query repository")
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

/// Replica generations of repository `id`, by storage, sorted.
pub async fn generations(cluster: &Cluster, id: i64) -> Vec<(String, i64)> {
    db(cluster)
        .await
        .query(
            "SELECT storage, generation FROM storage_repositories WHERE repository_id = $1 \
             ORDER BY storage",
            &[&id],
        )
        .await
        .expect("query replicas")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
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
