//! The router: a transparent gRPC proxy in front of the storage nodes. Per RPC it
//! classifies the call, resolves repository metadata, and sends accessors to an
//! up-to-date replica, mutators to the primary and maintenance to every replica.
//!
//! This is the skeleton: it binds its listeners, passes the schema gate and serves
//! the admin port, but proxies nothing yet.

use std::net::SocketAddr;

use anyhow::Context;
use gitcluster_migrations::redact_url;
use gitcluster_proto::admin::{self, Readiness};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The router's configuration: every flag, its environment variable and default.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gitcluster-router",
    version,
    about = "gitcluster router: gRPC proxy to the storage nodes"
)]
pub struct Config {
    /// Address of the gRPC proxy (bound, not served yet).
    #[arg(long, env = "GITCLUSTER_ROUTER_LISTEN", default_value = "0.0.0.0:2305")]
    pub listen: SocketAddr,
    /// Address of the admin HTTP port serving `/metrics` and `/healthz`.
    #[arg(
        long,
        env = "GITCLUSTER_ROUTER_METRICS_LISTEN",
        default_value = "0.0.0.0:9652"
    )]
    pub metrics_listen: SocketAddr,
    /// PostgreSQL URL of the cluster database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub dump_config: bool,
}

impl Config {
    /// Checks what clap cannot; the message never contains a secret.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.database_url
            .parse::<tokio_postgres::Config>()
            .map(drop)
            .context("--database-url is not a valid PostgreSQL URL")
    }

    /// The effective configuration as `key = "value"` lines, secrets redacted.
    pub fn dump(&self) -> String {
        format!(
            "listen = \"{}\"\nmetrics_listen = \"{}\"\ndatabase_url = \"{}\"\n",
            self.listen,
            self.metrics_listen,
            redact_url(&self.database_url)
        )
    }
}

/// Runs the router until `shutdown` fires. Fails with a
/// [`gitcluster_migrations::SchemaError`] when the database is unreachable or its
/// schema is not the one this build expects.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = TcpListener::bind(config.metrics_listen)
        .await
        .context("bind metrics listener")?;
    info!(addr = %metrics.local_addr()?, "metrics listener bound");
    // Held so that a port clash fails start-up now rather than when proxying lands.
    let grpc = TcpListener::bind(config.listen)
        .await
        .context("bind grpc listener")?;
    info!(addr = %grpc.local_addr()?, "grpc listener bound");

    // The admin port answers 503 on /healthz until the schema gate passes.
    let ready = Readiness::default();
    let admin = tokio::spawn(admin::serve(
        metrics,
        admin::install_metrics()?,
        ready.clone(),
        shutdown.clone(),
    ));
    tokio::select! {
        gate = gitcluster_migrations::wait_for_schema(&config.database_url, |attempt, error, delay| {
            warn!(attempt, %error, ?delay, "database not reachable, retrying");
        }) => drop(gate?),
        () = shutdown.cancelled() => return Ok(()),
    }
    ready.set(true);
    info!("router skeleton ready: schema verified; no work loops yet");

    // The admin port is the only task: it returns when shutdown fires, or early on
    // failure, which ends the process non-zero.
    admin
        .await
        .context("admin port task")?
        .context("serve admin port")?;
    drop(grpc);
    Ok(())
}
