//! Where repositories live on disk, and the one function deciding whether a
//! client-supplied relative path may be used (the string rules are
//! `gitcluster_proto::relative_path`'s, shared with the router; this adds the
//! symlink check only a node can make).
//!
//! A storage is a directory; a repository is a bare repository at
//! `<root>/<relative_path>`. `<root>/+gitcluster/` is ours: `tmp/` for atomic
//! create/remove (same filesystem, so renames are atomic) and `home/` for git's `HOME`
//! (with `home/hooks`, the empty directory every git runs with as `core.hooksPath`).
//!
//! Temp entries are scratch: an operation that builds something in `tmp/` holds a
//! [`TempEntry`], which removes it when dropped (also when the request is cancelled
//! or panics), and [`sweep_temp`] removes entries older than a bound that no live
//! [`TempEntry`] holds, so a crash's leftovers do not wait for the next start.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use gitcluster_proto::relative_path::{PathRuleError, check_storage_path};
use gitcluster_proto::v1::Repository;
use tonic::Status;

use crate::config::StorageConfig;

pub use gitcluster_proto::relative_path::INTERNAL_DIR;

/// Why a relative path was refused; every variant becomes `InvalidArgument` with
/// the error's message as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A string rule of [`check_storage_path`] (the one definition the router checks
    /// too); the message is the rule's own.
    #[error(transparent)]
    Rule(#[from] PathRuleError),
    /// Following symlinks leads outside the storage root.
    #[error("relative path escapes the storage through a symlink")]
    Escapes,
}

/// Checks `rel` and returns `root.join(rel)`, which is guaranteed to stay inside
/// `root` (which must be canonical): the string rules reject traversal, and the
/// deepest existing ancestor of the joined path, canonicalized, must lie in `root`.
pub fn validate_relative_path(root: &Path, rel: &str) -> Result<PathBuf, PathError> {
    check_storage_path(rel)?;
    let joined = root.join(rel);
    // Belt and braces: the string rules above already imply this.
    if !joined
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::RootDir))
    {
        return Err(PathRuleError::DotComponent.into());
    }
    // The deepest entry that exists (a dangling symlink counts: it must not be
    // followed later by mkdir) must resolve inside the root.
    let mut probe: &Path = &joined;
    loop {
        if probe.symlink_metadata().is_ok() {
            let canonical = probe.canonicalize().map_err(|_| PathError::Escapes)?;
            if !canonical.starts_with(root) {
                return Err(PathError::Escapes);
            }
            break;
        }
        match probe.parent() {
            Some(p) if p.starts_with(root) => probe = p,
            _ => return Err(PathError::Escapes),
        }
    }
    Ok(joined)
}

/// A validated repository location on this node.
#[derive(Debug, Clone)]
pub struct RepoPath {
    /// Storage name as requested.
    pub storage: String,
    /// Relative path as requested.
    pub relative: String,
    /// Canonical storage root.
    pub root: PathBuf,
    /// Absolute path of the repository directory (inside `root`).
    pub path: PathBuf,
}

impl RepoPath {
    /// The storage's temp directory (same filesystem as the repository).
    pub fn tmp_dir(&self) -> PathBuf {
        tmp_dir(&self.root)
    }

    /// Whether a git repository exists here: a directory with `HEAD`, `objects/`, `refs/`.
    pub fn exists(&self) -> bool {
        is_git_repo(&self.path)
    }

    /// `NotFound` unless the repository exists.
    pub fn require_exists(&self) -> Result<(), Status> {
        if self.exists() {
            Ok(())
        } else {
            Err(Status::not_found("repository not found"))
        }
    }
}

/// `<root>/+gitcluster/tmp`.
pub fn tmp_dir(root: &Path) -> PathBuf {
    root.join(INTERNAL_DIR).join("tmp")
}

/// Whether `dir` looks like a bare git repository.
pub fn is_git_repo(dir: &Path) -> bool {
    dir.join("HEAD").is_file() && dir.join("objects").is_dir() && dir.join("refs").is_dir()
}

/// The storages of this node, by name.
#[derive(Debug, Clone)]
pub struct Storages {
    roots: HashMap<String, PathBuf>,
    first: PathBuf,
}

impl Storages {
    /// Builds the set from canonical storage configs and prepares each internal
    /// directory, removing stale temp entries left by a previous run.
    pub fn open(configs: &[StorageConfig]) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let first = configs
            .first()
            .context("no storage configured")?
            .path
            .clone();
        let mut roots = HashMap::new();
        for s in configs {
            let tmp = tmp_dir(&s.path);
            std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
            let home = s.path.join(INTERNAL_DIR).join("home");
            std::fs::create_dir_all(home.join(crate::git::HOOKS_DIR_IN_HOME))
                .context("create git home")?;
            for entry in std::fs::read_dir(&tmp).context("list temp dir")? {
                let entry = entry.context("list temp dir")?;
                let p = entry.path();
                let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                match removed {
                    Ok(()) => tracing::info!(path = %p.display(), "removed stale temp entry"),
                    Err(e) => {
                        tracing::warn!(path = %p.display(), error = %e, "cannot remove stale temp entry")
                    }
                }
            }
            roots.insert(s.name.clone(), s.path.clone());
        }
        Ok(Storages { roots, first })
    }

    /// Private `HOME` for git processes.
    pub fn git_home(&self) -> PathBuf {
        self.first.join(INTERNAL_DIR).join("home")
    }

    /// The temp directory of every storage.
    pub fn tmp_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.roots.values().map(|r| tmp_dir(r)).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// The canonical root of `name`, or `InvalidArgument`.
    pub fn root(&self, name: &str) -> Result<&Path, Status> {
        self.roots
            .get(name)
            .map(PathBuf::as_path)
            .ok_or_else(|| Status::invalid_argument(format!("storage {name:?} is not configured")))
    }

    /// Validates a request's repository field; every problem is `InvalidArgument`.
    pub fn locate(&self, repo: Option<&Repository>) -> Result<RepoPath, Status> {
        let repo = repo.ok_or_else(|| Status::invalid_argument("repository is required"))?;
        let root = self.root(&repo.storage_name)?;
        let path = validate_relative_path(root, &repo.relative_path)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(RepoPath {
            storage: repo.storage_name.clone(),
            relative: repo.relative_path.clone(),
            root: root.to_path_buf(),
            path,
        })
    }
}

/// Temp paths held by a live [`TempEntry`], which the sweep must not touch however
/// old they look (a replication of a huge repository can run for hours while its
/// top-level directory's mtime stays put). Process-wide because a path is unique
/// (a fresh uuid) whichever node in the process made it.
static IN_USE: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

fn in_use() -> std::sync::MutexGuard<'static, Option<HashSet<PathBuf>>> {
    // The set is only inserted into and removed from; a panic elsewhere while it was
    // held cannot leave it inconsistent.
    IN_USE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A path in a temp dir that belongs to one operation: the sweep leaves it alone
/// while this lives, and dropping it removes whatever is at the path. On success
/// the operation has renamed its result away, so what remains is always scratch
/// (a cancelled or failed copy, a staged file set).
#[derive(Debug)]
pub struct TempEntry {
    path: PathBuf,
}

impl TempEntry {
    /// Claims `path` (which should not exist yet) for the caller.
    pub fn new(path: PathBuf) -> Self {
        in_use()
            .get_or_insert_with(HashSet::new)
            .insert(path.clone());
        TempEntry { path }
    }

    /// The claimed path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempEntry {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        let remove = move || {
            remove_with_retries(&path);
            if let Some(set) = in_use().as_mut() {
                set.remove(&path);
            }
        };
        // Dropped on a runtime thread (a cancelled request): remove off the runtime,
        // a multi-gigabyte copy takes a while.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(remove);
            }
            Err(_) => remove(),
        }
    }
}

/// Removes `path` (file or tree). A git process killed a moment ago (kill_on_drop
/// does not wait) or its `index-pack` child may still be writing into the tree, so
/// a removal that fails is tried again a few times; what survives is left to
/// [`sweep_temp`].
// Runs on a blocking thread (spawn_blocking) or outside any runtime, where a short
// sleep between attempts blocks no worker.
#[allow(clippy::disallowed_methods)]
fn remove_with_retries(path: &Path) {
    const ATTEMPTS: u32 = 10;
    for attempt in 1..=ATTEMPTS {
        let removed = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if attempt == ATTEMPTS => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove temp entry, the sweep will retry");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Removes every entry directly in `tmp_dirs` whose mtime is older than `max_age`
/// and that no live [`TempEntry`] holds; returns how many it removed. Blocking.
pub fn sweep_temp(tmp_dirs: &[PathBuf], max_age: Duration) -> usize {
    let now = SystemTime::now();
    let mut removed = 0;
    for tmp in tmp_dirs {
        let entries = match std::fs::read_dir(tmp) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(path = %tmp.display(), error = %e, "cannot list temp dir");
                continue;
            }
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            // A clock stepped backwards makes everything look young: kept, not lost.
            let old = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > max_age);
            if !old || in_use().as_ref().is_some_and(|s| s.contains(&path)) {
                continue;
            }
            let result = if meta.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match result {
                Ok(()) => {
                    removed += 1;
                    tracing::info!(path = %path.display(), "swept old temp entry");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot sweep temp entry")
                }
            }
        }
    }
    removed
}

/// Runs [`sweep_temp`] over `tmp_dirs` every `interval` until `shutdown` fires.
/// Failure policy: a sweep that cannot remove something logs it and the loop goes
/// on; the task ends only at shutdown. A node whose sweep stopped only keeps
/// scratch longer, so nothing waits on the task.
pub fn spawn_temp_sweeper(
    tmp_dirs: Vec<PathBuf>,
    max_age: Duration,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let dirs = tmp_dirs.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || sweep_temp(&dirs, max_age)).await {
                tracing::warn!(error = %e, "temp sweep task failed");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn root() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("storage");
        std::fs::create_dir_all(&root).expect("mkdir");
        let root = root.canonicalize().expect("canonical");
        (dir, root)
    }

    #[test]
    fn bad_paths_are_rejected_with_a_reason() {
        let (_d, root) = root();
        let cases: &[(&str, PathRuleError)] = &[
            ("", PathRuleError::Empty),
            ("/etc/passwd", PathRuleError::Absolute),
            ("../x.git", PathRuleError::DotComponent),
            ("a/../../x", PathRuleError::DotComponent),
            ("./a", PathRuleError::DotComponent),
            ("a/.", PathRuleError::DotComponent),
            ("a//b", PathRuleError::EmptyComponent),
            ("a/", PathRuleError::EmptyComponent),
            ("a\0b", PathRuleError::ControlChar),
            ("a\nb", PathRuleError::ControlChar),
            ("a\\b", PathRuleError::Backslash),
            ("+gitcluster/tmp/x", PathRuleError::Internal),
            ("+gitclusterfoo", PathRuleError::Internal),
        ];
        for (input, want) in cases {
            assert_eq!(
                validate_relative_path(&root, input),
                Err(PathError::Rule(want.clone())),
                "input {input:?}"
            );
        }
        assert_eq!(
            validate_relative_path(&root, "group/project.git").expect("valid"),
            root.join("group/project.git")
        );
        assert!(validate_relative_path(&root, "a/+gitcluster").is_ok());
    }

    #[test]
    fn a_refused_path_is_invalid_argument_with_the_rule_as_reason() {
        let (dir, root) = root();
        std::os::unix::fs::symlink(dir.path(), root.join("out")).expect("symlink");
        let storages = Storages::open(&[StorageConfig {
            name: "default".into(),
            path: root,
        }])
        .expect("open");
        for (rel, reason) in [
            (
                "../x.git",
                "relative path must not contain '.' or '..' components",
            ),
            (
                "+gitcluster/tmp/x",
                "relative path must not start with +gitcluster",
            ),
            ("a\\b", "relative path must not contain backslashes"),
            (
                "out/x.git",
                "relative path escapes the storage through a symlink",
            ),
        ] {
            let status = storages
                .locate(Some(&Repository {
                    storage_name: "default".into(),
                    relative_path: rel.into(),
                }))
                .expect_err(rel);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{rel:?}");
            assert_eq!(status.message(), reason, "{rel:?}");
        }
    }

    #[test]
    fn symlink_escapes_are_rejected() {
        let (dir, root) = root();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, root.join("evil")).expect("symlink");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), root.join("dangling"))
            .expect("symlink");
        std::fs::create_dir_all(root.join("inner")).expect("mkdir");
        std::os::unix::fs::symlink(root.join("inner"), root.join("good")).expect("symlink");
        assert_eq!(
            validate_relative_path(&root, "evil"),
            Err(PathError::Escapes)
        );
        assert_eq!(
            validate_relative_path(&root, "evil/x/y.git"),
            Err(PathError::Escapes)
        );
        assert_eq!(
            validate_relative_path(&root, "dangling/x.git"),
            Err(PathError::Escapes)
        );
        assert!(validate_relative_path(&root, "good/x.git").is_ok());
    }

    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("..".to_string()),
            Just(".".to_string()),
            Just(String::new()),
            Just("evil".to_string()),
            Just("+gitcluster".to_string()),
            "[a-z.\\\\/\\x00\\n+ -]{1,6}",
        ]
    }

    proptest! {
        #[test]
        fn accepted_paths_always_stay_under_the_root(
            comps in proptest::collection::vec(component(), 1..5),
            leading_slash in any::<bool>(),
        ) {
            let (dir, root) = root();
            let outside = dir.path().join("outside");
            std::fs::create_dir_all(outside.join("x")).expect("mkdir");
            std::os::unix::fs::symlink(&outside, root.join("evil")).expect("symlink");
            let mut rel = comps.join("/");
            if leading_slash { rel.insert(0, '/'); }
            if let Ok(p) = validate_relative_path(&root, &rel) {
                prop_assert!(p.starts_with(&root));
                prop_assert!(!p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)));
                let mut probe = p.as_path();
                while probe.symlink_metadata().is_err() {
                    probe = probe.parent().expect("root exists");
                }
                prop_assert!(probe.canonicalize().expect("resolves").starts_with(&root));
            }
        }
    }
}
