//! Every setting of the replicator, with its flag, environment variable and default.
//!
//! | flag | environment | default |
//! |---|---|---|
//! | `--metrics-listen` | `GITCLUSTER_REPLICATOR_METRICS_LISTEN` | `0.0.0.0:9654` (`/metrics`, `/healthz`) |
//! | `--database-url` | `DATABASE_URL` | required |
//! | `--amqp-url` | `AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672/%2f` |
//! | `--bus-prefix` | `GITCLUSTER_BUS_PREFIX` | `gitcluster` |
//! | (env only) | `GITCLUSTER_INTERNAL_TOKEN` | none: no token sent to storage nodes |
//! | `--prefetch` | `GITCLUSTER_REPLICATOR_PREFETCH` | 16 (unacked deliveries per target queue) |
//! | `--workers` | `GITCLUSTER_REPLICATOR_WORKERS` | 8 (jobs running at once in this process) |
//! | `--retry-delays-ms` | `GITCLUSTER_REPLICATOR_RETRY_DELAYS_MS` | `1000,5000,30000,120000` |
//! | `--max-attempts` | `GITCLUSTER_REPLICATOR_MAX_ATTEMPTS` | 5 |
//! | `--graceful-timeout-secs` | `GITCLUSTER_REPLICATOR_GRACEFUL_TIMEOUT_SECS` | 30 |
//! | `--job-timeout-secs` | `GITCLUSTER_REPLICATOR_JOB_TIMEOUT_SECS` | 600 (deadline of one storage-node call) |
//! | `--dump-config` | | prints the effective config (secrets redacted) and exits |

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use gitcluster_common::database::DatabaseArgs;
use gitcluster_common::service::{BusArgs, ServiceConfig};

/// Environment variable holding the internal token presented to storage nodes.
pub const TOKEN_ENV: &str = "GITCLUSTER_INTERNAL_TOKEN";

fn token_from_env() -> Option<String> {
    std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty())
}

/// The replicator's configuration: every flag, its environment variable and default.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gitcluster-replicator",
    version,
    about = "gitcluster replicator: consumer of the replication queues"
)]
pub struct Config {
    /// Address of the admin HTTP port serving `/metrics` and `/healthz`.
    #[arg(
        long,
        env = "GITCLUSTER_REPLICATOR_METRICS_LISTEN",
        default_value = "0.0.0.0:9654"
    )]
    pub metrics_listen: SocketAddr,
    /// `--database-url`.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// `--amqp-url` and `--bus-prefix`.
    #[command(flatten)]
    pub bus: BusArgs,
    /// Unacknowledged deliveries the broker may push to each target queue's consumer.
    #[arg(long, env = "GITCLUSTER_REPLICATOR_PREFETCH", default_value_t = 16)]
    pub prefetch: u16,
    /// Jobs this process runs at once, across all target storages.
    #[arg(long, env = "GITCLUSTER_REPLICATOR_WORKERS", default_value_t = 8)]
    pub workers: usize,
    /// Delays of the retry tiers, in milliseconds: attempt n waits the n-th (the last
    /// one repeats).
    #[arg(
        long,
        env = "GITCLUSTER_REPLICATOR_RETRY_DELAYS_MS",
        value_delimiter = ',',
        default_value = "1000,5000,30000,120000"
    )]
    pub retry_delays_ms: Vec<u64>,
    /// Attempts a job gets before it is dead-lettered.
    #[arg(long, env = "GITCLUSTER_REPLICATOR_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// How long running jobs may take to finish after SIGTERM before they are requeued.
    #[arg(
        long,
        env = "GITCLUSTER_REPLICATOR_GRACEFUL_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub graceful_timeout_secs: u64,
    /// Deadline of one storage-node call (ReplicateRepository, RemoveRepository).
    #[arg(
        long,
        env = "GITCLUSTER_REPLICATOR_JOB_TIMEOUT_SECS",
        default_value_t = 600
    )]
    pub job_timeout_secs: u64,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub dump_config: bool,
    /// Internal token sent to storage nodes; from `GITCLUSTER_INTERNAL_TOKEN` only, so
    /// it never shows in a process listing.
    #[arg(skip = token_from_env())]
    pub internal_token: Option<String>,
}

impl ServiceConfig for Config {
    fn validate(&self) -> anyhow::Result<()> {
        self.database.validate()?;
        self.bus.validate()?;
        anyhow::ensure!(self.prefetch >= 1, "--prefetch must be at least 1");
        anyhow::ensure!(self.workers >= 1, "--workers must be at least 1");
        anyhow::ensure!(self.max_attempts >= 1, "--max-attempts must be at least 1");
        anyhow::ensure!(
            !self.retry_delays_ms.is_empty() && self.retry_delays_ms.iter().all(|&d| d > 0),
            "--retry-delays-ms must list at least one delay, each above 0"
        );
        anyhow::ensure!(
            self.job_timeout_secs >= 1,
            "--job-timeout-secs must be at least 1"
        );
        if let Some(t) = &self.internal_token {
            gitcluster_proto::auth::BearerToken::new(Some(t))
                .context("GITCLUSTER_INTERNAL_TOKEN is not usable")?;
        }
        Ok(())
    }

    fn dump_requested(&self) -> bool {
        self.dump_config
    }

    fn dump(&self) -> String {
        let delays: Vec<String> = self.retry_delays_ms.iter().map(u64::to_string).collect();
        format!(
            "metrics_listen = \"{}\"\n{}{}internal_token = \"{}\"\nprefetch = {}\n\
             workers = {}\nretry_delays_ms = [{}]\nmax_attempts = {}\n\
             graceful_timeout_secs = {}\njob_timeout_secs = {}\n",
            self.metrics_listen,
            self.database.dump(),
            self.bus.dump(),
            if self.internal_token.is_some() {
                "***"
            } else {
                ""
            },
            self.prefetch,
            self.workers,
            delays.join(", "),
            self.max_attempts,
            self.graceful_timeout_secs,
            self.job_timeout_secs,
        )
    }
}

impl Config {
    /// Deadline of one storage-node call.
    pub fn job_timeout(&self) -> Duration {
        Duration::from_secs(self.job_timeout_secs)
    }

    /// Bound on draining running jobs at shutdown.
    pub fn graceful_timeout(&self) -> Duration {
        Duration::from_secs(self.graceful_timeout_secs)
    }

    /// Connections the pool needs: each running job holds one for its lock
    /// transaction and borrows a second for autocommit updates, plus a few spare for
    /// topology reloads.
    pub fn pool_size(&self) -> usize {
        self.workers * 2 + 4
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn delays_parse_from_a_comma_list_and_are_validated() {
        let c = Config::try_parse_from([
            "r",
            "--database-url=postgres://db/x",
            "--retry-delays-ms=100,200",
        ])
        .expect("parses");
        assert_eq!(c.retry_delays_ms, vec![100, 200]);
        c.validate().expect("valid");
        let d = Config::try_parse_from(["r", "--database-url=postgres://db/x"]).expect("parses");
        assert_eq!(d.retry_delays_ms, vec![1000, 5000, 30000, 120000]);
        let zero =
            Config::try_parse_from(["r", "--database-url=postgres://db/x", "--retry-delays-ms=0"])
                .expect("parses");
        assert!(zero.validate().is_err());
    }
}
