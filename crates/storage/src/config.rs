//! Every setting of the storage node, with its flag, environment variable and default.
//!
//! | flag | env | default |
//! |------|-----|---------|
//! | `--listen` | `GITCLUSTER_STORAGE_LISTEN` | `0.0.0.0:8075` (gRPC) |
//! | `--metrics-listen` | `GITCLUSTER_STORAGE_METRICS_LISTEN` | `0.0.0.0:9236` (`/metrics`, `/healthz`) |
//! | `--storage NAME=PATH` (repeatable) | `GITCLUSTER_STORAGES` (comma separated) | required |
//! | (env only) | `GITCLUSTER_STORAGE_TOKEN` | none: the node refuses to start |
//! | `--token-file` | `GITCLUSTER_STORAGE_TOKEN_FILE` | none |
//! | `--no-auth` | `GITCLUSTER_STORAGE_NO_AUTH` | false: a token is required |
//! | `--auth-transitioning` | `GITCLUSTER_STORAGE_AUTH_TRANSITIONING` | false |
//! | `--git-bin` | `GITCLUSTER_GIT_BIN` | `git` |
//! | `--max-git-processes` | `GITCLUSTER_STORAGE_MAX_GIT_PROCESSES` | 64 |
//! | `--max-git-processes-per-repository` | `GITCLUSTER_STORAGE_MAX_GIT_PROCESSES_PER_REPOSITORY` | 0: half of the above |
//! | `--max-replication-git-processes` | `GITCLUSTER_STORAGE_MAX_REPLICATION_GIT_PROCESSES` | 16 (each of two pools) |
//! | `--git-slot-wait-secs` | `GITCLUSTER_STORAGE_GIT_SLOT_WAIT_SECS` | 10 |
//! | `--stream-idle-timeout-secs` | `GITCLUSTER_STORAGE_STREAM_IDLE_TIMEOUT_SECS` | 60 |
//! | `--graceful-timeout-secs` | `GITCLUSTER_STORAGE_GRACEFUL_TIMEOUT_SECS` | 30 |
//! | `--temp-max-age-secs` | `GITCLUSTER_STORAGE_TEMP_MAX_AGE_SECS` | 3600 |
//! | `--dump-config` | | prints the effective config (token redacted) and exits |

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Environment variable holding the shared internal token.
pub const TOKEN_ENV: &str = "GITCLUSTER_STORAGE_TOKEN";

/// Default age past which an unused temp entry is swept: far longer than any
/// scratch step but a replication (which is protected while it runs), short enough
/// that a crashed copy's gigabytes do not linger for days.
pub const DEFAULT_TEMP_MAX_AGE: Duration = Duration::from_secs(3600);

/// How often the temp directories are swept.
pub const DEFAULT_TEMP_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Command-line interface of `gitcluster-storage`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "gitcluster-storage",
    version,
    about = "gitcluster storage node: bare Git repositories over gRPC"
)]
pub struct Args {
    /// gRPC listen address.
    #[arg(
        long,
        env = "GITCLUSTER_STORAGE_LISTEN",
        default_value = "0.0.0.0:8075"
    )]
    pub listen: SocketAddr,
    /// Admin HTTP listen address (`/metrics`, `/healthz`).
    #[arg(
        long,
        env = "GITCLUSTER_STORAGE_METRICS_LISTEN",
        default_value = "0.0.0.0:9236"
    )]
    pub metrics_listen: SocketAddr,
    /// A storage as `NAME=PATH`; repeat for several. PATH is created when missing.
    #[arg(long = "storage", env = "GITCLUSTER_STORAGES", value_delimiter = ',')]
    pub storages: Vec<String>,
    /// File holding the shared token (a trailing newline is trimmed). The token may
    /// instead be given in `GITCLUSTER_STORAGE_TOKEN`.
    #[arg(long, env = "GITCLUSTER_STORAGE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Accept every request but count what authentication would have decided.
    #[arg(long, env = "GITCLUSTER_STORAGE_AUTH_TRANSITIONING")]
    pub auth_transitioning: bool,
    /// Run without authentication. Without a token the node refuses to start unless
    /// this is given, so a forgotten token never silently opens the node.
    #[arg(long, env = "GITCLUSTER_STORAGE_NO_AUTH")]
    pub no_auth: bool,
    /// The git executable.
    #[arg(long, env = "GITCLUSTER_GIT_BIN", default_value = "git")]
    pub git_bin: PathBuf,
    /// Maximum number of git processes running at once.
    #[arg(
        long,
        env = "GITCLUSTER_STORAGE_MAX_GIT_PROCESSES",
        default_value_t = 64
    )]
    pub max_git_processes: usize,
    /// How long in-flight requests may take to finish once shutdown starts.
    #[arg(
        long,
        env = "GITCLUSTER_STORAGE_GRACEFUL_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub graceful_timeout_secs: u64,
    /// Entries in a storage's `+gitcluster/tmp` older than this many seconds, and not
    /// in use, are removed while the node runs (scratch left by a crash or a
    /// removal that failed half-way).
    #[arg(
        long,
        env = "GITCLUSTER_STORAGE_TEMP_MAX_AGE_SECS",
        default_value_t = DEFAULT_TEMP_MAX_AGE.as_secs()
    )]
    pub temp_max_age_secs: u64,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub dump_config: bool,
    /// Process slot and stream limits (`crate::slots`).
    #[command(flatten)]
    pub limits: crate::slots::LimitArgs,
}

/// A configuration problem: the process exits with status 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// One configured storage: a name and the directory holding its repositories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Name clients use in `Repository.storage_name`.
    pub name: String,
    /// Root directory (canonical once [`Config::prepare_storages`] ran).
    pub path: PathBuf,
}

/// The effective configuration of a storage node.
#[derive(Clone)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address.
    pub metrics_listen: SocketAddr,
    /// Storages served by this node; names are unique, at least one.
    pub storages: Vec<StorageConfig>,
    /// Shared token; `None` disables authentication (the binary allows that only
    /// with `--no-auth`, see [`Config::from_args`]).
    pub token: Option<String>,
    /// Authentication was switched off explicitly (`--no-auth`).
    pub no_auth: bool,
    /// Transitioning auth mode: accept all, count outcomes.
    pub auth_transitioning: bool,
    /// The git executable.
    pub git_bin: PathBuf,
    /// Cap on concurrently running git processes.
    pub max_git_processes: usize,
    /// Drain deadline at shutdown.
    pub graceful_timeout: Duration,
    /// Unused temp entries older than this are swept while running.
    pub temp_max_age: Duration,
    /// Period of the temp sweep.
    pub temp_sweep_interval: Duration,
    /// Executable run by `git fetch` as its ssh transport during replication (it is
    /// invoked as `<ssh_helper> ssh-upload-pack ...`). Defaults to this executable.
    pub ssh_helper: PathBuf,
    /// Process slot and stream limits.
    pub limits: crate::slots::Limits,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("storages", &self.storages)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("no_auth", &self.no_auth)
            .field("auth_transitioning", &self.auth_transitioning)
            .field("git_bin", &self.git_bin)
            .field("max_git_processes", &self.max_git_processes)
            .field("graceful_timeout", &self.graceful_timeout)
            .field("temp_max_age", &self.temp_max_age)
            .field("temp_sweep_interval", &self.temp_sweep_interval)
            .field("ssh_helper", &self.ssh_helper)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Config {
    /// A configuration with defaults for everything but the storages; listeners on
    /// `127.0.0.1:0`. Meant for tests and embedding.
    pub fn with_storages(storages: Vec<StorageConfig>) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            storages,
            token: None,
            no_auth: false,
            auth_transitioning: false,
            git_bin: PathBuf::from("git"),
            max_git_processes: 64,
            graceful_timeout: Duration::from_secs(30),
            temp_max_age: DEFAULT_TEMP_MAX_AGE,
            temp_sweep_interval: DEFAULT_TEMP_SWEEP_INTERVAL,
            ssh_helper: std::env::current_exe()
                .unwrap_or_else(|_| PathBuf::from("gitcluster-storage")),
            limits: crate::slots::Limits::default(),
        }
    }

    /// Validates the arguments and reads the token; does not touch storage directories.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let mut storages = Vec::new();
        let mut names = HashSet::new();
        for raw in args
            .storages
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            let (name, path) = raw.split_once('=').ok_or_else(|| {
                ConfigError(format!("storage {raw:?} is not of the form NAME=PATH"))
            })?;
            let (name, path) = (name.trim(), path.trim());
            if name.is_empty() || path.is_empty() {
                return Err(ConfigError(format!(
                    "storage {raw:?} has an empty name or path"
                )));
            }
            if !names.insert(name.to_owned()) {
                return Err(ConfigError(format!("storage {name:?} is configured twice")));
            }
            storages.push(StorageConfig {
                name: name.to_owned(),
                path: PathBuf::from(path),
            });
        }
        if storages.is_empty() {
            return Err(ConfigError(
                "at least one --storage NAME=PATH (or GITCLUSTER_STORAGES) is required".into(),
            ));
        }
        let token = match (&args.token_file, std::env::var(TOKEN_ENV)) {
            (Some(file), _) => {
                let raw = std::fs::read_to_string(file).map_err(|e| {
                    ConfigError(format!("cannot read token file {}: {e}", file.display()))
                })?;
                Some(raw.trim_end_matches(['\n', '\r']).to_owned())
            }
            (None, Ok(t)) => Some(t),
            (None, Err(_)) => None,
        }
        .filter(|t| !t.is_empty());
        // Authentication is the default: without a token the node is open to anyone
        // who reaches its port, so that must be asked for, never fallen into.
        match (&token, args.no_auth) {
            (None, false) => {
                return Err(ConfigError(format!(
                    "no token configured: set {TOKEN_ENV} or --token-file, or pass --no-auth to run without authentication"
                )));
            }
            (Some(_), true) => {
                return Err(ConfigError(
                    "--no-auth contradicts the configured token: drop one of them".into(),
                ));
            }
            _ => {}
        }
        if args.max_git_processes == 0 {
            return Err(ConfigError("--max-git-processes must be at least 1".into()));
        }
        let mut config = Config::with_storages(storages);
        config.listen = args.listen;
        config.metrics_listen = args.metrics_listen;
        config.token = token;
        config.no_auth = args.no_auth;
        config.auth_transitioning = args.auth_transitioning;
        config.git_bin = args.git_bin;
        config.max_git_processes = args.max_git_processes;
        config.graceful_timeout = Duration::from_secs(args.graceful_timeout_secs);
        config.temp_max_age = Duration::from_secs(args.temp_max_age_secs);
        config.limits = crate::slots::Limits::from_args(&args.limits).map_err(ConfigError)?;
        Ok(config)
    }

    /// Creates missing storage directories and canonicalizes their paths.
    pub fn prepare_storages(&mut self) -> Result<(), ConfigError> {
        for s in &mut self.storages {
            std::fs::create_dir_all(&s.path).map_err(|e| {
                ConfigError(format!(
                    "cannot create storage {} at {}: {e}",
                    s.name,
                    s.path.display()
                ))
            })?;
            s.path = s.path.canonicalize().map_err(|e| {
                ConfigError(format!(
                    "cannot resolve storage {} at {}: {e}",
                    s.name,
                    s.path.display()
                ))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["gitcluster-storage"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).expect("parses")
    }

    #[test]
    fn storages_are_parsed_and_duplicates_rejected() {
        let c = Config::from_args(args(&[
            "--no-auth",
            "--storage",
            "a=/x",
            "--storage",
            "b=/y",
        ]))
        .expect("valid");
        assert_eq!(c.storages.len(), 2);
        assert_eq!(
            c.storages[1],
            StorageConfig {
                name: "b".into(),
                path: "/y".into()
            }
        );
        assert!(
            Config::from_args(args(&[
                "--no-auth",
                "--storage",
                "a=/x",
                "--storage",
                "a=/y"
            ]))
            .is_err()
        );
        assert!(Config::from_args(args(&["--no-auth", "--storage", "nopath"])).is_err());
    }

    #[test]
    fn a_token_is_required_unless_no_auth_is_explicit() {
        // The token may also come from the environment; a token file pins it here.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").expect("token file");
        let file = file.to_str().expect("utf-8");
        let with_file = Config::from_args(args(&["--storage", "a=/x", "--token-file", file]))
            .expect("a token is enough");
        assert_eq!(with_file.token.as_deref(), Some("s3cret"));
        assert!(!with_file.no_auth);
        let both = Config::from_args(args(&[
            "--storage",
            "a=/x",
            "--token-file",
            file,
            "--no-auth",
        ]));
        assert!(both.is_err(), "a token and --no-auth contradict");
        if std::env::var_os(TOKEN_ENV).is_none() {
            let missing = Config::from_args(args(&["--storage", "a=/x"])).expect_err("refused");
            assert!(missing.0.contains("--no-auth"), "{missing}");
            let open = Config::from_args(args(&["--storage", "a=/x", "--no-auth"])).expect("open");
            assert!(open.no_auth && open.token.is_none());
        }
    }

    #[test]
    fn debug_output_redacts_the_token() {
        let mut c = Config::with_storages(vec![]);
        c.token = Some("s3cret".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
