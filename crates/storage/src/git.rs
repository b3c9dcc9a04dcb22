//! Running git: every git process of the node starts here, with a minimal,
//! reproducible environment, durability settings, bounded stderr, `kill_on_drop`, and
//! a cap on how many run at once.
//!
//! Every git also runs with the node's own `core.hooksPath`, an empty directory in
//! the node's private HOME, so no hook found in a repository (its `hooks/`, or a
//! `core.hooksPath` in its config) ever runs under the node's identity: repository
//! contents arrive from clients and from other nodes. Custom hooks are replicated
//! in `custom_hooks/` but not executed (docs/decisions.md); when they are, they
//! will be run from here, never found by git in the repository.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tonic::Status;

use crate::slots::{Limits, Slot, SlotClass, Slots};

/// How much of a git process's stderr is kept (the tail).
pub const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// Config every git process gets: fsync objects, derived metadata and refs, so that
/// no acknowledged push is lost on power failure.
const DURABILITY: &[&str] = &[
    "-c",
    "core.fsync=objects,derived-metadata,reference",
    "-c",
    "core.fsyncMethod=fsync",
    "-c",
    "safe.directory=*",
];

/// Config every git process gets so that repository config cannot make the node run
/// code (beside the fixed hooks path added in [`Git::command`]), and the
/// upload-pack capabilities the node offers. `-c` outranks the repository's config.
/// - `core.fsmonitor=false`: a command that refreshes an index would run the
///   configured program.
/// - `uploadpack.allowFilter`, `uploadpack.allowAnySHA1InWant`: partial clone (and
///   its lazy fetch of one missing object by id), as GitLab configures Gitaly.
const HARDENING: &[&str] = &[
    "-c",
    "core.fsmonitor=false",
    "-c",
    "uploadpack.allowFilter=true",
    "-c",
    "uploadpack.allowAnySHA1InWant=true",
];

/// The empty directory inside the node's git HOME that is every git's
/// `core.hooksPath` (created by [`crate::paths::Storages::open`]; a missing one
/// also means no hooks).
pub const HOOKS_DIR_IN_HOME: &str = "hooks";

/// Factory for git commands sharing one executable, `HOME` and concurrency cap.
#[derive(Debug, Clone)]
pub struct Git {
    bin: PathBuf,
    home: PathBuf,
    slots: Arc<Slots>,
}

impl Git {
    /// A factory running `bin`, with `HOME=home`, at most `max_processes` client
    /// processes at once and the default [`Limits`].
    pub fn new(bin: PathBuf, home: PathBuf, max_processes: usize) -> Self {
        Git::with_limits(bin, home, max_processes, &Limits::default())
    }

    /// A factory running `bin`, with `HOME=home`, under the process slots of
    /// [`crate::slots`]: `max_processes` client processes and `limits`.
    pub fn with_limits(bin: PathBuf, home: PathBuf, max_processes: usize, limits: &Limits) -> Self {
        Git {
            bin,
            home,
            slots: Arc::new(Slots::new(max_processes, limits)),
        }
    }

    /// The node's process slots.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// Starts building `git <args>`; with `git_dir` set the command runs against that
    /// repository via `--git-dir`.
    pub fn command(&self, git_dir: Option<&Path>) -> GitCommand {
        let mut args: Vec<OsString> = DURABILITY
            .iter()
            .chain(HARDENING)
            .map(OsString::from)
            .collect();
        let mut hooks = OsString::from("core.hooksPath=");
        hooks.push(self.home.join(HOOKS_DIR_IN_HOME));
        args.extend([OsString::from("-c"), hooks]);
        if let Some(dir) = git_dir {
            let mut a = OsString::from("--git-dir=");
            a.push(dir);
            args.push(a);
        }
        GitCommand {
            git: self.clone(),
            args,
            env: Vec::new(),
            name: String::new(),
            class: SlotClass::Client,
            repository: git_dir.map(Path::to_path_buf),
        }
    }
}

/// A git command being built.
#[derive(Debug)]
pub struct GitCommand {
    git: Git,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    name: String,
    class: SlotClass,
    // Whose per-repository slots the process counts against (client class only).
    repository: Option<PathBuf>,
}

/// Captured result of a finished git process.
#[derive(Debug)]
pub struct GitOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything git wrote to stdout.
    pub stdout: Vec<u8>,
    /// The tail of stderr (at most [`STDERR_TAIL_BYTES`]).
    pub stderr: Vec<u8>,
}

impl GitOutput {
    /// `Ok(self)` on exit status 0, otherwise `Internal` naming the command and the
    /// last line of stderr.
    pub fn check(self, what: &str) -> Result<Self, Status> {
        if self.status.success() {
            Ok(self)
        } else {
            Err(Status::internal(format!(
                "{what} failed: {}",
                last_line(&self.stderr)
            )))
        }
    }

    /// stdout as trimmed UTF-8 (lossy).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim().to_owned()
    }
}

/// The last non-empty line of `stderr`, at most 512 bytes, for error messages.
pub fn last_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let mut end = line.len().min(512);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_owned()
}

impl GitCommand {
    /// Appends arguments; the first one added names the command in errors and logs.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            if self.name.is_empty() {
                self.name = format!("git {}", a.as_ref().to_string_lossy());
            }
            self.args.push(a.as_ref().to_owned());
        }
        self
    }

    /// Adds one environment variable on top of the minimal environment.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Sets `GIT_PROTOCOL` when `protocol` is not empty.
    pub fn git_protocol(self, protocol: &str) -> Self {
        if protocol.is_empty() {
            self
        } else {
            self.env("GIT_PROTOCOL", protocol)
        }
    }

    /// Counts the process against `path`'s per-repository slots; commands built with
    /// a `git_dir` already do, this is for those naming the repository in an argument.
    pub fn repository(mut self, path: &Path) -> Self {
        self.repository = Some(path.to_path_buf());
        self
    }

    /// Draws the process's slot from `class`'s pool (default: client).
    pub fn slot_class(mut self, class: SlotClass) -> Self {
        self.class = class;
        self
    }

    /// The command's name for messages, e.g. `git fetch`.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn build(&self) -> Command {
        let mut cmd = Command::new(&self.git.bin);
        cmd.args(&self.args)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", &self.git.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("LANG", "C")
            .env("LC_ALL", "C")
            .env("GIT_TERMINAL_PROMPT", "0")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        cmd
    }

    /// Spawns the process with piped stdin/stdout and a bounded stderr collector,
    /// after waiting for a slot ([`crate::slots`]; ResourceExhausted when none frees
    /// up within the bound).
    pub async fn spawn(self) -> Result<GitChild, Status> {
        self.spawn_inner(true).await
    }

    /// Like [`GitCommand::spawn`], but stderr stays piped for the caller to read in
    /// full ([`GitChild::take_stderr`]).
    pub async fn spawn_with_stderr(self) -> Result<GitChild, Status> {
        self.spawn_inner(false).await
    }

    async fn spawn_inner(self, collect_stderr: bool) -> Result<GitChild, Status> {
        let permit = self
            .git
            .slots
            .acquire(self.class, self.repository.as_deref())
            .await?;
        let mut cmd = self.build();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Status::internal(format!("cannot start {}: {e}", self.name)))?;
        let collected = if collect_stderr {
            child.stderr.take()
        } else {
            None
        };
        let stderr = collected.map(|mut err| {
            tokio::spawn(async move {
                let mut tail = Vec::new();
                let mut buf = vec![0u8; 4096];
                loop {
                    match err.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            tail.extend_from_slice(&buf[..n]);
                            if tail.len() > STDERR_TAIL_BYTES {
                                let cut = tail.len() - STDERR_TAIL_BYTES;
                                tail.drain(..cut);
                            }
                        }
                    }
                }
                tail
            })
        });
        Ok(GitChild {
            child,
            stderr,
            name: self.name,
            _permit: permit,
        })
    }

    /// Runs to completion, feeding `stdin` and capturing stdout (callers use this only
    /// for commands with small output) and the tail of stderr.
    pub async fn output(self, stdin: &[u8]) -> Result<GitOutput, Status> {
        let mut child = self.spawn().await?;
        let mut input = child.child.stdin.take();
        let mut out = child.child.stdout.take();
        let write = async {
            if let Some(w) = input.as_mut() {
                // git may exit without reading stdin; its exit status tells the story.
                let _ = w.write_all(stdin).await;
            }
            drop(input);
        };
        let read = async {
            let mut buf = Vec::new();
            if let Some(r) = out.as_mut() {
                r.read_to_end(&mut buf)
                    .await
                    .map_err(|e| Status::internal(format!("read git output: {e}")))?;
            }
            Ok::<_, Status>(buf)
        };
        let ((), stdout) = tokio::join!(write, read);
        let stdout = stdout?;
        let (status, stderr) = child.wait().await?;
        Ok(GitOutput {
            status,
            stdout,
            stderr,
        })
    }

    /// Runs with empty stdin and fails with `Internal` on a non-zero exit.
    pub async fn run(self) -> Result<GitOutput, Status> {
        let name = self.name.clone();
        self.output(&[]).await?.check(&name)
    }
}

/// A running git process holding its concurrency slot. Dropping it kills git.
#[derive(Debug)]
pub struct GitChild {
    /// The process; stdin and stdout are piped (take them), stderr is collected.
    pub child: Child,
    stderr: Option<JoinHandle<Vec<u8>>>,
    name: String,
    _permit: Slot,
}

impl GitChild {
    /// The command's name for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stderr pipe, when spawned with [`GitCommand::spawn_with_stderr`].
    pub fn take_stderr(&mut self) -> Option<tokio::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// Waits for exit; returns the status and the tail of stderr.
    pub async fn wait(mut self) -> Result<(ExitStatus, Vec<u8>), Status> {
        drop(self.child.stdin.take());
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| Status::internal(format!("wait for {}: {e}", self.name)))?;
        let stderr = match self.stderr.take() {
            Some(h) => h.await.unwrap_or_default(),
            None => Vec::new(),
        };
        Ok((status, stderr))
    }

    /// Waits for exit and maps a non-zero status to `Internal` with stderr's last line.
    pub async fn wait_success(self) -> Result<(), Status> {
        let name = self.name.clone();
        let (status, stderr) = self.wait().await?;
        if status.success() {
            Ok(())
        } else {
            Err(Status::internal(format!(
                "{name} failed: {}",
                last_line(&stderr)
            )))
        }
    }

    /// Kills the process and reaps it.
    pub async fn kill(mut self) {
        if let Err(e) = self.child.kill().await {
            tracing::warn!(command = %self.name, error = %e, "cannot kill git");
        }
    }
}
