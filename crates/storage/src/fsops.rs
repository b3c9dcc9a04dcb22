//! Filesystem steps shared by repository creation, removal and replication: temp
//! paths, the atomic move into place, directory fsync, `git init --bare`.

use std::path::{Path, PathBuf};

use tonic::Status;

use crate::Node;
use crate::paths::RepoPath;

/// Maps an I/O error from a filesystem step to a status.
pub(crate) fn io_status(what: &str, e: std::io::Error) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// A fresh unique path inside the storage's temp dir.
pub(crate) fn temp_path(repo: &RepoPath, prefix: &str) -> PathBuf {
    repo.tmp_dir()
        .join(format!("{prefix}-{}", uuid::Uuid::new_v4()))
}

/// Removes a path in the background of an error path; failures are only logged.
pub(crate) async fn remove_quietly(path: &Path) {
    let result = if path.is_dir() {
        tokio::fs::remove_dir_all(path).await
    } else {
        tokio::fs::remove_file(path).await
    };
    if let Err(e) = result
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove temp path");
    }
}

/// Moves the fully built repository at `tmp` to `repo.path`: creates parents, makes
/// an empty directory at the final path (AlreadyExists when taken) and renames onto it.
/// With `adopt_empty_dir`, an empty directory already at the final path (left by an
/// interrupted operation) is replaced instead of refused.
pub(crate) async fn move_into_place(
    tmp: &Path,
    repo: &RepoPath,
    adopt_empty_dir: bool,
) -> Result<(), Status> {
    if let Some(parent) = repo.path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| io_status("create parent directories", e))?;
    }
    let created = match tokio::fs::create_dir(&repo.path).await {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && adopt_empty_dir => false,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Status::already_exists("repository already exists"));
        }
        Err(e) => return Err(io_status("create repository directory", e)),
    };
    // rename(2) replaces an empty directory atomically and fails on a non-empty one.
    if let Err(e) = tokio::fs::rename(tmp, &repo.path).await {
        if created {
            let _ = tokio::fs::remove_dir(&repo.path).await;
        }
        return Err(match e.raw_os_error() {
            Some(libc::ENOTEMPTY | libc::EEXIST | libc::ENOTDIR) => {
                Status::already_exists("repository path is taken")
            }
            _ => io_status("move repository into place", e),
        });
    }
    sync_dir(repo.path.parent()).await;
    Ok(())
}

/// fsyncs a directory so a rename inside it survives a crash; best effort.
pub(crate) async fn sync_dir(dir: Option<&Path>) {
    let Some(dir) = dir.map(Path::to_path_buf) else {
        return;
    };
    let _ =
        tokio::task::spawn_blocking(move || std::fs::File::open(&dir).and_then(|f| f.sync_all()))
            .await;
}

/// Runs `git init --bare` at `dir` (which must not exist yet).
pub(crate) async fn init_bare(
    node: &Node,
    dir: &Path,
    branch: &str,
    format: &str,
) -> Result<(), Status> {
    node.git
        .command(None)
        .args(["init", "--bare", "--quiet"])
        .args([
            format!("--initial-branch={branch}"),
            format!("--object-format={format}"),
        ])
        .args([dir])
        .run()
        .await?;
    Ok(())
}
