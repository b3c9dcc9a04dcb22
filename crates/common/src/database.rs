//! The cluster database's flag and connection settings, shared by every service that
//! reads it (feature `postgres`; the storage node and the gateway do without).

use anyhow::Context as _;

use crate::redact::redact_url;

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
    fn database_args_validate_and_dump_without_secrets() {
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
    }
}
