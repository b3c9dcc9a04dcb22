//! The reconciler: one active instance (lease) relays the outbox, schedules repair
//! of outdated assigned replicas from a random up-to-date source, verifies replicas
//! in the background and crawls storages for untracked or leftover replicas.
//!
//! This is the skeleton: it passes the schema gate and serves the admin port, but
//! runs no work loop yet.

use std::net::SocketAddr;

use anyhow::Context;
use gitcluster_migrations::redact_url;
use gitcluster_proto::admin;
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

/// Runs the reconciler until `shutdown` fires. Fails with a
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
    admin::serve_skeleton("reconciler", config.metrics_listen, gate, shutdown).await
}
