//! One of our binaries run as a child process, and where the binaries are.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::*;

/// A free loopback port. There is a small window between probing and use.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Directory holding the built binaries: `GITCLUSTER_BIN_DIR`, or the profile dir
/// this test binary was built into (`target/<profile>/deps/<test>` → `target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("GITCLUSTER_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A fresh directory (for members' logs outside a `Cluster`), removed when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gitcluster-member-")
        .tempdir()
        .expect("temp dir")
}

/// Path of one of our binaries; panics with the command to run when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --bins` first (`make test` does)",
        path.display()
    );
    path
}

/// A cluster member: one of our binaries running as a child process.
///
/// Build one with [`Member::new`] and the `arg`/`env` methods, then [`start`](Self::start)
/// it. Every test process of the workspace runs through this type: the cluster's
/// members, the router suite's router and the replicator suite's replicators.
#[derive(Debug)]
pub struct Member {
    /// Name used in log file names and messages, for example `storage-1`.
    pub name: String,
    binary: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    log: PathBuf,
    child: Option<Child>,
    /// Address of its admin port (`/healthz`, `/metrics`).
    pub metrics_addr: SocketAddr,
}

impl Member {
    /// A member that is not running yet: `binary` under the name `name`, logging
    /// (stdout and stderr, appended) to `<dir>/<name>.log`, with `HOME` set to `dir`.
    /// Its admin port is a free loopback port, passed as the first argument
    /// `--metrics-listen=127.0.0.1:<port>` (every one of our services takes that
    /// flag) and kept in [`metrics_addr`](Self::metrics_addr).
    pub fn new(name: impl Into<String>, binary: impl Into<PathBuf>, dir: &Path) -> Member {
        let name = name.into();
        let metrics_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        Member {
            log: dir.join(format!("{name}.log")),
            name,
            binary: binary.into(),
            args: vec![format!("--metrics-listen={metrics_addr}")],
            env: BTreeMap::new(),
            child: None,
            metrics_addr,
        }
    }

    /// Appends one command-line argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends command-line arguments, in order.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable. The process sees only `PATH`, `HOME`,
    /// `LOG_FORMAT=json`, `RUST_LOG` (`GITCLUSTER_TEST_LOG`, default `info`) and the
    /// variables set here, which win over those.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets several environment variables, as [`env`](Self::env) does.
    #[must_use]
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Spawns the process and waits until `/healthz` answers 200; panics with the
    /// log when it exits or is not ready within the harness's patience.
    pub async fn start(mut self) -> Self {
        self.spawn();
        self.wait_ready().await;
        self
    }

    /// Starts the process (again) without waiting for anything, logging to its log
    /// file; panics when it cannot be spawned.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open member log");
        let child = Command::new(&self.binary)
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.log.parent().expect("log dir"))
            .env("LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("GITCLUSTER_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY-free: `kill(1)` from procps keeps this crate free of unsafe code.
            let status = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -{sig} {pid} failed");
        }
    }

    /// SIGKILL and reap: a crash, not a shutdown. Does nothing when not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then [`wait_exit`](Self::wait_exit): a graceful shutdown.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait_exit().await
    }

    /// Sends SIGTERM and returns at once; does nothing when not running.
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits for the process to exit and reaps it; panics, with the log, when it is
    /// still running after the harness's patience, or when it is not running.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + patience();
        loop {
            let child = self.child.as_mut().expect("member is running");
            if let Some(status) = child.try_wait().expect("wait for member") {
                self.child = None;
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} still running after {:?}; log:\n{}",
                self.name,
                patience(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGSTOP: the process hangs without closing its sockets.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Kills the member if running and starts it again with the same arguments.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    /// Waits until `/healthz` answers 200, failing early if the process exited.
    pub async fn wait_ready(&mut self) {
        self.wait_for("/healthz").await;
    }

    /// Waits until `path` on the admin port answers 200; panics, with the log, when
    /// the process exits first or the harness's patience runs out.
    pub async fn wait_for(&mut self, path: &str) {
        let deadline = tokio::time::Instant::now() + patience();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "{} exited during start-up with {status}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            if let Ok((200, _)) = http_get(self.metrics_addr, path).await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not ready at {}{path}; log:\n{}",
                self.name,
                self.metrics_addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/metrics` text of its admin port.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = http_get(self.metrics_addr, "/metrics").await?;
        anyhow::ensure!(status == 200, "GET /metrics: {status}");
        Ok(body)
    }

    /// The member's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The ERROR lines of its log so far (JSON `"level":"ERROR"`, or ` ERROR ` in
    /// plain text) that contain none of `expected`.
    pub fn unexpected_errors<S: AsRef<str>>(&self, expected: &[S]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains(" ERROR "))
            .filter(|l| !expected.iter().any(|e| l.contains(e.as_ref())))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}
