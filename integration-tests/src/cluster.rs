//! Whole clusters: storage nodes, routers, replicators, a gateway and a database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::*;

/// Builder for `Cluster`.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    storages: usize,
    gateway: bool,
    database: bool,
    token: String,
    gateway_auth: Option<String>,
    push_to_create: bool,
    routers: usize,
    replicators: usize,
    replicator_args: Vec<String>,
    gateway_args: Vec<String>,
}

/// Virtual storage the harness puts every storage node in when a database is used.
pub const VIRTUAL_STORAGE: &str = "default";

/// Retry delays the router declares by default (must match its own default).
const DEFAULT_RETRY_DELAYS_MS: [u64; 4] = [1000, 5000, 30000, 120000];

impl ClusterBuilder {
    /// Start `n` routers (implies a database; the gateway then points at router 1).
    pub fn routers(mut self, n: usize) -> Self {
        self.routers = n;
        self.database = true;
        self
    }
    /// Start `n` replicators (implies a database).
    pub fn replicators(mut self, n: usize) -> Self {
        self.replicators = n;
        self.database = true;
        self
    }
    /// Extra command-line arguments for every replicator, e.g. `--retry-delays-ms=100,200`.
    pub fn replicator_arg(mut self, arg: &str) -> Self {
        self.replicator_args.push(arg.to_owned());
        self
    }
    /// Number of storage nodes (each serves one storage named `gitaly-<n>`).
    pub fn storages(mut self, n: usize) -> Self {
        self.storages = n;
        self
    }
    /// Also start a gateway pointed at storage node 1.
    pub fn gateway(mut self) -> Self {
        self.gateway = true;
        self
    }
    /// Extra command-line argument for the gateway, e.g. `--body-idle-timeout-secs=3`.
    pub fn gateway_arg(mut self, arg: &str) -> Self {
        self.gateway_args.push(arg.to_owned());
        self
    }
    /// Require client credentials at the gateway.
    pub fn gateway_auth(mut self, token: &str) -> Self {
        self.gateway_auth = Some(token.to_owned());
        self
    }
    /// Turn push-to-create off at the gateway.
    pub fn no_push_to_create(mut self) -> Self {
        self.push_to_create = false;
        self
    }
    /// Create a fresh, migrated database for the cluster.
    pub fn database(mut self) -> Self {
        self.database = true;
        self
    }

    /// Retry tiers this cluster's services declare: the router's defaults plus any
    /// `--retry-delays-ms` given to replicators (so `Drop` can delete them all).
    fn retry_delays(&self) -> Vec<u64> {
        let mut delays = DEFAULT_RETRY_DELAYS_MS.to_vec();
        for arg in &self.replicator_args {
            if let Some(list) = arg.strip_prefix("--retry-delays-ms=") {
                delays.extend(list.split(',').filter_map(|d| d.trim().parse::<u64>().ok()));
            }
        }
        delays.sort_unstable();
        delays.dedup();
        delays
    }

    /// Starts every member and waits until each is ready.
    pub async fn start(self) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("gitcluster-it-")
            .tempdir()
            .expect("temp dir");
        let db = if self.database {
            Some(TestDb::create(true).await)
        } else {
            None
        };
        let mut cluster = Cluster {
            storages: Vec::new(),
            routers: Vec::new(),
            replicators: Vec::new(),
            gateway: None,
            db,
            token: self.token.clone(),
            external_token: format!("external-{}", uuid::Uuid::new_v4().simple()),
            bus_prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
            retry_delays: self.retry_delays(),
            expected_errors: Vec::new(),
            dir,
        };
        for i in 0..self.storages {
            cluster.start_storage(i).await;
        }
        if cluster.db.is_some() {
            cluster.apply_topology().await;
        }
        for i in 0..self.routers {
            cluster.start_router(i).await;
        }
        for i in 0..self.replicators {
            cluster.start_replicator(i, &self.replicator_args).await;
        }
        if self.gateway {
            // Through a router the gateway is an external client; otherwise it talks
            // to storage node 1 with the internal token.
            let (upstream, token) = match cluster.routers.first() {
                Some(r) => (r.address.clone(), cluster.external_token.clone()),
                None => (
                    cluster
                        .storages
                        .first()
                        .map(|s| s.address.clone())
                        .expect("a storage node"),
                    self.token.clone(),
                ),
            };
            let (mut member, port) = cluster.gateway_member("gateway", &upstream, &token);
            member = member
                .arg(format!("--push-to-create={}", self.push_to_create))
                .args(self.gateway_args.iter().cloned());
            if let Some(t) = &self.gateway_auth {
                member = member.env("GITCLUSTER_GATEWAY_AUTH_TOKEN", t);
            }
            cluster.gateway = Some(Gateway::start(member, port).await);
        }
        cluster
    }
}

/// A storage node member and what a test needs to reach it.
#[derive(Debug)]
pub struct StorageNode {
    /// The process.
    pub member: Member,
    /// gRPC address, `http://127.0.0.1:<port>`.
    pub address: String,
    /// Name of the one storage it serves.
    pub storage: String,
    /// Directory of that storage.
    pub root: PathBuf,
}

/// The gateway member.
#[derive(Debug)]
pub struct Gateway {
    /// The process.
    pub member: Member,
    /// Base URL, `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Gateway {
    /// Starts `member`, a gateway listening on loopback `port`, and waits until it
    /// is ready.
    async fn start(member: Member, port: u16) -> Gateway {
        Gateway {
            url: format!("http://127.0.0.1:{port}"),
            member: member.start().await,
        }
    }
}

/// A gRPC channel to `address` (`http://host:port`); panics when it cannot connect.
pub async fn grpc_channel(address: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(address.to_owned())
        .unwrap_or_else(|e| panic!("address {address}: {e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {address}: {e}"))
}

/// Waits until the router `router` holds a publisher on the job bus (its
/// `gitcluster_router_bus_connected` gauge reads 1); jobs of writes made before
/// that stay pending.
pub async fn wait_router_on_bus(router: &Member) {
    eventually!("router connected to the job bus", {
        let m = router.metrics().await?;
        anyhow::ensure!(
            metric_sum(&m, "gitcluster_router_bus_connected", &[]) == 1.0,
            "not yet"
        );
        Ok(())
    });
}

/// A repository's row in `repositories`, as the harness reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryRecord {
    /// `repository_id`.
    pub id: i64,
    /// Where its replicas live, the same on every storage.
    pub replica_path: String,
    /// Its primary storage.
    pub primary: String,
    /// Its latest generation.
    pub generation: i64,
}

/// A router member.
#[derive(Debug)]
pub struct Router {
    /// The process.
    pub member: Member,
    /// gRPC address, `http://127.0.0.1:<port>`.
    pub address: String,
}

/// RabbitMQ URL for tests: `AMQP_URL`, default the local broker as guest.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A running cluster of our binaries. Dropping it kills every member and checks logs.
pub struct Cluster {
    /// Storage nodes, in start order.
    pub storages: Vec<StorageNode>,
    /// Routers, in start order.
    pub routers: Vec<Router>,
    /// Replicators, in start order.
    pub replicators: Vec<Member>,
    /// Token clients present to routers.
    pub external_token: String,
    /// Prefix of this cluster's exchanges and queues (unique per test).
    pub bus_prefix: String,
    retry_delays: Vec<u64>,
    /// The gateway, when started.
    pub gateway: Option<Gateway>,
    /// The cluster's database, when requested.
    pub db: Option<TestDb>,
    /// Internal token shared by the cluster.
    pub token: String,
    expected_errors: Vec<String>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// A builder with one storage node and nothing else.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            storages: 1,
            gateway: false,
            database: false,
            token: format!("internal-{}", uuid::Uuid::new_v4().simple()),
            gateway_auth: None,
            push_to_create: true,
            routers: 0,
            replicators: 0,
            replicator_args: Vec::new(),
            gateway_args: Vec::new(),
        }
    }

    /// Inserts virtual storage `default` holding every storage node.
    async fn apply_topology(&self) {
        let client = self.db.as_ref().expect("database").client().await;
        client
            .execute(
                "INSERT INTO virtual_storages (name) VALUES ($1)",
                &[&VIRTUAL_STORAGE],
            )
            .await
            .expect("insert virtual storage");
        for s in &self.storages {
            client
                .execute(
                    "INSERT INTO storages (virtual_storage, storage, address) VALUES ($1, $2, $3)",
                    &[&VIRTUAL_STORAGE, &s.storage, &s.address],
                )
                .await
                .expect("insert storage");
        }
    }

    fn service_env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert(
            "DATABASE_URL".into(),
            self.db.as_ref().expect("database").url.clone(),
        );
        env.insert("AMQP_URL".into(), amqp_url());
        env.insert("GITCLUSTER_BUS_PREFIX".into(), self.bus_prefix.clone());
        env.insert("GITCLUSTER_INTERNAL_TOKEN".into(), self.token.clone());
        env
    }

    async fn start_router(&mut self, i: usize) {
        let port = free_port();
        let name = format!("router-{}", i + 1);
        let member = Member::new(&name, binary("gitcluster-router"), self.dir.path())
            .args([
                format!("--listen=127.0.0.1:{port}"),
                format!("--name={name}"),
                "--health-interval-ms=300".into(),
            ])
            .envs(self.service_env())
            .env("GITCLUSTER_ROUTER_TOKEN", &self.external_token)
            .start()
            .await;
        // Writes made before the publisher connects stay pending until the outbox relay
        // (reconciler) exists; scenarios want their jobs on the bus, so wait for it.
        wait_router_on_bus(&member).await;
        self.routers.push(Router {
            member,
            address: format!("http://127.0.0.1:{port}"),
        });
    }

    async fn start_replicator(&mut self, i: usize, extra: &[String]) {
        let member = Member::new(
            format!("replicator-{}", i + 1),
            binary("gitcluster-replicator"),
            self.dir.path(),
        )
        .args(extra.iter().cloned())
        .envs(self.service_env())
        .start()
        .await;
        self.replicators.push(member);
    }

    /// A gateway member named `name` in front of `upstream`, presenting `token`
    /// there, and the port it will listen on; not started.
    fn gateway_member(&self, name: &str, upstream: &str, token: &str) -> (Member, u16) {
        let port = free_port();
        let member = Member::new(name, binary("gitcluster-gateway"), self.dir.path())
            .args([
                format!("--listen=127.0.0.1:{port}"),
                format!("--upstream={upstream}"),
            ])
            .env("GITCLUSTER_GATEWAY_UPSTREAM_TOKEN", token);
        (member, port)
    }

    /// Starts an extra gateway (not checked for ERROR lines) in front of `upstream`,
    /// e.g. a storage node directly, to compare paths in benchmarks.
    pub async fn extra_gateway(&self, name: &str, upstream: &str, token: &str) -> Gateway {
        let (member, port) = self.gateway_member(name, upstream, token);
        Gateway::start(member, port).await
    }

    /// A gRPC channel to router `i` (0-based).
    pub async fn router_channel(&self, i: usize) -> tonic::transport::Channel {
        grpc_channel(&self.routers[i].address).await
    }

    /// Interceptor carrying the external (client) token, for calls through a router.
    pub fn external_auth(&self) -> gitcluster_proto::auth::BearerToken {
        gitcluster_proto::auth::BearerToken::new(Some(&self.external_token)).expect("ascii token")
    }

    /// A `Repository` message on the virtual storage, for calls through a router.
    pub fn virtual_repository(&self, relative_path: &str) -> gitcluster_proto::v1::Repository {
        gitcluster_proto::v1::Repository {
            storage_name: VIRTUAL_STORAGE.to_owned(),
            relative_path: relative_path.to_owned(),
        }
    }

    async fn start_storage(&mut self, i: usize) {
        let name = format!("gitaly-{}", i + 1);
        let root = self.dir.path().join(&name);
        let port = free_port();
        let member = Member::new(
            format!("storage-{}", i + 1),
            binary("gitcluster-storage"),
            self.dir.path(),
        )
        .args([
            format!("--listen=127.0.0.1:{port}"),
            format!("--storage={name}={}", root.display()),
        ])
        .env("GITCLUSTER_STORAGE_TOKEN", &self.token)
        .start()
        .await;
        self.storages.push(StorageNode {
            member,
            address: format!("http://127.0.0.1:{port}"),
            storage: name,
            root,
        });
    }

    /// The cluster's temp dir (logs, storages, scratch space for tests).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The gateway's base URL; panics when no gateway was started.
    pub fn gateway_url(&self) -> &str {
        &self.gateway.as_ref().expect("cluster has a gateway").url
    }

    /// URL of a repository through the gateway: on the virtual storage when the
    /// gateway points at a router, otherwise on storage node 1.
    pub fn repo_url(&self, relative_path: &str) -> String {
        let storage = if self.routers.is_empty() {
            self.storages[0].storage.as_str()
        } else {
            VIRTUAL_STORAGE
        };
        format!("{}/{storage}/{relative_path}", self.gateway_url())
    }

    /// A gRPC channel to storage node `i` (0-based).
    pub async fn channel(&self, i: usize) -> tonic::transport::Channel {
        grpc_channel(&self.storages[i].address).await
    }

    /// A `Repository` message for `relative_path` on storage node `i`.
    pub fn repository(&self, i: usize, relative_path: &str) -> gitcluster_proto::v1::Repository {
        gitcluster_proto::v1::Repository {
            storage_name: self.storages[i].storage.clone(),
            relative_path: relative_path.to_owned(),
        }
    }

    /// Interceptor carrying the cluster's internal token.
    pub fn auth(&self) -> gitcluster_proto::auth::BearerToken {
        gitcluster_proto::auth::BearerToken::new(Some(&self.token)).expect("ascii token")
    }

    /// A RepositoryService client for storage node `i`, presenting the internal token.
    pub async fn repository_client(
        &self,
        i: usize,
    ) -> gitcluster_proto::v1::repository_service_client::RepositoryServiceClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            gitcluster_proto::auth::BearerToken,
        >,
    > {
        gitcluster_proto::v1::repository_service_client::RepositoryServiceClient::with_interceptor(
            self.channel(i).await,
            self.auth(),
        )
    }

    /// A new connection to the cluster's database; panics when it has none.
    pub async fn db_client(&self) -> tokio_postgres::Client {
        self.db
            .as_ref()
            .expect("cluster has a database")
            .client()
            .await
    }

    /// The record of `relative_path` on virtual storage [`VIRTUAL_STORAGE`]; `None`
    /// when there is no such repository. Panics without a database.
    pub async fn repository_record(&self, relative_path: &str) -> Option<RepositoryRecord> {
        self.db_client()
            .await
            .query_opt(
                "SELECT repository_id, replica_path, \"primary\", generation FROM repositories \
                 WHERE virtual_storage = $1 AND relative_path = $2",
                &[&VIRTUAL_STORAGE, &relative_path],
            )
            .await
            .expect("query repositories")
            .map(|r| RepositoryRecord {
                id: r.get(0),
                replica_path: r.get(1),
                primary: r.get(2),
                generation: r.get(3),
            })
    }

    /// How many rows of `repositories` have `relative_path`, on any virtual storage
    /// (at most one a virtual storage). Panics without a database.
    pub async fn repositories_at(&self, relative_path: &str) -> i64 {
        self.db_client()
            .await
            .query_one(
                "SELECT count(*) FROM repositories WHERE relative_path = $1",
                &[&relative_path],
            )
            .await
            .expect("count repositories")
            .get(0)
    }

    /// `(storage, generation)` of every replica of repository `id`, sorted by
    /// storage. Panics without a database.
    pub async fn replica_generations(&self, id: i64) -> Vec<(String, i64)> {
        self.db_client()
            .await
            .query(
                "SELECT storage, generation FROM storage_repositories WHERE repository_id = $1 \
                 ORDER BY storage",
                &[&id],
            )
            .await
            .expect("query storage_repositories")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Declares that log lines containing `needle` at ERROR level are expected.
    pub fn expect_error(&mut self, needle: &str) {
        self.expected_errors.push(needle.to_owned());
    }

    fn members(&self) -> Vec<&Member> {
        let mut out: Vec<&Member> = self.storages.iter().map(|s| &s.member).collect();
        out.extend(self.routers.iter().map(|r| &r.member));
        out.extend(self.replicators.iter());
        out.extend(self.gateway.as_ref().map(|g| &g.member));
        out
    }

    /// ERROR lines in the members' logs not declared with `expect_error`.
    pub fn unexpected_errors(&self) -> Vec<String> {
        self.members()
            .into_iter()
            .flat_map(|m| {
                m.unexpected_errors(&self.expected_errors)
                    .into_iter()
                    .map(move |line| format!("{}: {line}", m.name))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(g) = &mut self.gateway {
            g.member.kill();
        }
        for r in &mut self.routers {
            r.member.kill();
        }
        for r in &mut self.replicators {
            r.kill();
        }
        for s in &mut self.storages {
            s.member.kill();
        }
        if self.db.is_some() {
            let storages: Vec<String> = self.storages.iter().map(|s| s.storage.clone()).collect();
            bus::delete_topology(&self.bus_prefix, &storages, &self.retry_delays);
        }
        if std::thread::panicking() {
            // Keep the evidence of a failed test.
            let kept =
                std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")).keep();
            eprintln!("cluster logs and storages kept in {}", kept.display());
            return;
        }
        let errors = self.unexpected_errors();
        assert!(
            errors.is_empty(),
            "unexpected ERROR log lines:\n{}",
            errors.join("\n")
        );
    }
}
