//! RPCs the router answers from, or records in, the metadata instead of proxying:
//! repository creation, removal, rename, existence, and listing.
//!
//! Their atomicity comes from metadata transactions (docs/architecture.md, invariant 4): create = reserve
//! an id → create the replicas at the id's unique path → insert the record (a
//! concurrent loser gets AlreadyExists and removes what it created); delete = delete
//! the record (the repository is gone) → best-effort removal of the replicas; rename
//! = update the record only (the replica path does not depend on the name).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use gitcluster_proto::v1::list_repositories_response::Entry;
use gitcluster_proto::v1::repository_service_client::RepositoryServiceClient;
use gitcluster_proto::v1::{
    CreateRepositoryResponse, ListRepositoriesResponse, RemoveRepositoryRequest,
    RemoveRepositoryResponse, RenameRepositoryRequest, RenameRepositoryResponse, Repository,
    RepositoryExistsResponse,
};
use prost::Message as _;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use tonic::{Response, Status};
use tracing::{debug, info, warn};

use super::{Call, Coordinator, ReplyStream, forward};
use crate::db::{self, JobContext, NewRepository};
use crate::replica_path::ReplicaPath;
use crate::topology::VirtualStorage;

/// Timeout of each best-effort replica removal.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Relative paths per `ListRepositories` response message.
const LIST_CHUNK: usize = 500;

/// A repository-scoped RPC the router answers itself (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lifecycle {
    Create,
    Remove,
    Rename,
    Exists,
}

impl Lifecycle {
    /// The lifecycle RPC at the gRPC `path`, if it is one. Both the general path
    /// (which answers these) and the read fast path (which must leave them alone)
    /// ask here, so the two cannot disagree on which calls are intercepted.
    pub(super) fn of(path: &str) -> Option<Lifecycle> {
        match path.strip_prefix(super::REPOSITORY_SERVICE)? {
            "CreateRepository" => Some(Lifecycle::Create),
            "RemoveRepository" => Some(Lifecycle::Remove),
            "RenameRepository" => Some(Lifecycle::Rename),
            "RepositoryExists" => Some(Lifecycle::Exists),
            _ => None,
        }
    }
}

fn reply(message: impl prost::Message) -> Response<ReplyStream> {
    forward::local(vec![Bytes::from(message.encode_to_vec())])
}

pub(super) async fn exists(
    coordinator: &Coordinator,
    vs: &VirtualStorage,
    relative_path: &str,
) -> Result<Response<ReplyStream>, Status> {
    let exists = coordinator
        .cache
        .get(&vs.name, relative_path)
        .await?
        .is_some();
    Ok(reply(RepositoryExistsResponse { exists }))
}

pub(super) async fn list_repositories(
    coordinator: &Coordinator,
    vs: &VirtualStorage,
) -> Result<Response<ReplyStream>, Status> {
    let paths = db::list_repositories(&coordinator.pool, &vs.name).await?;
    let messages = paths
        .chunks(LIST_CHUNK)
        .map(|chunk| {
            let response = ListRepositoriesResponse {
                repositories: chunk
                    .iter()
                    .map(|p| Entry {
                        relative_path: p.clone(),
                        modified_at: None,
                    })
                    .collect(),
            };
            Bytes::from(response.encode_to_vec())
        })
        .collect();
    Ok(forward::local(messages))
}

pub(super) async fn rename(
    coordinator: &Coordinator,
    call: &Call,
    vs: &VirtualStorage,
    relative_path: &str,
) -> Result<Response<ReplyStream>, Status> {
    let request = RenameRepositoryRequest::decode(call.first.clone())
        .map_err(|e| Status::invalid_argument(format!("decode request: {e}")))?;
    super::check_path(&request.relative_path)
        .map_err(|s| Status::invalid_argument(format!("new path: {}", s.message())))?;
    let id = db::rename_repository(
        &coordinator.pool,
        &vs.name,
        relative_path,
        &request.relative_path,
    )
    .await?
    .ok_or_else(|| Status::not_found("repository not found"))?;
    coordinator.cache.invalidate(id);
    info!(repository_id = id, virtual_storage = %vs.name, from = relative_path,
        to = %request.relative_path, "repository renamed");
    Ok(reply(RenameRepositoryResponse {}))
}

pub(super) async fn remove(
    coordinator: &Coordinator,
    call: &Call,
    vs: &VirtualStorage,
    relative_path: &str,
) -> Result<Response<ReplyStream>, Status> {
    let request = RemoveRepositoryRequest::decode(call.first.clone())
        .map_err(|e| Status::invalid_argument(format!("decode request: {e}")))?;
    if request.only_if_empty {
        return remove_if_as_created(coordinator, vs, relative_path).await;
    }
    let deleted = db::delete_repository(&coordinator.pool, &vs.name, relative_path)
        .await?
        .ok_or_else(|| Status::not_found("repository not found"))?;
    coordinator.cache.invalidate(deleted.repository_id);
    info!(repository_id = deleted.repository_id, virtual_storage = %vs.name, relative_path,
        "repository removed from metadata");
    remove_replicas(vs, &deleted.replica_path, &deleted.storages).await;
    Ok(reply(RemoveRepositoryResponse {}))
}

/// The conditional removal push-to-create uses to undo a repository it created (see
/// `db::remove_if_as_created`): removed only while no write was recorded and the
/// primary holds no ref and no write in flight; otherwise FailedPrecondition and
/// nothing changes. Never because one request did not finish: a push another client
/// made meanwhile, recorded or still on its way, keeps the repository.
async fn remove_if_as_created(
    coordinator: &Coordinator,
    vs: &VirtualStorage,
    relative_path: &str,
) -> Result<Response<ReplyStream>, Status> {
    let removed = db::remove_if_as_created(
        &coordinator.pool,
        &vs.name,
        relative_path,
        |replica_path, primary| async move {
            let Some(primary) = primary else {
                return Ok(());
            };
            let Some(storage) = vs.storages.get(&primary) else {
                return Err(Status::unavailable(format!(
                    "primary storage {primary} is not configured"
                )));
            };
            let mut client = RepositoryServiceClient::new(storage.channel.clone());
            let request = RemoveRepositoryRequest {
                repository: Some(Repository {
                    storage_name: primary.clone(),
                    relative_path: replica_path,
                }),
                only_if_empty: true,
            };
            match tokio::time::timeout(REMOVE_TIMEOUT, client.remove_repository(request)).await {
                Ok(Ok(_)) => Ok(()),
                // Nothing on the primary (never created there, or removed already).
                Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok(()),
                Ok(Err(s)) => Err(s),
                Err(_) => Err(Status::unavailable(format!(
                    "primary storage {primary} did not answer the conditional removal"
                ))),
            }
        },
    )
    .await?
    .ok_or_else(|| Status::not_found("repository not found"))?;
    coordinator.cache.invalidate(removed.repository_id);
    info!(repository_id = removed.repository_id, virtual_storage = %vs.name, relative_path,
        "repository removed while still as created");
    remove_replicas(vs, &removed.replica_path, &removed.storages).await;
    Ok(reply(RemoveRepositoryResponse {}))
}

/// Removes `replica_path` from `storages`, in parallel, best effort: failures are
/// logged (the leftover crawler owns what stays behind).
async fn remove_replicas(vs: &VirtualStorage, replica_path: &str, storages: &[String]) {
    let removals = storages.iter().map(|name| async move {
        let Some(storage) = vs.storages.get(name) else {
            warn!(storage = %name, replica_path, "storage of a removed replica is not configured; replica left behind");
            return;
        };
        let mut client = RepositoryServiceClient::new(storage.channel.clone());
        let request = RemoveRepositoryRequest {
            repository: Some(Repository {
                storage_name: name.clone(),
                relative_path: replica_path.to_owned(),
            }),
            only_if_empty: false,
        };
        match tokio::time::timeout(REMOVE_TIMEOUT, client.remove_repository(request)).await {
            Ok(Ok(_)) => debug!(storage = %name, replica_path, "replica removed"),
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                debug!(storage = %name, replica_path, "replica already absent")
            }
            Ok(Err(s)) => {
                warn!(storage = %name, replica_path, error = %s.message(), "remove replica failed; left behind")
            }
            Err(_) => warn!(storage = %name, replica_path, "remove replica timed out; left behind"),
        }
    });
    join_all(removals).await;
}

pub(super) async fn create(
    coordinator: &Arc<Coordinator>,
    call: Call,
    vs: &VirtualStorage,
    relative_path: &str,
) -> Result<Response<ReplyStream>, Status> {
    let id = db::reserve_repository_id(&coordinator.pool, &vs.name, relative_path).await?;
    let replica_path = ReplicaPath::derive(id, relative_path);
    let (assigned, healthy, primary) = {
        let mut rng = rand::rng();
        let all: Vec<String> = vs.storages.keys().cloned().collect();
        let mut assigned: Vec<String> = match vs.replication_factor {
            Some(rf) => all
                .choose_multiple(&mut rng, usize::try_from(rf).unwrap_or(1))
                .cloned()
                .collect(),
            None => all,
        };
        assigned.sort();
        let mut healthy: Vec<String> = assigned
            .iter()
            .filter(|s| coordinator.health.is_healthy(&vs.name, s))
            .cloned()
            .collect();
        let primary = healthy.choose(&mut rng).cloned();
        healthy.shuffle(&mut rng);
        (assigned, healthy, primary)
    };
    let Some(primary) = primary else {
        return Err(Status::unavailable(
            "no healthy storage to create the repository on",
        ));
    };
    // The primary and every other healthy assigned storage, concurrently.
    let creations = healthy.iter().map(|name| {
        let body = call.rewritten(name, replica_path.as_str(), None);
        let storage = vs.storages[name].clone();
        let metadata = call.metadata.clone();
        let path = call.path.clone();
        async move { forward::call_collect(&storage, &path, metadata, body?).await }
    });
    let results = join_all(creations).await;
    let mut created = Vec::new();
    let mut primary_result = None;
    for (name, result) in healthy.iter().zip(results) {
        match result {
            Ok(messages) => {
                created.push(name.clone());
                if *name == primary {
                    primary_result = Some(Ok(messages));
                }
            }
            Err(status) => {
                if *name == primary {
                    primary_result = Some(Err(status));
                } else {
                    warn!(storage = %name, replica_path = %replica_path, error = %status.message(),
                        "create replica failed; it will be replicated");
                }
            }
        }
    }
    let primary_messages = match primary_result {
        Some(Ok(messages)) => messages,
        Some(Err(status)) => {
            remove_replicas(vs, replica_path.as_str(), &created).await;
            return Err(status);
        }
        None => return Err(Status::internal("primary was not called")),
    };
    created.sort();
    let traceparent = call.traceparent();
    let repo = NewRepository {
        ctx: JobContext {
            repository_id: id,
            virtual_storage: vs.name.clone(),
            relative_path: relative_path.to_owned(),
            replica_path: replica_path.to_string(),
            traceparent: traceparent.clone(),
        },
        primary: primary.clone(),
        assigned,
        created,
    };
    match db::insert_repository(&coordinator.pool, &repo).await {
        Ok(jobs) => {
            coordinator.cache.invalidate(id);
            info!(repository_id = id, virtual_storage = %vs.name, relative_path,
                replica_path = %replica_path, %primary, replicas = repo.created.len(), "repository created");
            coordinator.outbox.publish_later(jobs, traceparent);
            let messages = if primary_messages.is_empty() {
                vec![Bytes::from(CreateRepositoryResponse {}.encode_to_vec())]
            } else {
                primary_messages
            };
            Ok(forward::local(messages))
        }
        Err(status) => {
            // The replicas sit at this id's unique path: removing them cannot touch
            // the winner's data.
            remove_replicas(vs, replica_path.as_str(), &repo.created).await;
            Err(status)
        }
    }
}
