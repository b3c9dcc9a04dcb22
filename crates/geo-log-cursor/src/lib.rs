//! The Geo log cursor runs on a secondary site, one active instance per site (a
//! lease with a short TTL renewed every poll). It reads the primary site's
//! `geo_event_log` in id order, tracks gaps left by in-flight transactions, writes
//! the registry, publishes sync jobs, backfills and schedules verification.
//!
//! This is the skeleton: it passes the schema gate and serves the admin port, but
//! runs no work loop yet.

use std::net::SocketAddr;

use anyhow::Context;
use gitcluster_migrations::redact_url;
use gitcluster_proto::admin;
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
    /// PostgreSQL URL of the cluster database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// RabbitMQ URL of the job bus (validated, not connected yet).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub dump_config: bool,
}

impl Config {
    /// Checks what clap cannot; the message never contains a secret.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.database_url
            .parse::<tokio_postgres::Config>()
            .context("--database-url is not a valid PostgreSQL URL")?;
        match self.amqp_url.split_once("://") {
            Some(("amqp" | "amqps", rest)) if !rest.is_empty() => Ok(()),
            _ => anyhow::bail!("--amqp-url must be an amqp:// or amqps:// URL"),
        }
    }

    /// The effective configuration as `key = "value"` lines, secrets redacted.
    pub fn dump(&self) -> String {
        format!(
            "metrics_listen = \"{}\"\ndatabase_url = \"{}\"\namqp_url = \"{}\"\n",
            self.metrics_listen,
            redact_url(&self.database_url),
            redact_url(&self.amqp_url)
        )
    }
}

/// Runs the geo-log-cursor until `shutdown` fires. Fails with a
/// [`gitcluster_migrations::SchemaError`] when the database is unreachable or its
/// schema is not the one this build expects.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let gate = async {
        gitcluster_migrations::wait_for_schema(&config.database_url, |attempt, error, delay| {
            warn!(attempt, %error, ?delay, "database not reachable, retrying");
        })
        .await
        .map_err(anyhow::Error::from)
    };
    admin::serve_skeleton("geo-log-cursor", config.metrics_listen, gate, shutdown).await
}
