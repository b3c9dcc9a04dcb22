//! Where repositories live on disk, and the one function deciding whether a
//! client-supplied relative path may be used.
//!
//! A storage is a directory; a repository is a bare repository at
//! `<root>/<relative_path>`. `<root>/+gitcluster/` is ours: `tmp/` for atomic
//! create/remove (same filesystem, so renames are atomic) and `home/` for git's `HOME`.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use gitcluster_proto::v1::Repository;
use tonic::Status;

use crate::config::StorageConfig;

/// Name of the internal directory at the root of every storage.
pub const INTERNAL_DIR: &str = "+gitcluster";

/// Why a relative path was refused; every variant becomes `InvalidArgument`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("relative path is empty")]
    Empty,
    /// The path starts with `/`.
    #[error("relative path must not be absolute")]
    Absolute,
    /// A `.` or `..` component.
    #[error("relative path must not contain '.' or '..' components")]
    DotComponent,
    /// `a//b` or a trailing `/`.
    #[error("relative path must not contain empty components")]
    EmptyComponent,
    /// NUL or another control character.
    #[error("relative path must not contain control characters")]
    ControlChar,
    /// A backslash.
    #[error("relative path must not contain backslashes")]
    Backslash,
    /// The path addresses the storage's internal directory.
    #[error("relative path must not start with +gitcluster")]
    Internal,
    /// Following symlinks leads outside the storage root.
    #[error("relative path escapes the storage through a symlink")]
    Escapes,
}

/// Checks `rel` and returns `root.join(rel)`, which is guaranteed to stay inside
/// `root` (which must be canonical): the string rules reject traversal, and the
/// deepest existing ancestor of the joined path, canonicalized, must lie in `root`.
pub fn validate_relative_path(root: &Path, rel: &str) -> Result<PathBuf, PathError> {
    if rel.is_empty() {
        return Err(PathError::Empty);
    }
    if rel.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if rel.chars().any(char::is_control) {
        return Err(PathError::ControlChar);
    }
    if rel.contains('\\') {
        return Err(PathError::Backslash);
    }
    for (i, comp) in rel.split('/').enumerate() {
        match comp {
            "" => return Err(PathError::EmptyComponent),
            "." | ".." => return Err(PathError::DotComponent),
            c if i == 0 && c.starts_with(INTERNAL_DIR) => return Err(PathError::Internal),
            _ => {}
        }
    }
    let joined = root.join(rel);
    // Belt and braces: the string rules above already imply this.
    if !joined
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::RootDir))
    {
        return Err(PathError::DotComponent);
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
            std::fs::create_dir_all(s.path.join(INTERNAL_DIR).join("home"))
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
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("../x.git", PathError::DotComponent),
            ("a/../../x", PathError::DotComponent),
            ("./a", PathError::DotComponent),
            ("a/.", PathError::DotComponent),
            ("a//b", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            ("a\0b", PathError::ControlChar),
            ("a\nb", PathError::ControlChar),
            ("a\\b", PathError::Backslash),
            ("+gitcluster/tmp/x", PathError::Internal),
            ("+gitclusterfoo", PathError::Internal),
        ];
        for (input, want) in cases {
            assert_eq!(
                validate_relative_path(&root, input).as_ref(),
                Err(want),
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
