//! Configuration of `gitcluster-router`: every flag, its environment variable and
//! default.
//!
//! | flag | environment | default |
//! |---|---|---|
//! | `--listen` | `GITCLUSTER_ROUTER_LISTEN` | `0.0.0.0:2305` |
//! | `--metrics-listen` | `GITCLUSTER_ROUTER_METRICS_LISTEN` | `0.0.0.0:9652` |
//! | `--database-url` | `DATABASE_URL` | required |
//! | `--amqp-url` | `AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672/%2f` |
//! | `--bus-prefix` | `GITCLUSTER_BUS_PREFIX` | `gitcluster` |
//! | `--name` | `GITCLUSTER_ROUTER_NAME` | `<hostname>:<listen>` |
//! | `--health-interval-ms` | `GITCLUSTER_ROUTER_HEALTH_INTERVAL_MS` | `1000` |
//! | `--serve-threads` | `GITCLUSTER_ROUTER_SERVE_THREADS` | `0`: one per CPU |
//! | (env only) | `GITCLUSTER_ROUTER_TOKEN` | unset: clients are not authenticated |
//! | (env only) | `GITCLUSTER_INTERNAL_TOKEN` | unset: no token sent to storage nodes |
//! | `--dump-config` | | prints the effective config (secrets redacted) and exits |
//!
//! Secrets are read from the environment only, so they never show up in `ps`.

use std::net::SocketAddr;
use std::time::Duration;

use gitcluster_common::database::DatabaseArgs;
use gitcluster_common::service::{BusArgs, ServiceConfig};

/// Environment variable holding the token clients must present.
pub const ENV_TOKEN: &str = "GITCLUSTER_ROUTER_TOKEN";
/// Environment variable holding the token sent to storage nodes.
pub const ENV_INTERNAL_TOKEN: &str = "GITCLUSTER_INTERNAL_TOKEN";

fn secret(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The router's configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gitcluster-router",
    version,
    about = "gitcluster router: gRPC proxy to the storage nodes"
)]
pub struct Config {
    /// Address of the gRPC proxy.
    #[arg(long, env = "GITCLUSTER_ROUTER_LISTEN", default_value = "0.0.0.0:2305")]
    pub listen: SocketAddr,
    /// Address of the admin HTTP port serving `/metrics` and `/healthz`.
    #[arg(
        long,
        env = "GITCLUSTER_ROUTER_METRICS_LISTEN",
        default_value = "0.0.0.0:9652"
    )]
    pub metrics_listen: SocketAddr,
    /// `--database-url`.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// `--amqp-url` and `--bus-prefix`. The router starts and serves without the
    /// bus; jobs then stay `pending` until the reconciler relays them.
    #[command(flatten)]
    pub bus: BusArgs,
    /// Name of this router as a health observer (`node_status.observer`) and in the
    /// name of its job-bus connection.
    #[arg(long, env = "GITCLUSTER_ROUTER_NAME")]
    pub name: Option<String>,
    /// Interval between two health probes of every storage node; a probe times out
    /// after the same time.
    #[arg(
        long,
        env = "GITCLUSTER_ROUTER_HEALTH_INTERVAL_MS",
        default_value_t = 1000
    )]
    pub health_interval_ms: u64,
    /// Threads serving client connections; each connection stays on one of them. 0
    /// means one per CPU the process may use.
    #[arg(long, env = "GITCLUSTER_ROUTER_SERVE_THREADS", default_value_t = 0)]
    pub serve_threads: usize,
    /// Token clients must present (env `GITCLUSTER_ROUTER_TOKEN` only).
    #[arg(skip = secret(ENV_TOKEN))]
    pub token: Option<String>,
    /// Token sent to storage nodes (env `GITCLUSTER_INTERNAL_TOKEN` only).
    #[arg(skip = secret(ENV_INTERNAL_TOKEN))]
    pub internal_token: Option<String>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub dump_config: bool,
}

impl Config {
    /// The observer name: `--name`, or `<hostname>:<listen>`.
    pub fn observer_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into());
            format!("{host}:{}", self.listen)
        })
    }

    /// What the router's job-bus connection is named after in the broker UI (which
    /// adds `@<hostname>`): `--name`, or the listen address, since the default
    /// observer name already starts with the host.
    pub fn bus_instance(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.listen.to_string())
    }

    /// The health probe interval.
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }

    /// The number of serving threads: `--serve-threads`, or one per available CPU.
    pub fn serve_threads(&self) -> usize {
        match self.serve_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }
}

impl ServiceConfig for Config {
    fn validate(&self) -> anyhow::Result<()> {
        self.database.validate()?;
        self.bus.validate()?;
        anyhow::ensure!(
            self.health_interval_ms >= 10,
            "--health-interval-ms must be at least 10"
        );
        Ok(())
    }

    fn dump_requested(&self) -> bool {
        self.dump_config
    }

    fn dump(&self) -> String {
        let set = |s: &Option<String>| if s.is_some() { "***" } else { "" };
        format!(
            "listen = \"{}\"\nmetrics_listen = \"{}\"\n{}{}name = \"{}\"\n\
             health_interval_ms = {}\nserve_threads = {}\ntoken = \"{}\"\ninternal_token = \"{}\"\n",
            self.listen,
            self.metrics_listen,
            self.database.dump(),
            self.bus.dump(),
            self.observer_name(),
            self.health_interval_ms,
            self.serve_threads(),
            set(&self.token),
            set(&self.internal_token),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// The configuration for `args`, with the database URL the router requires.
    fn parse(args: &[&str]) -> Config {
        let db = ["--database-url", "postgres://postgres@127.0.0.1/gitcluster"];
        Config::try_parse_from(["gitcluster-router"].iter().chain(args).chain(&db)).expect("parse")
    }

    #[test]
    fn the_bus_connection_is_named_after_the_router_without_repeating_the_host() {
        let named = parse(&["--name", "router-1"]);
        assert_eq!(named.bus_instance(), "router-1");
        let unnamed = parse(&["--listen", "127.0.0.1:2399"]);
        assert_eq!(unnamed.bus_instance(), "127.0.0.1:2399");
        assert!(unnamed.observer_name().ends_with(":127.0.0.1:2399"));
    }
}
