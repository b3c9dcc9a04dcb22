//! The entry point every service binary shares: flag parsing with our exit codes, the
//! runtime, telemetry, signal-driven shutdown, and turning the outcome into an exit
//! status. A service's `main` keeps only what is its own (validation, `--dump-config`);
//! services that read the cluster database use [`main`] whole, and share the
//! database and job-bus flags ([`DatabaseArgs`], [`BusArgs`]).
//!
//! Exit codes: 0 after a clean shutdown (or `--help`), 64 (`EX_USAGE`) for a bad
//! configuration, a code chosen by the service's `classify` (78 for a schema version
//! mismatch), 1 for anything else. Failures print exactly one line to stderr.

use std::future::Future;
use std::process::ExitCode;

use anyhow::Context as _;
use gitcluster_migrations::redact_url;
use tokio_util::sync::CancellationToken;

/// Exit status for a bad configuration (`EX_USAGE` of sysexits.h).
pub const EXIT_BAD_CONFIG: u8 = 64;

/// Parses flags and environment; on failure prints clap's message and returns the
/// exit code to use (0 for `--help`/`--version`, 64 otherwise).
pub fn parse<A: clap::Parser>() -> Result<A, ExitCode> {
    A::try_parse().map_err(|e| {
        let _ = e.print();
        ExitCode::from(if e.use_stderr() { EXIT_BAD_CONFIG } else { 0 })
    })
}

/// Reports an invalid configuration on one line and returns exit code 64.
pub fn bad_config(service: &str, error: &dyn std::fmt::Display) -> ExitCode {
    // `{:#}` prints an anyhow chain on one line; other errors ignore the flag.
    eprintln!("{service}: invalid configuration: {error:#}");
    ExitCode::from(EXIT_BAD_CONFIG)
}

/// Runs `service` on a multi-threaded runtime with telemetry until it returns (it is
/// handed a token cancelled by SIGTERM/SIGINT). `classify` may turn an error into a
/// specific exit code and line; otherwise the code is 1 and the line the error chain.
pub fn run<F, Fut>(
    service: &'static str,
    body: F,
    classify: fn(&anyhow::Error) -> Option<(u8, String)>,
) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{service}: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let telemetry = crate::telemetry::init(service)?;
        let result = body(crate::shutdown::on_signal()).await;
        telemetry.shutdown().await;
        result
    });
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    let (code, line) = classify(&e).unwrap_or_else(|| (1, format!("{e:#}")));
    eprintln!("{service}: {line}");
    ExitCode::from(code)
}

/// A `classify` for services without special exit codes.
pub fn no_special_exit(_: &anyhow::Error) -> Option<(u8, String)> {
    None
}

/// Default `--amqp-url`: the local broker as `guest`.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `--database-url`, shared by every service that reads the cluster database.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL of the cluster database. Unless the URL sets them, connections
    /// use connect_timeout=5, TCP keep-alive 15 s idle / 5 s x 3 probes and
    /// tcp_user_timeout=30s, so a vanished server is noticed in about 30 s.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

impl DatabaseArgs {
    /// Fails when the URL does not parse; the message never contains the URL.
    pub fn validate(&self) -> anyhow::Result<()> {
        postgres_config(&self.database_url).map(drop)
    }

    /// `database_url = "…"`, password redacted, as a `--dump-config` line.
    pub fn dump(&self) -> String {
        format!("database_url = \"{}\"\n", redact_url(&self.database_url))
    }
}

/// How long opening a database connection may take, unless the URL says otherwise.
pub const DB_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// TCP keep-alive on database connections (idle time, probe interval, probes), and
/// how long sent data may stay unacknowledged: a server that vanished without
/// closing the socket (host down, a NAT or firewall dropping the flow) is noticed
/// within about 30 s instead of the kernel's two hours, both on idle connections (the
/// LISTEN connection, a lock held during a copy) and on busy ones.
pub const DB_KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(15);
/// See [`DB_KEEPALIVE_IDLE`].
pub const DB_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// See [`DB_KEEPALIVE_IDLE`].
pub const DB_KEEPALIVE_RETRIES: u32 = 3;
/// See [`DB_KEEPALIVE_IDLE`].
pub const DB_TCP_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The connection settings of `url` with this project's defaults for what the URL
/// leaves unset (connect timeout, TCP keep-alive, TCP user timeout; see
/// [`DB_KEEPALIVE_IDLE`]). Every long-running service opens its connections with it.
pub fn postgres_config(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .context("--database-url is not a valid PostgreSQL URL")?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DB_CONNECT_TIMEOUT);
    }
    // tokio-postgres's own default idle time is libpq's two hours; a URL that sets
    // any keep-alive value keeps all of its own.
    let defaults = tokio_postgres::Config::new();
    if config.get_keepalives()
        && config.get_keepalives_idle() == defaults.get_keepalives_idle()
        && config.get_keepalives_interval() == defaults.get_keepalives_interval()
        && config.get_keepalives_retries() == defaults.get_keepalives_retries()
    {
        config
            .keepalives_idle(DB_KEEPALIVE_IDLE)
            .keepalives_interval(DB_KEEPALIVE_INTERVAL)
            .keepalives_retries(DB_KEEPALIVE_RETRIES);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(DB_TCP_USER_TIMEOUT);
    }
    Ok(config)
}

/// `--amqp-url` and `--bus-prefix`: where the job bus is and how its exchanges and
/// queues are named, shared by every service on the bus.
#[derive(Debug, Clone, clap::Args)]
pub struct BusArgs {
    /// RabbitMQ URL of the job bus.
    #[arg(long, env = "AMQP_URL", hide_env_values = true, default_value = DEFAULT_AMQP_URL)]
    pub amqp_url: String,
    /// Prefix of every exchange and queue name (clusters sharing a broker, and tests,
    /// use one each).
    #[arg(long, env = "GITCLUSTER_BUS_PREFIX", default_value = "gitcluster")]
    pub bus_prefix: String,
}

impl BusArgs {
    /// Fails on a URL that is not `amqp://` or `amqps://`, or an empty prefix; the
    /// message never contains the URL.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self.amqp_url.split_once("://") {
            Some(("amqp" | "amqps", rest)) if !rest.is_empty() => {}
            _ => anyhow::bail!("--amqp-url must be an amqp:// or amqps:// URL"),
        }
        anyhow::ensure!(
            !self.bus_prefix.trim_end_matches('.').is_empty(),
            "--bus-prefix must not be empty"
        );
        Ok(())
    }

    /// `amqp_url` (password redacted) and `bus_prefix` as `--dump-config` lines.
    pub fn dump(&self) -> String {
        format!(
            "amqp_url = \"{}\"\nbus_prefix = \"{}\"\n",
            redact_url(&self.amqp_url),
            self.bus_prefix
        )
    }
}

/// What [`main`] needs from a service's configuration.
pub trait ServiceConfig: clap::Parser {
    /// Checks what clap cannot; the message never contains a secret.
    fn validate(&self) -> anyhow::Result<()>;
    /// Whether `--dump-config` was given.
    fn dump_requested(&self) -> bool;
    /// The effective configuration as `key = value` lines, secrets redacted.
    fn dump(&self) -> String;
}

/// A whole service `main`: parse flags and environment, validate (64 and one line
/// when invalid), print the configuration for `--dump-config`, else [`run`] `body`.
pub fn main<C, F, Fut>(
    service: &'static str,
    body: F,
    classify: fn(&anyhow::Error) -> Option<(u8, String)>,
) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config: C = match parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = config.validate() {
        return bad_config(service, &e);
    }
    if config.dump_requested() {
        print!("{}", config.dump());
        return ExitCode::SUCCESS;
    }
    run(service, |shutdown| body(config, shutdown), classify)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_connections_notice_a_vanished_server_unless_the_url_says_otherwise() {
        let c = postgres_config("postgres://gc@db/gitcluster").expect("valid");
        assert_eq!(c.get_connect_timeout(), Some(&DB_CONNECT_TIMEOUT));
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), DB_KEEPALIVE_IDLE);
        assert_eq!(c.get_keepalives_interval(), Some(DB_KEEPALIVE_INTERVAL));
        assert_eq!(c.get_keepalives_retries(), Some(DB_KEEPALIVE_RETRIES));
        assert_eq!(c.get_tcp_user_timeout(), Some(&DB_TCP_USER_TIMEOUT));

        let own = postgres_config(
            "postgres://gc@db/gitcluster?connect_timeout=9&keepalives_idle=600&tcp_user_timeout=1",
        )
        .expect("valid");
        assert_eq!(
            own.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(9))
        );
        assert_eq!(
            own.get_keepalives_idle(),
            std::time::Duration::from_secs(600)
        );
        assert_eq!(
            own.get_keepalives_interval(),
            None,
            "the URL's choice is whole"
        );
        assert_eq!(
            own.get_tcp_user_timeout(),
            Some(&std::time::Duration::from_secs(1))
        );
        let off = postgres_config("postgres://gc@db/gitcluster?keepalives=0").expect("valid");
        assert!(!off.get_keepalives());

        let err = format!(
            "{:#}",
            postgres_config("postgres://gc:hunter2@db:x/y").expect_err("bad port")
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn shared_args_validate_and_dump_without_secrets() {
        let db = DatabaseArgs {
            database_url: "postgres://gc:hunter2@db:5432/gitcluster".into(),
        };
        db.validate().expect("valid database url");
        assert_eq!(
            db.dump(),
            "database_url = \"postgres://gc:***@db:5432/gitcluster\"\n"
        );
        let bad = DatabaseArgs {
            database_url: "postgres://gc:hunter2@db:notaport/x".into(),
        };
        let err = format!("{:#}", bad.validate().expect_err("bad port"));
        assert!(err.starts_with("--database-url is not a valid"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");

        let bus = BusArgs {
            amqp_url: "amqp://jobs:hunter2@mq:5672/%2f".into(),
            bus_prefix: "gitcluster".into(),
        };
        bus.validate().expect("valid bus");
        assert_eq!(
            bus.dump(),
            "amqp_url = \"amqp://jobs:***@mq:5672/%2f\"\nbus_prefix = \"gitcluster\"\n"
        );
        for (url, prefix) in [
            ("http://mq:5672", "gitcluster"),
            ("amqp://", "gitcluster"),
            ("amqp://mq:5672/%2f", ""),
            ("amqp://mq:5672/%2f", "..."),
        ] {
            let args = BusArgs {
                amqp_url: url.into(),
                bus_prefix: prefix.into(),
            };
            assert!(args.validate().is_err(), "{url} {prefix:?} accepted");
        }
    }
}
