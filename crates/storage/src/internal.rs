//! InternalService: what a replicating node needs from its source. `SSHUploadPack`
//! runs a stateful `git upload-pack` whose stdin, stdout and stderr travel in the
//! stream (the transport `git fetch` reaches through the `ssh-upload-pack` helper);
//! `GetRepositoryFiles` returns HEAD, config, attributes and custom hooks.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use gitcluster_proto::STREAM_CHUNK_BYTES;
use gitcluster_proto::v1::internal_service_server::InternalService;
use gitcluster_proto::v1::{
    GetRepositoryFilesRequest, GetRepositoryFilesResponse, RepositoryFile, SshUploadPackRequest,
    SshUploadPackResponse,
};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::slots::SlotClass;
use crate::stream::{Coalesced, ResponseStream, channel};
use crate::{NODE_ID_METADATA, Node};

/// Directory of custom hooks inside a repository.
pub const CUSTOM_HOOKS_DIR: &str = "custom_hooks";

/// InternalService handlers.
#[derive(Debug, Clone)]
pub struct Internal {
    node: Arc<Node>,
}

impl Internal {
    /// Handlers over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Internal { node }
    }
}

/// Every regular file under `<repo>/custom_hooks`, with path relative to the repo.
fn read_custom_hooks(repo: &Path) -> std::io::Result<Vec<RepositoryFile>> {
    let base = repo.join(CUSTOM_HOOKS_DIR);
    let mut files = Vec::new();
    if !base.is_dir() {
        return Ok(files);
    }
    let mut stack = vec![base];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let ty = entry.file_type()?;
            let path = entry.path();
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() {
                let Some(rel) = path.strip_prefix(repo).ok().and_then(|r| r.to_str()) else {
                    continue;
                };
                let meta = entry.metadata()?;
                files.push(RepositoryFile {
                    path: rel.to_owned(),
                    mode: meta.permissions().mode() & 0o7777,
                    content: std::fs::read(&path)?,
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Reads a stream into coalesced messages until EOF (stdout by pkt-line, stderr by
/// size and linger, see `crate::stream`); returns false when the receiver is gone.
async fn forward<R: AsyncRead + Unpin>(
    r: R,
    tx: &mpsc::Sender<Result<SshUploadPackResponse, Status>>,
    stderr: bool,
) -> bool {
    let mut r = if stderr {
        Coalesced::raw(r)
    } else {
        Coalesced::new(r)
    };
    let mut buf = vec![0u8; STREAM_CHUNK_BYTES];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(n) => {
                let data = buf[..n].to_vec();
                let msg = if stderr {
                    SshUploadPackResponse {
                        stderr: data,
                        ..Default::default()
                    }
                } else {
                    SshUploadPackResponse {
                        stdout: data,
                        ..Default::default()
                    }
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return false;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl InternalService for Internal {
    type SSHUploadPackStream = ResponseStream<SshUploadPackResponse>;

    async fn ssh_upload_pack(
        &self,
        request: Request<Streaming<SshUploadPackRequest>>,
    ) -> Result<Response<Self::SSHUploadPackStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty request stream"))?;
        let repo = self.node.storages.locate(first.repository.as_ref())?;
        repo.require_exists()?;
        // Stateful upload-pack: the stream is one whole ssh session. Its stderr is
        // piped through the stream, so it is spawned with the stderr collector off.
        let mut cmd = self
            .node
            .git
            .command(None)
            .args(["upload-pack"])
            .args([&repo.path])
            // Serving another node's replication: never queued behind client traffic,
            // nor behind this node's own fetches (`crate::slots`).
            .slot_class(SlotClass::Peer);
        cmd = cmd.git_protocol(&first.git_protocol);
        let mut child = cmd.spawn_with_stderr().await?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) = (
            child.child.stdin.take(),
            child.child.stdout.take(),
            child.take_stderr(),
        ) else {
            return Err(Status::internal("git pipes missing"));
        };
        let (tx, stream) = channel();
        tokio::spawn(async move {
            let writer = tokio::spawn(async move {
                if !first.stdin.is_empty() && stdin.write_all(&first.stdin).await.is_err() {
                    return Ok(());
                }
                loop {
                    match inbound.message().await {
                        Ok(Some(m)) => {
                            if !m.stdin.is_empty() && stdin.write_all(&m.stdin).await.is_err() {
                                return Ok(());
                            }
                        }
                        Ok(None) => return Ok(()),
                        Err(s) => return Err(s),
                    }
                }
            });
            let (out_ok, err_ok) =
                tokio::join!(forward(stdout, &tx, false), forward(stderr, &tx, true));
            if !(out_ok && err_ok) {
                writer.abort();
                child.kill().await;
                return;
            }
            let waited = child.wait().await;
            writer.abort();
            match waited {
                Ok((status, _)) => {
                    let code = status.code().unwrap_or(128 + status_signal(&status));
                    let _ = tx
                        .send(Ok(SshUploadPackResponse {
                            exit_status: Some(code),
                            ..Default::default()
                        }))
                        .await;
                }
                Err(s) => {
                    let _ = tx.send(Err(s)).await;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn get_repository_files(
        &self,
        request: Request<GetRepositoryFilesRequest>,
    ) -> Result<Response<GetRepositoryFilesResponse>, Status> {
        let repo = self
            .node
            .storages
            .locate(request.get_ref().repository.as_ref())?;
        repo.require_exists()?;
        let head = self
            .node
            .git
            .command(Some(&repo.path))
            .args(["symbolic-ref", "-q", "HEAD"])
            .slot_class(SlotClass::Peer)
            .output(&[])
            .await?;
        let head = if head.status.success() {
            head.stdout_str()
        } else {
            String::new()
        };
        let path = repo.path.clone();
        let (config, attributes, custom_hooks) = tokio::task::spawn_blocking(move || {
            let config = std::fs::read(path.join("config"))?;
            let attributes = match std::fs::read(path.join("info").join("attributes")) {
                Ok(a) => Some(a),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            Ok((config, attributes, read_custom_hooks(&path)?))
        })
        .await
        .map_err(|e| Status::internal(format!("read task: {e}")))?
        .map_err(|e: std::io::Error| Status::internal(format!("read repository files: {e}")))?;
        let mut response = Response::new(GetRepositoryFilesResponse {
            head,
            config,
            attributes,
            custom_hooks,
        });
        if let Ok(v) = self.node.id.parse() {
            response.metadata_mut().insert(NODE_ID_METADATA, v);
        }
        Ok(response)
    }
}

fn status_signal(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status.signal().unwrap_or(0)
}
