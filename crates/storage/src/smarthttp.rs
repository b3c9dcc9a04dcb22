//! SmartHTTPService: Git's smart HTTP protocol (stateless RPC) carried over gRPC.
//!
//! The storage node produces the complete HTTP response body, so the gateway only
//! copies bytes: for protocol v0/v1 the info/refs advertisement is prefixed with
//! the `# service=git-<service>` pkt-line and a flush packet, as `git http-backend`
//! does; protocol v2 has no such prefix.
//!
//! POST bodies are piped into `git upload-pack|receive-pack --stateless-rpc` while
//! its output streams back, concurrently and chunk by chunk, so no payload is ever
//! held in memory whole. If the inbound stream fails (client gone, stream reset)
//! git is killed instead of seeing end-of-input: receive-pack's quarantine then
//! guarantees that nothing from the partial push becomes visible.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gitcluster_proto::v1::smart_http_service_server::SmartHttpService;
use gitcluster_proto::v1::{
    InfoRefsRequest, InfoRefsResponse, PostReceivePackRequest, PostReceivePackResponse,
    PostUploadPackRequest, PostUploadPackResponse,
};
use gitcluster_proto::{REFS_CHANGED_TRAILER, STREAM_CHUNK_BYTES};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::Node;
use crate::fsops::{init_bare, remove_quietly, temp_path};
use crate::git::{GitChild, last_line};
use crate::refstate::{RefState, changed_value};
use crate::stream::{Coalesced, ResponseStream, channel};

/// SmartHTTPService handlers.
#[derive(Debug, Clone)]
pub struct SmartHttp {
    node: Arc<Node>,
}

impl SmartHttp {
    /// Handlers over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        SmartHttp { node }
    }
}

/// Encodes `payload` as one pkt-line (4 hex digits of total length, then payload).
pub fn pkt_line(payload: &str) -> Vec<u8> {
    format!("{:04x}{payload}", payload.len() + 4).into_bytes()
}

/// The prefix of an info/refs response for `service` (`upload-pack` or
/// `receive-pack`); empty for protocol v2.
pub fn advertisement_prefix(service: &str, git_protocol: &str) -> Vec<u8> {
    if git_protocol.contains("version=2") {
        return Vec::new();
    }
    let mut prefix = pkt_line(&format!("# service=git-{service}\n"));
    prefix.extend_from_slice(b"0000");
    prefix
}

impl SmartHttp {
    async fn info_refs(
        &self,
        req: InfoRefsRequest,
        service: &'static str,
    ) -> Result<ResponseStream<InfoRefsResponse>, Status> {
        let repo = self.node.storages.locate(req.repository.as_ref())?;
        let (dir, throwaway): (PathBuf, Option<PathBuf>) = if repo.exists() {
            (repo.path.clone(), None)
        } else if req.advertise_empty_if_missing {
            let tmp = temp_path(&repo, "advertise");
            if let Err(e) = init_bare(&self.node, &tmp, "main", "sha1").await {
                remove_quietly(&tmp).await;
                return Err(e);
            }
            (tmp.clone(), Some(tmp))
        } else {
            return Err(Status::not_found("repository not found"));
        };
        let spawned = self
            .node
            .git
            .command(None)
            .args([service, "--stateless-rpc", "--advertise-refs"])
            .args([&dir])
            .repository(&dir)
            .git_protocol(&req.git_protocol)
            .spawn()
            .await;
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if let Some(t) = &throwaway {
                    remove_quietly(t).await;
                }
                return Err(e);
            }
        };
        let prefix = advertisement_prefix(service, &req.git_protocol);
        let (tx, stream) = channel();
        tokio::spawn(async move {
            if !prefix.is_empty()
                && tx
                    .send(Ok(InfoRefsResponse { data: prefix }))
                    .await
                    .is_err()
            {
                if let Some(t) = &throwaway {
                    remove_quietly(t).await;
                }
                return;
            }
            let mut stdout = child.child.stdout.take().map(Coalesced::new);
            let mut buf = vec![0u8; STREAM_CHUNK_BYTES];
            let mut delivered = true;
            while let Some(out) = stdout.as_mut() {
                match out.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx
                            .send(Ok(InfoRefsResponse {
                                data: buf[..n].to_vec(),
                            }))
                            .await
                            .is_err()
                        {
                            delivered = false;
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("read advertisement: {e}"))))
                            .await;
                        delivered = false;
                        break;
                    }
                }
            }
            if delivered {
                if let Err(status) = child.wait_success().await {
                    let _ = tx.send(Err(status)).await;
                }
            } else {
                child.kill().await;
            }
            if let Some(t) = &throwaway {
                remove_quietly(t).await;
            }
        });
        Ok(stream)
    }
}

/// Pipes a request stream into a stateless-rpc git process and its stdout back
/// (see the module doc). `first` is the data of the already-read first message.
/// Returns true when git exited 0 after all its output was delivered; on every
/// other outcome the error has been sent on `tx` (or the client is gone), so the
/// caller only ends a successful call.
pub(crate) async fn pump_stateless<In, Out>(
    mut child: GitChild,
    first: Vec<u8>,
    mut inbound: Streaming<In>,
    data_of: fn(In) -> Vec<u8>,
    wrap: fn(Vec<u8>) -> Out,
    idle: Duration,
    tx: &mpsc::Sender<Result<Out, Status>>,
) -> bool
where
    In: Send + 'static,
    Out: Send + 'static,
{
    let name = child.name().to_owned();
    let command = name.clone();
    let (Some(mut stdin), Some(mut stdout)) = (
        child.child.stdin.take(),
        child.child.stdout.take().map(Coalesced::new),
    ) else {
        let _ = tx.send(Err(Status::internal("git pipes missing"))).await;
        return false;
    };
    let aborted = CancellationToken::new();
    let writer = tokio::spawn({
        let aborted = aborted.clone();
        async move {
            // A write error means git closed its stdin (it exited): stop feeding and let
            // its exit status speak.
            if !first.is_empty() && stdin.write_all(&first).await.is_err() {
                return Ok(());
            }
            loop {
                match next_message(&mut inbound, idle).await {
                    Ok(Some(msg)) => {
                        let data = data_of(msg);
                        if !data.is_empty() && stdin.write_all(&data).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(status) => {
                        aborted.cancel();
                        return Err(status);
                    }
                }
            }
        }
    });
    let inbound_failed = |writer: tokio::task::JoinHandle<Result<(), Status>>| async move {
        match writer.await {
            Ok(Err(s)) if s.code() == Code::DeadlineExceeded => {
                Status::deadline_exceeded(format!("{}, {name} killed", s.message()))
            }
            Ok(Err(s)) => Status::aborted(format!(
                "request stream failed, {name} killed: {}",
                s.message()
            )),
            _ => Status::aborted(format!(
                "request stream failed, {name} killed: request stream failed"
            )),
        }
    };

    let mut buf = vec![0u8; STREAM_CHUNK_BYTES];
    loop {
        let read = tokio::select! {
            biased;
            () = aborted.cancelled() => {
                child.kill().await;
                let _ = tx.send(Err(inbound_failed(writer).await)).await;
                return false;
            }
            r = stdout.read(&mut buf) => r,
        };
        let n = match read {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                child.kill().await;
                writer.abort();
                let _ = tx
                    .send(Err(Status::internal(format!("read git output: {e}"))))
                    .await;
                return false;
            }
        };
        let sent = tokio::select! {
            biased;
            () = aborted.cancelled() => {
                child.kill().await;
                let _ = tx.send(Err(inbound_failed(writer).await)).await;
                return false;
            }
            r = tx.send(Ok(wrap(buf[..n].to_vec()))) => r.is_ok(),
        };
        if !sent {
            // The client is gone: nothing it sent may take effect.
            child.kill().await;
            writer.abort();
            return false;
        }
    }
    let waited = tokio::select! {
        biased;
        () = aborted.cancelled() => None,
        r = child.wait() => Some(r),
    };
    let Some(waited) = waited else {
        // Dropping the wait future dropped the child, which kills it.
        let _ = tx.send(Err(inbound_failed(writer).await)).await;
        return false;
    };
    writer.abort();
    match waited {
        Ok((status, _)) if status.success() => return true,
        Ok((_, stderr)) => {
            let line = last_line(&stderr);
            tracing::warn!(%command, error = %line, "git failed");
            let _ = tx
                .send(Err(Status::internal(format!("{command} failed: {line}"))))
                .await;
        }
        Err(status) => {
            let _ = tx.send(Err(status)).await;
        }
    }
    false
}

/// The next request message, or DeadlineExceeded when none arrives within `idle`
/// while the stream is open (a client that stopped sending; see `crate::slots`).
async fn next_message<T>(inbound: &mut Streaming<T>, idle: Duration) -> Result<Option<T>, Status> {
    match tokio::time::timeout(idle, inbound.message()).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no request data for {} s",
            idle.as_secs_f64()
        ))),
    }
}

/// The status ending a successful streamed mutator: code OK with
/// [`REFS_CHANGED_TRAILER`] in the trailers. Sent as the stream's last item, tonic
/// turns it into `grpc-status: 0` plus that metadata, and clients see a normal end.
pub fn ok_with_refs_changed(changed: &'static str) -> Status {
    let mut md = MetadataMap::new();
    md.insert(REFS_CHANGED_TRAILER, MetadataValue::from_static(changed));
    Status::with_metadata(Code::Ok, "", md)
}

impl SmartHttp {
    async fn post<In, Out>(
        &self,
        mut inbound: Streaming<In>,
        service: &'static str,
        header_of: fn(&In) -> (Option<gitcluster_proto::v1::Repository>, String),
        data_of: fn(In) -> Vec<u8>,
        wrap: fn(Vec<u8>) -> Out,
    ) -> Result<ResponseStream<Out>, Status>
    where
        In: Send + 'static,
        Out: Send + 'static,
    {
        let idle = self.node.limits.stream_idle_timeout;
        let first = next_message(&mut inbound, idle)
            .await?
            .ok_or_else(|| Status::invalid_argument("empty request stream"))?;
        let (repository, git_protocol) = header_of(&first);
        let repo = self.node.storages.locate(repository.as_ref())?;
        // A push is a write from its first message to its end (see `crate::fence`);
        // held before the existence check so a conditional removal cannot slip in.
        let writing = match service {
            "receive-pack" => Some(self.node.writes.share(&repo.path).await),
            _ => None,
        };
        repo.require_exists()?;
        let (tx, stream) = channel();
        let node = self.node.clone();
        let path = repo.path.clone();
        // The call is answered (headers) now; git starts only once body bytes arrive,
        // so a client that sends none holds no process slot (issue 10, defect 6).
        tokio::spawn(async move {
            let mut data = data_of(first);
            while data.is_empty() {
                match next_message(&mut inbound, idle).await {
                    Ok(Some(m)) => data = data_of(m),
                    // An empty body: git sees end of input at once.
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
            // receive-pack reports whether it changed a reference (`crate::refstate`).
            let before = match service {
                "receive-pack" => Some(RefState::load(&path).await),
                _ => None,
            };
            let spawned = node
                .git
                .command(None)
                .args([service, "--stateless-rpc"])
                .args([&path])
                .repository(&path)
                .git_protocol(&git_protocol)
                .spawn()
                .await;
            let child = match spawned {
                Ok(c) => c,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let succeeded = pump_stateless(child, data, inbound, data_of, wrap, idle, &tx).await;
            if let (true, Some(before)) = (succeeded, before) {
                let after = RefState::load(&path).await;
                let _ = tx
                    .send(Err(ok_with_refs_changed(changed_value(&before, &after))))
                    .await;
            }
            drop(writing);
        });
        Ok(stream)
    }
}

#[tonic::async_trait]
impl SmartHttpService for SmartHttp {
    type InfoRefsUploadPackStream = ResponseStream<InfoRefsResponse>;

    async fn info_refs_upload_pack(
        &self,
        request: Request<InfoRefsRequest>,
    ) -> Result<Response<Self::InfoRefsUploadPackStream>, Status> {
        Ok(Response::new(
            self.info_refs(request.into_inner(), "upload-pack").await?,
        ))
    }

    type InfoRefsReceivePackStream = ResponseStream<InfoRefsResponse>;

    async fn info_refs_receive_pack(
        &self,
        request: Request<InfoRefsRequest>,
    ) -> Result<Response<Self::InfoRefsReceivePackStream>, Status> {
        Ok(Response::new(
            self.info_refs(request.into_inner(), "receive-pack").await?,
        ))
    }

    type PostUploadPackStream = ResponseStream<PostUploadPackResponse>;

    async fn post_upload_pack(
        &self,
        request: Request<Streaming<PostUploadPackRequest>>,
    ) -> Result<Response<Self::PostUploadPackStream>, Status> {
        let stream = self
            .post(
                request.into_inner(),
                "upload-pack",
                |m| (m.repository.clone(), m.git_protocol.clone()),
                |m| m.data,
                |data| PostUploadPackResponse { data },
            )
            .await?;
        Ok(Response::new(stream))
    }

    type PostReceivePackStream = ResponseStream<PostReceivePackResponse>;

    async fn post_receive_pack(
        &self,
        request: Request<Streaming<PostReceivePackRequest>>,
    ) -> Result<Response<Self::PostReceivePackStream>, Status> {
        let stream = self
            .post(
                request.into_inner(),
                "receive-pack",
                |m| (m.repository.clone(), m.git_protocol.clone()),
                |m| m.data,
                |data| PostReceivePackResponse { data },
            )
            .await?;
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_prefix_is_a_service_pkt_line_and_flush_except_for_v2() {
        assert_eq!(
            advertisement_prefix("upload-pack", ""),
            b"001e# service=git-upload-pack\n0000"
        );
        assert_eq!(
            advertisement_prefix("receive-pack", "version=1"),
            b"001f# service=git-receive-pack\n0000"
        );
        assert!(advertisement_prefix("upload-pack", "version=2").is_empty());
        assert_eq!(pkt_line("a\n"), b"0006a\n");
    }
}
