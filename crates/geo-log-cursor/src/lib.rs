//! The Geo log cursor runs on a secondary site, one active instance per site (a
//! lease with a short TTL renewed every poll). It reads the primary site's
//! `geo_event_log` in id order, tracks gaps left by in-flight transactions, writes
//! the registry, publishes sync jobs, backfills and schedules verification.
//!
//! This is the skeleton: it passes the schema gate and serves the admin port, but
//! runs no work loop yet.

use std::net::SocketAddr;

use gitcluster_common::admin;
use gitcluster_common::database::DatabaseArgs;
use gitcluster_common::service::{BusArgs, ServiceConfig};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The geo-log-cursor's configuration: every flag, its environment variable and default.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gitcluster-geo-log-cursor",
    version,
    about = "gitcluster geo-log-cursor: secondary-site reader of the primary site event log"
)]
pub struct Config {
    /// Address of the admin HTTP port serving `/metrics` and `/healthz`.
    #[arg(
        long,
        env = "GITCLUSTER_GEO_LOG_CURSOR_METRICS_LISTEN",
        default_value = "0.0.0.0:9656"
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

/// Runs the geo-log-cursor until `shutdown` fires. Fails with a
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
    admin::serve_skeleton("geo-log-cursor", config.metrics_listen, gate, shutdown).await
}
