//! The election service: every instance probes every storage node
//! (`grpc.health.v1`) on a short interval and records its observations; a node is
//! healthy when a majority of live observers saw it recently. Primaries are elected
//! per repository among healthy, assigned, up-to-date replicas, and a failover
//! publishes a NOTIFY so routers switch at once.
//!
//! This is the skeleton: it passes the schema gate and serves the admin port, but
//! runs no work loop yet.

use std::net::SocketAddr;

use gitcluster_common::admin;
use gitcluster_common::database::DatabaseArgs;
use gitcluster_common::service::ServiceConfig;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The election's configuration: every flag, its environment variable and default.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gitcluster-election",
    version,
    about = "gitcluster election: health observer and per-repository primary elector"
)]
pub struct Config {
    /// Address of the admin HTTP port serving `/metrics` and `/healthz`.
    #[arg(
        long,
        env = "GITCLUSTER_ELECTION_METRICS_LISTEN",
        default_value = "0.0.0.0:9653"
    )]
    pub metrics_listen: SocketAddr,
    /// `--database-url`.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub dump_config: bool,
}

impl ServiceConfig for Config {
    fn validate(&self) -> anyhow::Result<()> {
        self.database.validate()?;
        Ok(())
    }

    fn dump_requested(&self) -> bool {
        self.dump_config
    }

    fn dump(&self) -> String {
        format!(
            "metrics_listen = \"{}\"\n{}",
            self.metrics_listen,
            self.database.dump(),
        )
    }
}

/// Runs the election until `shutdown` fires. Fails with a
/// [`gitcluster_migrations::SchemaError`] when the database is unreachable or its
/// schema is not the one this build expects.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let gate = async {
        gitcluster_migrations::wait_for_schema(
            &config.database.database_url,
            |attempt, error, delay| {
                warn!(attempt, %error, ?delay, "database not reachable, retrying");
            },
        )
        .await
        .map_err(anyhow::Error::from)
    };
    admin::serve_skeleton("election", config.metrics_listen, gate, shutdown).await
}
