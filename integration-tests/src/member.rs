//! One of our binaries run as a child process, and where the binaries are.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::*;

/// A free loopback port. There is a small window between probing and use; the
/// harness retries a member whose port was taken.
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
#[derive(Debug)]
pub struct Member {
    /// Name used in log file names and messages, for example `storage-1`.
    pub name: String,
    pub(crate) binary: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) log: PathBuf,
    pub(crate) child: Option<Child>,
    /// Address of its admin port (`/healthz`, `/metrics`).
    pub metrics_addr: SocketAddr,
}

impl Member {
    /// Starts the process (again), logging to its log file.
    pub(crate) fn spawn(&mut self) {
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

    /// SIGKILL and reap: a crash, not a shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status (a graceful shutdown).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let mut c = self.child.take().expect("member is running");
        c.wait().expect("wait for member")
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
        let name = self.name.clone();
        let addr = self.metrics_addr;
        let deadline = tokio::time::Instant::now() + patience();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("{name} exited during start-up with {status}; log:\n{log}");
            }
            if let Ok((200, _)) = http_get(addr, "/healthz").await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} not ready at {addr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The member's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}
