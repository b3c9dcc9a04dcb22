//! RepositoryService: the lifecycle of bare repositories.
//!
//! Creation is atomic: the repository is initialised in the storage's temp dir, an
//! empty directory is created at the final path (`mkdir` fails when it is taken),
//! and the temp repository is renamed onto it (`rename` replaces an empty directory
//! atomically). Removal renames the repository into the temp dir before deleting it,
//! so readers never see half a repository.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gitcluster_proto::v1::repository_service_server::RepositoryService;
use gitcluster_proto::v1::{
    CalculateChecksumRequest, CalculateChecksumResponse, CreateRepositoryRequest,
    CreateRepositoryResponse, ListRepositoriesRequest, ListRepositoriesResponse, ObjectFormat,
    OptimizeRepositoryRequest, OptimizeRepositoryResponse, RemoveRepositoryRequest,
    RemoveRepositoryResponse, RenameRepositoryRequest, RenameRepositoryResponse,
    ReplicateRepositoryRequest, ReplicateRepositoryResponse, Repository, RepositoryExistsRequest,
    RepositoryExistsResponse, RepositorySizeRequest, RepositorySizeResponse,
    list_repositories_response,
};
use tonic::{Request, Response, Status};

use crate::Node;
use crate::checksum::checksum_of_show_ref;
use crate::fsops::{init_bare, io_status, move_into_place, remove_quietly, sync_dir, temp_path};
use crate::paths::{INTERNAL_DIR, is_git_repo};
use crate::refstate::RefState;
use crate::stream::{ResponseStream, channel};

/// How long a conditional removal waits for writes in flight to end before it
/// refuses: long enough for a push that is about to finish, short enough that
/// push-to-create's undo does not hang on a client that keeps its push open.
pub const REMOVE_WAIT_FOR_WRITES: Duration = Duration::from_secs(2);

/// Number of repositories per ListRepositories message.
const LIST_BATCH: usize = 100;

/// RepositoryService handlers.
#[derive(Debug, Clone)]
pub struct Repositories {
    node: Arc<Node>,
}

impl Repositories {
    /// Handlers over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Repositories { node }
    }
}

/// Validates a branch name given as `main` or `refs/heads/main`; returns the short name.
async fn default_branch(node: &Node, requested: &str) -> Result<String, Status> {
    let short = requested.strip_prefix("refs/heads/").unwrap_or(requested);
    let short = if short.is_empty() { "main" } else { short };
    let out = node
        .git
        .command(None)
        .args(["check-ref-format"])
        .args([format!("refs/heads/{short}")])
        .output(&[])
        .await?;
    if !out.status.success() || short.starts_with('-') {
        return Err(Status::invalid_argument(format!(
            "invalid default branch {requested:?}"
        )));
    }
    Ok(short.to_owned())
}

/// Sum of the sizes of every file under `dir` (symlinks not followed).
fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// Every repository under `root` (not descending into repositories, skipping the
/// internal directory), with its directory mtime.
fn walk_repositories(root: &Path) -> std::io::Result<Vec<(String, SystemTime)>> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // A repository removed while we walk is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d != root => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if d == root && entry.file_name() == INTERNAL_DIR {
                continue;
            }
            if !entry.file_type()?.is_dir() {
                continue;
            }
            if is_git_repo(&path) {
                let Ok(rel) = path.strip_prefix(root) else {
                    continue;
                };
                let Some(rel) = rel.to_str() else {
                    tracing::warn!(path = %path.display(), "skipping repository with a non-utf-8 path");
                    continue;
                };
                let mtime = entry
                    .metadata()?
                    .modified()
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((rel.to_owned(), mtime));
            } else {
                stack.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl RepositoryService for Repositories {
    async fn create_repository(
        &self,
        request: Request<CreateRepositoryRequest>,
    ) -> Result<Response<CreateRepositoryResponse>, Status> {
        let req = request.into_inner();
        let repo = self.node.storages.locate(req.repository.as_ref())?;
        if repo.path.exists() {
            return Err(Status::already_exists("repository already exists"));
        }
        let branch = default_branch(&self.node, &req.default_branch).await?;
        let format = match ObjectFormat::try_from(req.object_format) {
            Ok(ObjectFormat::Sha256) => "sha256",
            Ok(ObjectFormat::Sha1 | ObjectFormat::Unspecified) => "sha1",
            Err(_) => return Err(Status::invalid_argument("unknown object format")),
        };
        let tmp = temp_path(&repo, "create");
        let result = async {
            init_bare(&self.node, &tmp, &branch, format).await?;
            move_into_place(&tmp, &repo, false).await
        }
        .await;
        if result.is_err() {
            remove_quietly(&tmp).await;
        } else {
            tracing::info!(storage = %repo.storage, relative_path = %repo.relative, "repository created");
        }
        result.map(|()| Response::new(CreateRepositoryResponse {}))
    }

    async fn repository_exists(
        &self,
        request: Request<RepositoryExistsRequest>,
    ) -> Result<Response<RepositoryExistsResponse>, Status> {
        let repo = self
            .node
            .storages
            .locate(request.get_ref().repository.as_ref())?;
        Ok(Response::new(RepositoryExistsResponse {
            exists: repo.exists(),
        }))
    }

    async fn remove_repository(
        &self,
        request: Request<RemoveRepositoryRequest>,
    ) -> Result<Response<RemoveRepositoryResponse>, Status> {
        let req = request.into_inner();
        let repo = self.node.storages.locate(req.repository.as_ref())?;
        // A conditional removal holds the repository's write fence exclusively from
        // its check to the rename, so no write starts in between (see `crate::fence`).
        let _fenced = if req.only_if_empty {
            let fenced =
                tokio::time::timeout(REMOVE_WAIT_FOR_WRITES, self.node.writes.lock(&repo.path))
                    .await
                    .map_err(|_| {
                        Status::failed_precondition(format!(
                            "a write to the repository is still in flight after {} s",
                            REMOVE_WAIT_FOR_WRITES.as_secs()
                        ))
                    })?;
            repo.require_exists()?;
            let state = RefState::load(&repo.path).await.map_err(|s| {
                Status::failed_precondition(format!(
                    "cannot tell whether the repository is empty: {}",
                    s.message()
                ))
            })?;
            if let Some(why) = state.why_not_pristine() {
                return Err(Status::failed_precondition(why));
            }
            Some(fenced)
        } else {
            repo.require_exists()?;
            None
        };
        let tmp = temp_path(&repo, "removed");
        match tokio::fs::rename(&repo.path, &tmp).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Status::not_found("repository not found"));
            }
            Err(e) => return Err(io_status("move repository out of place", e)),
        }
        sync_dir(repo.path.parent()).await;
        if let Err(e) = tokio::fs::remove_dir_all(&tmp).await {
            // Out of sight already; start-up cleans the temp dir.
            tracing::warn!(path = %tmp.display(), error = %e, "cannot delete removed repository");
        }
        tracing::info!(storage = %repo.storage, relative_path = %repo.relative, "repository removed");
        Ok(Response::new(RemoveRepositoryResponse {}))
    }

    async fn rename_repository(
        &self,
        request: Request<RenameRepositoryRequest>,
    ) -> Result<Response<RenameRepositoryResponse>, Status> {
        let req = request.into_inner();
        let repo = self.node.storages.locate(req.repository.as_ref())?;
        let target = self.node.storages.locate(Some(&Repository {
            storage_name: repo.storage.clone(),
            relative_path: req.relative_path.clone(),
        }))?;
        repo.require_exists()?;
        // The same mkdir + rename as creation: the new path is claimed atomically and
        // the repository appears there whole, or the call fails with nothing moved.
        move_into_place(&repo.path, &target, false).await?;
        tracing::info!(storage = %repo.storage, from = %repo.relative, to = %target.relative, "repository renamed");
        Ok(Response::new(RenameRepositoryResponse {}))
    }

    async fn repository_size(
        &self,
        request: Request<RepositorySizeRequest>,
    ) -> Result<Response<RepositorySizeResponse>, Status> {
        let repo = self
            .node
            .storages
            .locate(request.get_ref().repository.as_ref())?;
        repo.require_exists()?;
        let path = repo.path.clone();
        let size = tokio::task::spawn_blocking(move || dir_size(&path))
            .await
            .map_err(|e| Status::internal(format!("size task: {e}")))?
            .map_err(|e| io_status("measure repository", e))?;
        Ok(Response::new(RepositorySizeResponse { size_bytes: size }))
    }

    async fn calculate_checksum(
        &self,
        request: Request<CalculateChecksumRequest>,
    ) -> Result<Response<CalculateChecksumResponse>, Status> {
        let repo = self
            .node
            .storages
            .locate(request.get_ref().repository.as_ref())?;
        repo.require_exists()?;
        let checksum = checksum(&self.node, &repo.path).await?;
        Ok(Response::new(CalculateChecksumResponse { checksum }))
    }

    async fn replicate_repository(
        &self,
        request: Request<ReplicateRepositoryRequest>,
    ) -> Result<Response<ReplicateRepositoryResponse>, Status> {
        crate::replicate::replicate(&self.node, request.into_inner()).await?;
        Ok(Response::new(ReplicateRepositoryResponse {}))
    }

    type ListRepositoriesStream = ResponseStream<ListRepositoriesResponse>;

    async fn list_repositories(
        &self,
        request: Request<ListRepositoriesRequest>,
    ) -> Result<Response<Self::ListRepositoriesStream>, Status> {
        let root = self
            .node
            .storages
            .root(&request.get_ref().storage_name)?
            .to_path_buf();
        let found = tokio::task::spawn_blocking(move || walk_repositories(&root))
            .await
            .map_err(|e| Status::internal(format!("walk task: {e}")))?
            .map_err(|e| io_status("walk storage", e))?;
        let (tx, stream) = channel();
        tokio::spawn(async move {
            for batch in found.chunks(LIST_BATCH) {
                let repositories = batch
                    .iter()
                    .map(|(rel, mtime)| list_repositories_response::Entry {
                        relative_path: rel.clone(),
                        modified_at: Some(timestamp(*mtime)),
                    })
                    .collect();
                if tx
                    .send(Ok(ListRepositoriesResponse { repositories }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn optimize_repository(
        &self,
        request: Request<OptimizeRepositoryRequest>,
    ) -> Result<Response<OptimizeRepositoryResponse>, Status> {
        let repo = self
            .node
            .storages
            .locate(request.get_ref().repository.as_ref())?;
        repo.require_exists()?;
        let git = &self.node.git;
        git.command(Some(&repo.path))
            .args(["pack-refs", "--all"])
            .run()
            .await?;
        // -A keeps unreachable objects (loosened), never deleting them.
        git.command(Some(&repo.path))
            .args(["repack", "-A", "-d", "-l", "-q"])
            .run()
            .await?;
        Ok(Response::new(OptimizeRepositoryResponse {}))
    }
}

/// The Gitaly-compatible checksum of the repository at `dir` (see [`crate::checksum`]).
pub async fn checksum(node: &Node, dir: &Path) -> Result<String, Status> {
    let out = node
        .git
        .command(Some(dir))
        .args(["show-ref", "--head"])
        .output(&[])
        .await?;
    // show-ref exits 1 when there is no reference at all.
    match out.status.code() {
        Some(0) => Ok(checksum_of_show_ref(&out.stdout)),
        Some(1) if out.stdout.is_empty() => Ok(checksum_of_show_ref(b"")),
        _ => Err(Status::internal(format!(
            "git show-ref failed: {}",
            crate::git::last_line(&out.stderr)
        ))),
    }
}
