//! The transparent proxy, driven only by the operation registry.
//!
//! Every method is served as a bidi stream of raw bytes. The first request message
//! is decoded dynamically (prost-reflect) to find the repository, the repository is
//! rewritten from `(virtual storage, relative path)` to `(storage, replica path)`,
//! and the re-encoded first message followed by the rest of the client's stream goes
//! to the storage the operation calls for:
//!
//! * ACCESSOR → a random healthy, up-to-date replica (the primary for
//!   `RepositorySize` or when the caller asks `primary-only`); one transparent retry
//!   on another replica when the first is unreachable before answering anything;
//! * MUTATOR → the primary, which must be healthy and up to date; when it answers OK
//!   the generation rule runs (see `db::finalize_write`) before the client sees OK;
//! * MAINTENANCE → every healthy assigned replica.
//!
//! Repository lifecycle RPCs (create, remove, rename, exists) and `ListRepositories`
//! are answered from, or recorded in, the metadata (see `intercepted`).

mod fast;
mod forward;
mod intercepted;
mod message;
mod service;

use std::sync::Arc;

use bytes::Bytes;
use deadpool_postgres::Pool;
use futures::future::{BoxFuture, join_all};
use gitcluster_proto::auth::TokenAuth;
use gitcluster_proto::registry;
use gitcluster_proto::registry::{MethodInfo, Operation, Scope};
use gitcluster_proto::relative_path::check_client_path;
use prost_reflect::DynamicMessage;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, warn};

pub use crate::lane::Lane;
pub use crate::metrics::{
    READ_DISTRIBUTION_METRIC, REQUESTS_METRIC, UNCHANGED_WRITES_METRIC, count_request,
};
pub use forward::{Counted, ReplyStream};
use message::{repository_at, string_at};
pub use service::Proxy;

use self::intercepted::Lifecycle;
use crate::db::{self, JobContext};
use crate::health::HealthObserver;
use crate::metadata::{MetadataCache, RepositoryMetadata};
use crate::outbox::Outbox;
use crate::topology::{Topology, TopologyHandle, VirtualStorage};

/// Metadata key with which a caller forces reads to the primary.
pub const ACCESSOR_POLICY_HEADER: &str = "gitcluster-route-repository-accessor-policy";

const REPOSITORY_SERVICE: &str = "/gitcluster.v1.RepositoryService/";
const INTERNAL_SERVICE: &str = "/gitcluster.v1.InternalService/";

fn repository_method(name: &str) -> String {
    format!("{REPOSITORY_SERVICE}{name}")
}

/// Everything a routing decision needs, shared by every request.
pub struct Coordinator {
    /// Storages by virtual storage.
    pub topology: Arc<TopologyHandle>,
    /// Repository metadata.
    pub cache: Arc<MetadataCache>,
    /// Local health view.
    pub health: Arc<HealthObserver>,
    /// Job publishing.
    pub outbox: Arc<Outbox>,
    /// Database pool.
    pub pool: Pool,
    /// External token check.
    pub auth: TokenAuth,
}

/// One call after its first message was read.
struct Call {
    path: String,
    info: &'static MethodInfo,
    metadata: MetadataMap,
    first: Bytes,
    message: DynamicMessage,
    /// The client's remaining request stream (client-streaming calls only).
    inbound: Option<Streaming<Bytes>>,
}

impl Call {
    fn traceparent(&self) -> Option<String> {
        self.metadata
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The first message with the target repository pointed at `replica_path` on
    /// `storage`, and the additional repository (if any) at its own replica path.
    fn rewritten(
        &self,
        storage: &str,
        replica_path: &str,
        additional: Option<&str>,
    ) -> Result<Bytes, Status> {
        message::rewrite(&self.message, self.info, storage, replica_path, additional)
    }
}

impl Coordinator {
    /// Handles one call; the reply stream counts itself in the request metric.
    pub async fn handle(
        self: Arc<Self>,
        path: String,
        request: Request<Streaming<Bytes>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let label = if registry().get(&path).is_some() {
            path.clone()
        } else {
            "unknown".to_owned()
        };
        match self.dispatch(path, request).await {
            Ok(response) => Ok(response.map(|s| Box::pin(Counted::new(s, label)) as ReplyStream)),
            Err(status) => {
                count_request(&label, status.code());
                Err(status)
            }
        }
    }

    async fn dispatch(
        self: &Arc<Self>,
        path: String,
        request: Request<Streaming<Bytes>>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.auth.check(request.metadata())?;
        let info = registry()
            .get(&path)
            .ok_or_else(|| Status::unimplemented(format!("unknown method {path}")))?;
        if path.starts_with(INTERNAL_SERVICE) || path == repository_method("ReplicateRepository") {
            return Err(Status::permission_denied(
                "internal RPC: not served by the router",
            ));
        }
        let (metadata, _, mut inbound) = request.into_parts();
        let first = inbound
            .message()
            .await
            .map_err(client_stream_error)?
            .ok_or_else(|| Status::invalid_argument("empty request stream"))?;
        let message = DynamicMessage::decode(info.input.clone(), first.clone())
            .map_err(|e| Status::invalid_argument(format!("decode request: {e}")))?;
        let call = Call {
            path,
            info,
            metadata,
            first,
            message,
            inbound: info.client_streaming.then_some(inbound),
        };
        let topology = self.topology.get();
        if info.scope == Scope::Storage {
            return if call.path == repository_method("ListRepositories") {
                let name = info
                    .storage
                    .as_ref()
                    .and_then(|p| string_at(&call.message, p))
                    .unwrap_or_default();
                let vs = virtual_storage(&topology, &name)?;
                intercepted::list_repositories(self, vs).await
            } else {
                Err(Status::unimplemented(format!(
                    "storage-scoped RPC {} is not supported by the router",
                    call.path
                )))
            };
        }
        let (vs_name, relative_path) = info
            .target_repository
            .as_ref()
            .and_then(|p| repository_at(&call.message, p))
            .ok_or_else(|| Status::invalid_argument("missing repository"))?;
        let vs = virtual_storage(&topology, &vs_name)?;
        // One set of rules for every call, before any lookup, reservation or node
        // call: a path the nodes would refuse (or that looks like a replica path)
        // never reaches the metadata.
        check_path(&relative_path)?;
        match Lifecycle::of(&call.path) {
            Some(Lifecycle::Create) => {
                return intercepted::create(self, call, vs, &relative_path).await;
            }
            Some(Lifecycle::Remove) => {
                return intercepted::remove(self, &call, vs, &relative_path).await;
            }
            Some(Lifecycle::Rename) => {
                return intercepted::rename(self, &call, vs, &relative_path).await;
            }
            Some(Lifecycle::Exists) => return intercepted::exists(self, vs, &relative_path).await,
            None => {}
        }
        let Some(meta) = self.cache.get(&vs.name, &relative_path).await? else {
            if info.operation == Operation::Accessor && advertises_empty_if_missing(&call.message) {
                return self.advertise_missing(call, vs).await;
            }
            return Err(Status::not_found("repository not found"));
        };
        let additional = self.additional_replica_path(&call, vs).await?;
        match info.operation {
            Operation::Accessor => self.accessor(call, vs, &meta, additional).await,
            Operation::Mutator => self.mutator(call, vs, &meta, additional).await,
            Operation::Maintenance => self.maintenance(call, vs, &meta, additional).await,
        }
    }

    /// The replica path of the call's additional repository, which must live on the
    /// same virtual storage as the target.
    async fn additional_replica_path(
        &self,
        call: &Call,
        vs: &VirtualStorage,
    ) -> Result<Option<String>, Status> {
        let Some((other_vs, other_path)) = call
            .info
            .additional_repository
            .as_ref()
            .and_then(|p| repository_at(&call.message, p))
        else {
            return Ok(None);
        };
        if other_vs != vs.name {
            return Err(Status::invalid_argument(format!(
                "additional repository is on virtual storage \"{other_vs}\", not \"{}\"",
                vs.name
            )));
        }
        let meta = self
            .cache
            .get(&other_vs, &other_path)
            .await?
            .ok_or_else(|| Status::not_found("additional repository not found"))?;
        Ok(Some(meta.replica_path.clone()))
    }

    async fn accessor(
        self: &Arc<Self>,
        mut call: Call,
        vs: &VirtualStorage,
        meta: &RepositoryMetadata,
        additional: Option<String>,
    ) -> Result<Response<ReplyStream>, Status> {
        let mut candidates = self.read_candidates(&call.path, call.metadata.as_ref(), vs, meta)?;
        candidates.shuffle(&mut rand::rng());
        // A read is replayed on another replica only while the failed one has answered
        // nothing and has not taken the client's remaining messages (a refused
        // connection): then the router still holds everything the client sent.
        let rest = forward::park(call.inbound.take());
        let mut last = Status::unavailable("no healthy up-to-date replica");
        for storage_name in candidates.iter().take(2) {
            let storage = &vs.storages[storage_name];
            storage.reads.increment(1);
            let body = call.rewritten(storage_name, &meta.replica_path, additional.as_deref())?;
            let abort = CancellationToken::new();
            let request = forward::outbound(body, rest.clone(), abort.clone());
            match forward::start(storage, &call.path, call.metadata.clone(), request).await {
                Ok(response) if rest.is_none() => return Ok(forward::pass_through(response)),
                Ok(response) => return Ok(forward::relay(response, abort, None)),
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && forward::still_parked(&rest) =>
                {
                    warn!(storage = %storage_name, method = %call.path, error = %status.message(),
                        "replica unavailable for a read");
                    last = status;
                }
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }

    /// The storages a read of `meta` may go to: the primary alone for `RepositorySize`
    /// or when the caller asks `primary-only`, otherwise every healthy, up-to-date
    /// replica. Unavailable when there is none.
    fn read_candidates(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        vs: &VirtualStorage,
        meta: &RepositoryMetadata,
    ) -> Result<Vec<String>, Status> {
        let primary_only = path == repository_method("RepositorySize")
            || headers
                .get(ACCESSOR_POLICY_HEADER)
                .and_then(|v| v.to_str().ok())
                == Some("primary-only");
        let candidates: Vec<String> = if primary_only {
            vec![self.healthy_primary(vs, meta)?.to_owned()]
        } else {
            meta.replicas
                .keys()
                .filter(|s| {
                    meta.is_up_to_date(s)
                        && vs.storages.contains_key(*s)
                        && self.health.is_healthy(&vs.name, s)
                })
                .cloned()
                .collect()
        };
        if candidates.is_empty() {
            return Err(Status::unavailable("no healthy up-to-date replica"));
        }
        Ok(candidates)
    }

    /// A read of a repository that does not exist yet, by a caller that asked for an
    /// empty answer instead of NotFound (push-to-create's reference advertisement):
    /// served by any healthy storage at a path that cannot exist, so the storage
    /// node's own "empty repository" answer reaches the caller.
    async fn advertise_missing(
        self: &Arc<Self>,
        mut call: Call,
        vs: &VirtualStorage,
    ) -> Result<Response<ReplyStream>, Status> {
        let healthy: Vec<&String> = vs
            .storages
            .keys()
            .filter(|s| self.health.is_healthy(&vs.name, s))
            .collect();
        let storage_name = healthy
            .choose(&mut rand::rng())
            .map(|s| (*s).clone())
            .ok_or_else(|| Status::unavailable("no healthy storage"))?;
        // Replica paths are `@cluster/<kind>/...` with kinds `repositories` and
        // `pools`: nothing is ever created under `absent`.
        let absent = format!("@cluster/absent/{}", uuid::Uuid::new_v4().simple());
        let body = call.rewritten(&storage_name, &absent, None)?;
        let abort = CancellationToken::new();
        let request = forward::outbound(body, forward::park(call.inbound.take()), abort.clone());
        let storage = &vs.storages[&storage_name];
        let response = forward::start(storage, &call.path, call.metadata.clone(), request).await?;
        Ok(forward::relay(response, abort, None))
    }

    /// The primary, when it is locally healthy.
    fn healthy_primary<'m>(
        &self,
        vs: &VirtualStorage,
        meta: &'m RepositoryMetadata,
    ) -> Result<&'m str, Status> {
        let primary = meta
            .primary
            .as_deref()
            .ok_or_else(|| Status::unavailable("repository has no primary"))?;
        if !vs.storages.contains_key(primary) || !self.health.is_healthy(&vs.name, primary) {
            return Err(Status::unavailable(format!(
                "primary storage {primary} is not healthy"
            )));
        }
        Ok(primary)
    }

    async fn mutator(
        self: &Arc<Self>,
        mut call: Call,
        vs: &VirtualStorage,
        meta: &RepositoryMetadata,
        additional: Option<String>,
    ) -> Result<Response<ReplyStream>, Status> {
        let primary = self.healthy_primary(vs, meta)?.to_owned();
        if !meta.is_up_to_date(&primary) {
            return Err(Status::failed_precondition(
                "repository is in read-only mode",
            ));
        }
        let storage = &vs.storages[&primary];
        let body = call.rewritten(&primary, &meta.replica_path, additional.as_deref())?;
        let abort = CancellationToken::new();
        let request = forward::outbound(body, forward::park(call.inbound.take()), abort.clone());
        let response = forward::start(storage, &call.path, call.metadata.clone(), request).await?;
        let ctx = JobContext {
            repository_id: meta.repository_id,
            virtual_storage: vs.name.clone(),
            relative_path: meta.relative_path.clone(),
            replica_path: meta.replica_path.clone(),
            traceparent: call.traceparent(),
        };
        let finalizer = self.finalizer(ctx, primary, call.path.clone());
        Ok(forward::relay(response, abort, Some(finalizer)))
    }

    /// The generation rule after a write the primary applied (see `db::finalize_write`),
    /// then publishing of its jobs in the background.
    fn finalizer(
        self: &Arc<Self>,
        ctx: JobContext,
        primary: String,
        method: String,
    ) -> forward::Finalizer {
        let this = self.clone();
        Box::new(
            move |changed: bool| -> BoxFuture<'static, Result<(), Status>> {
                Box::pin(async move {
                    if !changed {
                        // The node saw no ref and no HEAD change (a probe POST, an
                        // all-rejected push, an update to the current value): bumping
                        // would outdate every secondary for nothing (Praefect's #2977).
                        metrics::counter!(UNCHANGED_WRITES_METRIC, "method" => method).increment(1);
                        return Ok(());
                    }
                    let recorded = db::finalize_write(&this.pool, &ctx, &primary).await;
                    // Whatever happened, the cached generations are stale now.
                    this.cache.invalidate(ctx.repository_id);
                    match recorded {
                        Ok(jobs) => {
                            this.outbox.publish_later(jobs, ctx.traceparent.clone());
                            Ok(())
                        }
                        Err(e) => {
                            error!(repository_id = ctx.repository_id, %primary, %method,
                            error = %format!("{e:#}"),
                            "write applied on the primary but not recorded; replicas will not follow until repaired");
                            Err(Status::internal(
                                "write applied on the primary but not recorded",
                            ))
                        }
                    }
                })
            },
        )
    }

    async fn maintenance(
        self: &Arc<Self>,
        call: Call,
        vs: &VirtualStorage,
        meta: &RepositoryMetadata,
        additional: Option<String>,
    ) -> Result<Response<ReplyStream>, Status> {
        let mut targets: Vec<&String> = meta
            .replicas
            .keys()
            .filter(|s| {
                meta.is_assigned(s)
                    && vs.storages.contains_key(*s)
                    && self.health.is_healthy(&vs.name, s)
            })
            .collect();
        targets.sort();
        if targets.is_empty() {
            return Err(Status::unavailable("no healthy replica"));
        }
        let calls = targets.iter().map(|name| {
            let body = call.rewritten(name, &meta.replica_path, additional.as_deref());
            let storage = vs.storages[*name].clone();
            let metadata = call.metadata.clone();
            let path = call.path.clone();
            async move { forward::call_collect(&storage, &path, metadata, body?).await }
        });
        // Every replica finishes; the first error in route order wins.
        let mut results = join_all(calls).await.into_iter();
        let first = results.next().expect("at least one target");
        let mut error = first.as_ref().err().cloned();
        for (name, result) in targets.iter().skip(1).zip(results) {
            if let Err(status) = result {
                warn!(storage = %name, method = %call.path, error = %status.message(), "maintenance failed on a replica");
                error.get_or_insert(status);
            }
        }
        match error {
            Some(status) => Err(status),
            None => Ok(forward::local(first.unwrap_or_default())),
        }
    }
}

/// True when the request carries `advertise_empty_if_missing = true` (see
/// `InfoRefsRequest`): the one request field besides the annotated ones the router
/// reads, because it changes what "repository not found" means.
fn advertises_empty_if_missing(message: &DynamicMessage) -> bool {
    message
        .get_field_by_name("advertise_empty_if_missing")
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// The status for a client's request stream that failed to decode. tonic calls a
/// message over the size limit OutOfRange when uncompressed (ResourceExhausted when
/// only its inflated size is over): both are ResourceExhausted here, the code gRPC
/// gives a message larger than the server accepts.
fn client_stream_error(status: Status) -> Status {
    match status.code() {
        tonic::Code::OutOfRange => Status::resource_exhausted(status.message().to_owned()),
        _ => status,
    }
}

/// InvalidArgument with the rule `relative_path` breaks, if any (see
/// `gitcluster_proto::relative_path`).
pub(super) fn check_path(relative_path: &str) -> Result<(), Status> {
    check_client_path(relative_path).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The virtual storage called `name`, or InvalidArgument.
fn virtual_storage<'t>(topology: &'t Topology, name: &str) -> Result<&'t VirtualStorage, Status> {
    topology.get(name).ok_or_else(|| {
        Status::invalid_argument(format!("virtual storage \"{name}\" is not configured"))
    })
}
