//! Every setting of the gateway, with its flag, environment variable and default.
//!
//! | flag                   | environment variable                      | default          |
//! |------------------------|-------------------------------------------|------------------|
//! | `--listen`             | `GITCLUSTER_GATEWAY_LISTEN`               | `0.0.0.0:8080`   |
//! | `--metrics-listen`     | `GITCLUSTER_GATEWAY_METRICS_LISTEN`       | `0.0.0.0:9657`   |
//! | `--upstream`           | `GITCLUSTER_GATEWAY_UPSTREAM`             | required         |
//! | `--push-to-create`     | `GITCLUSTER_GATEWAY_PUSH_TO_CREATE`       | `true`           |
//! | `--drain-timeout-secs` | `GITCLUSTER_GATEWAY_DRAIN_TIMEOUT_SECS`   | `30`             |
//! | `--header-read-timeout-secs` | `GITCLUSTER_GATEWAY_HEADER_READ_TIMEOUT_SECS` | `10`   |
//! | `--body-idle-timeout-secs` | `GITCLUSTER_GATEWAY_BODY_IDLE_TIMEOUT_SECS` | `60`       |
//! | `--upstream-connections` | `GITCLUSTER_GATEWAY_UPSTREAM_CONNECTIONS` | `4`            |
//! | (env only)             | `GITCLUSTER_GATEWAY_UPSTREAM_TOKEN`       | unset: no token  |
//! | (env only)             | `GITCLUSTER_GATEWAY_AUTH_TOKEN`           | unset: open      |
//!
//! The two secrets are read from the environment only, so they never show up in `ps`.
//! A token that is set must be visible ASCII with no whitespace
//! (`gitcluster_proto::auth::validate_token`); a set but empty variable is refused too.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;

/// Environment variable holding the bearer token sent on every upstream gRPC call.
pub const ENV_UPSTREAM_TOKEN: &str = "GITCLUSTER_GATEWAY_UPSTREAM_TOKEN";
/// Environment variable holding the token git clients must present.
pub const ENV_AUTH_TOKEN: &str = "GITCLUSTER_GATEWAY_AUTH_TOKEN";

/// Command line and environment of `gitcluster-gateway`.
#[derive(Debug, Parser)]
#[command(
    name = "gitcluster-gateway",
    version,
    about = "Git smart-HTTP gateway in front of a gitcluster gRPC endpoint"
)]
pub struct Cli {
    /// Address git clients connect to.
    #[arg(
        long,
        env = "GITCLUSTER_GATEWAY_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: SocketAddr,
    /// Address of the admin port (`/metrics`, `/healthz`).
    #[arg(
        long,
        env = "GITCLUSTER_GATEWAY_METRICS_LISTEN",
        default_value = "0.0.0.0:9657"
    )]
    pub metrics_listen: SocketAddr,
    /// gRPC endpoint speaking `gitcluster.v1` (a storage node or the router), e.g.
    /// `http://127.0.0.1:8075`.
    #[arg(long, env = "GITCLUSTER_GATEWAY_UPSTREAM")]
    pub upstream: String,
    /// Create a missing repository when a push arrives for it.
    #[arg(
        long,
        env = "GITCLUSTER_GATEWAY_PUSH_TO_CREATE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub push_to_create: bool,
    /// How long in-flight requests may run after shutdown begins.
    #[arg(
        long,
        env = "GITCLUSTER_GATEWAY_DRAIN_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub drain_timeout_secs: u64,
    /// How long a client may take to send a request's line and headers before its
    /// connection is closed (slow-header clients otherwise hold sockets forever).
    #[arg(
        long,
        env = "GITCLUSTER_GATEWAY_HEADER_READ_TIMEOUT_SECS",
        default_value_t = 10,
        value_parser = positive_secs()
    )]
    pub header_read_timeout_secs: u64,
    /// How long a request body may send nothing before the request is answered 408,
    /// its connection closed and its upstream call aborted.
    #[arg(
        long,
        env = "GITCLUSTER_GATEWAY_BODY_IDLE_TIMEOUT_SECS",
        default_value_t = 60,
        value_parser = positive_secs()
    )]
    pub body_idle_timeout_secs: u64,
    /// HTTP/2 connections to the upstream, used round-robin: a lost connection costs
    /// only the calls it carried.
    #[arg(
        long,
        env = "GITCLUSTER_GATEWAY_UPSTREAM_CONNECTIONS",
        default_value_t = 4,
        value_parser = clap::value_parser!(u64).range(1..=64)
    )]
    pub upstream_connections: u64,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub dump_config: bool,
}

/// The parser of a timeout flag in whole seconds: at least 1, since a zero bound
/// would end every connection or request at once.
fn positive_secs() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..)
}

impl Cli {
    /// Validates the command line and adds the secrets from the environment.
    pub fn into_config(self) -> anyhow::Result<Config> {
        // A variable that is set but empty (or not UTF-8) is a mistake to report, not
        // "no token": an operator who set it meant to have one.
        let secret = |name: &str| match std::env::var(name) {
            Ok(v) => Ok(Some(v)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(anyhow::anyhow!(
                "{name}: token must be visible ASCII without whitespace or control characters"
            )),
        };
        let config = Config {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            upstream: self.upstream,
            upstream_token: secret(ENV_UPSTREAM_TOKEN)?,
            auth_token: secret(ENV_AUTH_TOKEN)?,
            push_to_create: self.push_to_create,
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            body_idle_timeout: Duration::from_secs(self.body_idle_timeout_secs),
            upstream_connections: usize::try_from(self.upstream_connections)
                .context("--upstream-connections")?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The gateway's effective configuration. Tests build it directly.
#[derive(Clone)]
pub struct Config {
    /// Address git clients connect to.
    pub listen: SocketAddr,
    /// Address of the admin port (`/metrics`, `/healthz`).
    pub metrics_listen: SocketAddr,
    /// gRPC endpoint URL speaking `gitcluster.v1`.
    pub upstream: String,
    /// Bearer token sent on every upstream call; `None` sends none.
    pub upstream_token: Option<String>,
    /// Token git clients must present (Bearer, or Basic with any user); `None` disables
    /// client authentication.
    pub auth_token: Option<String>,
    /// Create a missing repository when a push arrives for it.
    pub push_to_create: bool,
    /// How long in-flight requests may run after shutdown begins.
    pub drain_timeout: Duration,
    /// Longest wait for a request's line and headers.
    pub header_read_timeout: Duration,
    /// Longest silence of a request body.
    pub body_idle_timeout: Duration,
    /// Number of HTTP/2 connections to the upstream (at least 1).
    pub upstream_connections: usize,
}

impl Config {
    /// Production defaults for `upstream`, without secrets.
    pub fn for_upstream(upstream: impl Into<String>) -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            metrics_listen: SocketAddr::from(([0, 0, 0, 0], 9657)),
            upstream: upstream.into(),
            upstream_token: None,
            auth_token: None,
            push_to_create: true,
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(60),
            upstream_connections: 4,
        }
    }

    /// Rejects settings the gateway cannot run with.
    pub fn validate(&self) -> anyhow::Result<()> {
        let uri: http::Uri = self.upstream.parse().context("parse upstream URL")?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => bail!(
                "upstream URL must start with http:// or https://, got {:?}",
                self.upstream
            ),
        }
        if self.header_read_timeout.is_zero() || self.body_idle_timeout.is_zero() {
            bail!("header read and body idle timeouts must be positive");
        }
        if self.upstream_connections == 0 {
            bail!("--upstream-connections must be at least 1");
        }
        if uri.host().is_none() {
            bail!("upstream URL has no host: {:?}", self.upstream);
        }
        for (variable, token) in [
            (ENV_UPSTREAM_TOKEN, &self.upstream_token),
            (ENV_AUTH_TOKEN, &self.auth_token),
        ] {
            if let Some(token) = token {
                gitcluster_proto::auth::validate_token(token)
                    .map_err(|reason| anyhow::anyhow!("{variable}: {reason}"))?;
            }
        }
        Ok(())
    }

    /// The configuration as `VARIABLE=value` lines, secrets redacted.
    pub fn dump(&self) -> String {
        let secret = |s: &Option<String>| if s.is_some() { "<redacted>" } else { "<unset>" };
        format!(
            "GITCLUSTER_GATEWAY_LISTEN={}\n\
             GITCLUSTER_GATEWAY_METRICS_LISTEN={}\n\
             GITCLUSTER_GATEWAY_UPSTREAM={}\n\
             {ENV_UPSTREAM_TOKEN}={}\n\
             {ENV_AUTH_TOKEN}={}\n\
             GITCLUSTER_GATEWAY_PUSH_TO_CREATE={}\n\
             GITCLUSTER_GATEWAY_DRAIN_TIMEOUT_SECS={}\n\
             GITCLUSTER_GATEWAY_HEADER_READ_TIMEOUT_SECS={}\n\
             GITCLUSTER_GATEWAY_BODY_IDLE_TIMEOUT_SECS={}\n\
             GITCLUSTER_GATEWAY_UPSTREAM_CONNECTIONS={}",
            self.listen,
            self.metrics_listen,
            self.upstream,
            secret(&self.upstream_token),
            secret(&self.auth_token),
            self.push_to_create,
            self.drain_timeout.as_secs(),
            self.header_read_timeout.as_secs(),
            self.body_idle_timeout.as_secs(),
            self.upstream_connections,
        )
    }
}

// Hand-written so a `{:?}` in a log line can never print a token.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("upstream", &self.upstream)
            .field("upstream_token", &redact(&self.upstream_token))
            .field("auth_token", &redact(&self.auth_token))
            .field("push_to_create", &self.push_to_create)
            .field("drain_timeout", &self.drain_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_idle_timeout", &self.body_idle_timeout)
            .field("upstream_connections", &self.upstream_connections)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_defaults_and_boolish_push_to_create() {
        let cli =
            Cli::try_parse_from(["gw", "--upstream", "http://127.0.0.1:8075"]).expect("parse");
        assert_eq!(cli.listen, SocketAddr::from(([0, 0, 0, 0], 8080)));
        assert_eq!(cli.metrics_listen, SocketAddr::from(([0, 0, 0, 0], 9657)));
        assert!(cli.push_to_create);
        let cli = Cli::try_parse_from([
            "gw",
            "--upstream",
            "http://x:1",
            "--push-to-create",
            "off",
            "--listen",
            "127.0.0.1:0",
        ])
        .expect("parse");
        assert!(!cli.push_to_create);
        assert_eq!(cli.listen.port(), 0);
    }

    #[test]
    fn timeout_flags_refuse_zero_seconds() {
        for flag in ["--header-read-timeout-secs", "--body-idle-timeout-secs"] {
            let parse = |v: &str| Cli::try_parse_from(["gw", "--upstream", "http://x:1", flag, v]);
            assert!(parse("0").is_err(), "{flag} 0");
            assert!(parse("1").is_ok(), "{flag} 1");
        }
    }

    #[test]
    fn missing_upstream_is_a_parse_error() {
        // Only meaningful when the harness has not exported the variable.
        if std::env::var_os("GITCLUSTER_GATEWAY_UPSTREAM").is_none() {
            assert!(Cli::try_parse_from(["gw"]).is_err());
        }
    }

    #[test]
    fn validate_rejects_bad_upstream_and_tokens() {
        assert!(
            Config::for_upstream("http://127.0.0.1:8075")
                .validate()
                .is_ok()
        );
        assert!(Config::for_upstream("127.0.0.1:8075").validate().is_err());
        assert!(Config::for_upstream("ftp://host:1").validate().is_err());
        assert!(Config::for_upstream("not a url").validate().is_err());
        let mut c = Config::for_upstream("http://h:1");
        c.upstream_token = Some("bad\ntoken".into());
        assert!(c.validate().is_err());
        for bad in ["", " ", "has space", "tab\t", "é"] {
            let mut c = Config::for_upstream("http://h:1");
            c.auth_token = Some(bad.into());
            assert!(c.validate().is_err(), "{bad:?}");
            let mut c = Config::for_upstream("http://h:1");
            c.upstream_token = Some(bad.into());
            assert!(c.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dump_and_debug_redact_secrets() {
        let mut c = Config::for_upstream("http://h:1");
        c.upstream_token = Some("upstream-s3cret".into());
        c.auth_token = Some("client-s3cret".into());
        for text in [c.dump(), format!("{c:?}")] {
            assert!(!text.contains("s3cret"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
        assert!(c.dump().contains("GITCLUSTER_GATEWAY_UPSTREAM=http://h:1"));
    }
}
