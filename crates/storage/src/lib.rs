//! gitcluster's storage node ("our Gitaly"): serves bare Git repositories on local
//! disk over gRPC — repository lifecycle, references, objects, smart HTTP, and
//! node-to-node replication.
//!
//! [`run`] binds the listeners, serves until the shutdown token fires, then drains.

pub mod checksum;
pub mod config;
pub mod fence;
mod fsops;
pub mod git;
pub mod internal;
pub mod metrics;
pub mod objects;
pub mod paths;
pub mod peer;
pub mod refs;
pub mod refstate;
pub mod replicate;
pub mod repository;
pub mod slots;
pub mod smarthttp;
pub mod ssh;
mod stream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use gitcluster_common::admin;
use gitcluster_proto::MAX_MESSAGE_BYTES;
use gitcluster_proto::auth::TokenAuth;
use gitcluster_proto::v1::internal_service_server::InternalServiceServer;
use gitcluster_proto::v1::object_service_server::ObjectServiceServer;
use gitcluster_proto::v1::ref_service_server::RefServiceServer;
use gitcluster_proto::v1::repository_service_server::RepositoryServiceServer;
use gitcluster_proto::v1::smart_http_service_server::SmartHttpServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tracing::{info, warn};

use crate::config::Config;
use crate::git::Git;
use crate::paths::Storages;

/// Response metadata key carrying the id of the node that served a request; the
/// replicator uses it to refuse replicating a repository onto itself.
pub const NODE_ID_METADATA: &str = "x-gitcluster-node-id";

/// What every handler shares: the storages, the git runner and node identity.
#[derive(Debug)]
pub struct Node {
    /// Configured storages.
    pub storages: Storages,
    /// The git runner.
    pub git: Git,
    /// The shared internal token, also used when calling other nodes.
    pub token: Option<String>,
    /// Executable `git fetch` uses as its ssh transport during replication.
    pub ssh_helper: PathBuf,
    /// Random id of this process, see [`NODE_ID_METADATA`].
    pub id: String,
    /// Held by each ReplicateRepository for its target, so replications onto one
    /// repository never interleave.
    pub replicating: fence::PathLocks,
    /// Held shared by every ref-changing write for its repository and exclusively by
    /// a conditional removal (see [`fence`]).
    pub writes: fence::PathLocks,
    /// Process slot and stream limits ([`slots`]).
    pub limits: slots::Limits,
}

/// The bound listeners of a node.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// Admin HTTP (`/metrics`, `/healthz`).
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both listeners and logs their addresses.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind grpc listener {}", config.listen))?;
        let admin = TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| format!("bind metrics listener {}", config.metrics_listen))?;
        info!(addr = %grpc.local_addr()?, "grpc listener bound");
        info!(addr = %admin.local_addr()?, "metrics listener bound");
        Ok(Listeners { grpc, admin })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }
}

/// Binds the listeners from `config`, then serves until `shutdown` fires and drains.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config).await?;
    serve(config, listeners, shutdown).await
}

/// Serves on already-bound listeners until `shutdown` fires, then drains in-flight
/// requests for at most `config.graceful_timeout`.
pub async fn serve(
    mut config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.prepare_storages()?;
    let storages = Storages::open(&config.storages).context("open storages")?;
    for s in &config.storages {
        info!(storage = %s.name, path = %s.path.display(), "serving storage");
    }
    if config.token.is_none() {
        warn!("no token configured: authentication is disabled");
    }
    // Scratch older than the bound that no operation holds goes while we run, not
    // only at the next start (see `paths::sweep_temp`).
    let _temp_sweeper = paths::spawn_temp_sweeper(
        storages.tmp_dirs(),
        config.temp_max_age,
        config.temp_sweep_interval,
        shutdown.clone(),
    );
    let git = Git::with_limits(
        config.git_bin.clone(),
        storages.git_home(),
        config.max_git_processes,
        &config.limits,
    );
    let node = Arc::new(Node {
        storages,
        git,
        token: config.token.clone(),
        ssh_helper: config.ssh_helper.clone(),
        id: uuid::Uuid::new_v4().to_string(),
        replicating: fence::PathLocks::default(),
        writes: fence::PathLocks::default(),
        limits: config.limits.clone(),
    });

    let readiness = admin::Readiness::default();
    let admin_task = tokio::spawn(admin::serve(
        listeners.admin,
        admin::install_metrics()?,
        readiness.clone(),
        shutdown.clone(),
    ));

    let auth = TokenAuth::new(config.token.clone(), config.auth_transitioning);
    macro_rules! configured {
        ($server:ident, $handler:expr) => {
            InterceptedService::new(
                $server::new($handler)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
                    // Accept gzip from clients, never compress replies: pack data is
                    // already compressed, and gzipping it cost 60% of clone throughput.
                    .accept_compressed(CompressionEncoding::Gzip),
                auth.clone(),
            )
        };
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    macro_rules! each_service {
        ($method:ident) => {
            health
                .$method::<RepositoryServiceServer<repository::Repositories>>()
                .await;
            health.$method::<RefServiceServer<refs::Refs>>().await;
            health
                .$method::<ObjectServiceServer<objects::Objects>>()
                .await;
            health
                .$method::<SmartHttpServiceServer<smarthttp::SmartHttp>>()
                .await;
            health
                .$method::<InternalServiceServer<internal::Internal>>()
                .await;
        };
    }
    each_service!(set_serving);

    let router = tonic::transport::Server::builder()
        .layer(metrics::RequestMetricsLayer)
        .add_service(health_service)
        .add_service(gitcluster_proto::reflection_service()?)
        .add_service(configured!(
            RepositoryServiceServer,
            repository::Repositories::new(node.clone())
        ))
        .add_service(configured!(RefServiceServer, refs::Refs::new(node.clone())))
        .add_service(configured!(
            ObjectServiceServer,
            objects::Objects::new(node.clone())
        ))
        .add_service(configured!(
            SmartHttpServiceServer,
            smarthttp::SmartHttp::new(node.clone())
        ))
        .add_service(configured!(
            InternalServiceServer,
            internal::Internal::new(node.clone())
        ));

    // Small gRPC frames must not wait for delayed ACKs (Nagle costs ~40 ms a call).
    let incoming =
        tonic::transport::server::TcpIncoming::from(listeners.grpc).with_nodelay(Some(true));
    let server = router.serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    tokio::pin!(server);
    readiness.set(true);
    info!(node_id = %node.id, "storage node serving");

    tokio::select! {
        biased;
        () = shutdown.cancelled() => {}
        result = &mut server => {
            result.context("grpc server")?;
            anyhow::bail!("grpc server stopped before shutdown was requested");
        }
    }
    // Shutdown order: report not ready (admin + gRPC health) so balancers stop
    // sending, the server stops accepting (it watches the same token), in-flight
    // requests drain under one deadline, and git processes of abandoned requests are
    // killed when their handlers drop.
    readiness.set(false);
    each_service!(set_not_serving);
    info!(timeout = ?config.graceful_timeout, "draining in-flight requests");
    match tokio::time::timeout(config.graceful_timeout, &mut server).await {
        Ok(result) => result.context("grpc server")?,
        Err(_) => warn!("drain deadline passed, abandoning in-flight requests"),
    }
    match admin_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "admin server failed"),
        Err(e) => warn!(error = %e, "admin server task failed"),
    }
    info!("storage node stopped");
    Ok(())
}
