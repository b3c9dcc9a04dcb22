//! The reconciler: one active instance (lease) relays the outbox, schedules repair
//! of outdated assigned replicas from a random up-to-date source, verifies replicas
//! in the background and crawls storages for untracked or leftover replicas.
//!
//! This is the skeleton: it passes the schema gate and serves the admin port, but
//! runs no work loop yet.

use std::net::SocketAddr;

use gitcluster_common::admin;
use gitcluster_common::database::DatabaseArgs;
use gitcluster_common::service::{BusArgs, ServiceConfig};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The reconciler's configuration: every flag, its environment variable and default.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gitcluster-reconciler",
    version,
    about = "gitcluster reconciler: outbox relay, reconciliation, verification and crawler"
)]
pub struct Config {
    /// Address of the admin HTTP port serving `/metrics` and `/healthz`.
    #[arg(
        long,
        env = "GITCLUSTER_RECONCILER_METRICS_LISTEN",
        default_value = "0.0.0.0:9655"
    )]
    pub metrics_listen: SocketAddr,
    /// `--database-url`.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// `--amqp-url` and `--bus-prefix` (validated; the skeleton does not connect yet).
    #[command(flatten)]
    pub bus: BusArgs,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub dump_config: bool,
}

impl ServiceConfig for Config {
    fn validate(&self) -> anyhow::Result<()> {
        self.database.validate()?;
        self.bus.validate()?;
        Ok(())
    }

    fn dump_requested(&self) -> bool {
        self.dump_config
    }

    fn dump(&self) -> String {
        format!(
            "metrics_listen = \"{}\"\n{}{}",
            self.metrics_listen,
            self.database.dump(),
            self.bus.dump(),
        )
    }
}

/// Runs the reconciler until `shutdown` fires. Fails with a
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
    admin::serve_skeleton("reconciler", config.metrics_listen, gate, shutdown).await
}
