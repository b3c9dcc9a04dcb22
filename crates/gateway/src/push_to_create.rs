//! Push-to-create: making the repository a push lands in, and undoing it (see the
//! module doc of `crate::smart_http`).

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::{StreamExt as _, stream};
use gitcluster_proto::v1::{
    CreateRepositoryRequest, RemoveRepositoryRequest, RepositoryExistsRequest,
};
use http::StatusCode;
use tracing::{debug, info, warn};

use crate::route::{RepoPath, display};
use crate::upstream::{self, RepositoryClient, plain};

/// What a push found before its call starts.
pub(crate) enum Ensured {
    /// Push into the repository; `Some` when this request created it. The body is
    /// whole again (its first bytes may have been read to look for commands).
    Ready(Option<Box<CreatedRepository>>, Body),
    /// The repository does not exist and the body has no commands (git's probe POST):
    /// git's own answer is empty, and nothing is created.
    NothingToDo,
}

/// Makes sure a push has a repository to land in (see the module doc).
pub(crate) async fn ensure_repository(
    mut client: RepositoryClient,
    push_to_create: bool,
    repo: &RepoPath,
    body: Body,
) -> Result<Ensured, Response> {
    let name = display(repo);
    let exists = client
        .repository_exists(RepositoryExistsRequest {
            repository: Some(repo.to_proto()),
        })
        .await
        .map_err(|s| upstream::error_response(&s, "RepositoryExists", &name))?
        .into_inner()
        .exists;
    if exists {
        return Ok(Ensured::Ready(None, body));
    }
    if !push_to_create {
        return Err(plain(StatusCode::NOT_FOUND, "repository not found"));
    }
    let (head, body) = peek(body, 4).await;
    if head.starts_with(b"0000") {
        debug!(repo = %name, "push without commands to a missing repository; nothing created");
        return Ok(Ensured::NothingToDo);
    }
    let request = CreateRepositoryRequest {
        repository: Some(repo.to_proto()),
        ..Default::default()
    };
    match client.create_repository(request).await {
        Ok(_) => {
            info!(repo = %name, "created repository for push");
            Ok(Ensured::Ready(
                Some(Box::new(CreatedRepository {
                    client,
                    repo: repo.clone(),
                })),
                body,
            ))
        }
        // A concurrent first push won the race: push into its repository, which is
        // not ours to remove.
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(Ensured::Ready(None, body)),
        Err(s) => Err(upstream::error_response(&s, "CreateRepository", &name)),
    }
}

/// Reads the body's first `n` bytes (fewer if it ends, or fails, sooner) and gives
/// them back with a body that yields everything again, a read error included.
async fn peek(body: Body, n: usize) -> (Vec<u8>, Body) {
    let mut data = body.into_data_stream();
    let mut seen: Vec<Result<Bytes, axum::Error>> = Vec::new();
    let mut head = Vec::new();
    while head.len() < n {
        match data.next().await {
            Some(Ok(bytes)) => {
                head.extend_from_slice(&bytes[..bytes.len().min(n - head.len())]);
                seen.push(Ok(bytes));
            }
            Some(Err(e)) => {
                seen.push(Err(e));
                break;
            }
            None => break,
        }
    }
    (head, Body::from_stream(stream::iter(seen).chain(data)))
}

/// A repository this request created for a push.
pub(crate) struct CreatedRepository {
    client: RepositoryClient,
    repo: RepoPath,
}

impl CreatedRepository {
    /// Asks the router to remove the repository while it is still exactly as
    /// created (best effort): the first push did not complete.
    pub(crate) async fn remove_if_as_created(mut self) {
        let name = display(&self.repo);
        let request = RemoveRepositoryRequest {
            repository: Some(self.repo.to_proto()),
            only_if_empty: true,
        };
        match self.client.remove_repository(request).await {
            Ok(_) => info!(repo = %name, "removed repository of an aborted first push"),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                info!(repo = %name, reason = s.message(),
                    "repository of an aborted first push kept: it is no longer as created")
            }
            Err(s) => warn!(repo = %name, code = ?s.code(), message = s.message(),
                "cannot remove repository of an aborted first push"),
        }
    }
}
