//! The entry point every service binary shares: flag parsing with our exit codes, the
//! runtime, telemetry, signal-driven shutdown, and turning the outcome into an exit
//! status. A service's `main` keeps only what is its own (validation, `--dump-config`);
//! services that read the cluster database use [`main`] whole, and share the
//! database and job-bus flags (`crate::database::DatabaseArgs` with the `postgres`
//! feature, [`BusArgs`]).
//!
//! Exit codes: 0 after a clean shutdown (or `--help`), 64 (`EX_USAGE`) for a bad
//! configuration, a code chosen by the service's `classify` (78 for a schema version
//! mismatch), 1 for anything else. Failures print exactly one line to stderr.

use std::future::Future;
use std::process::ExitCode;

use crate::redact::redact_url;
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
    fn bus_args_validate_and_dump_without_secrets() {
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
