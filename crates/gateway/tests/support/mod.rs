//! Test support: start the gateway in-process, speak raw HTTP/1.1 to it, and a
//! recording `gitcluster.v1` upstream that stands in for the storage node (written in
//! parallel) so the gateway's stream handling can be observed from the far side.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use gitcluster_gateway::{Config, Listeners};
use gitcluster_proto::auth::TokenAuth;
use gitcluster_proto::v1::repository_service_server::{RepositoryService, RepositoryServiceServer};
use gitcluster_proto::v1::smart_http_service_server::{SmartHttpService, SmartHttpServiceServer};
use gitcluster_proto::v1::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// A gateway running in this process.
pub struct Gateway {
    pub http: SocketAddr,
    pub metrics: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    pub async fn start(upstream: &str, tweak: impl FnOnce(&mut Config)) -> Gateway {
        // Logs for failing tests: RUST_LOG=debug cargo test ...
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut config = Config::for_upstream(upstream);
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.metrics_listen = "127.0.0.1:0".parse().expect("addr");
        config.drain_timeout = Duration::from_secs(5);
        tweak(&mut config);
        let listeners = Listeners::bind(&config).await.expect("bind");
        let http = listeners.http_addr().expect("addr");
        let metrics = listeners.metrics_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gitcluster_gateway::serve(
            config,
            listeners,
            shutdown.clone(),
        ));
        Gateway {
            http,
            metrics,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("gateway stops in time")
            .expect("gateway task");
        result.expect("gateway returns ok");
    }
}

/// An address where nothing listens.
pub async fn dead_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `head` (request line and headers, without the blank line) plus `body`, with
/// `Connection: close`, writing concurrently with reading the response.
pub async fn send(addr: SocketAddr, head: &str, body: Vec<u8>) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let mut request = format!("{head}\r\nHost: test\r\nConnection: close\r\n\r\n").into_bytes();
    request.extend_from_slice(&body);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        wr
    });
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read response");
    drop(writer.await);
    parse_reply(&raw)
}

/// GET with optional extra header lines.
pub async fn get(addr: SocketAddr, path: &str, extra: &[&str]) -> Reply {
    let mut head = format!("GET {path} HTTP/1.1");
    for h in extra {
        head.push_str("\r\n");
        head.push_str(h);
    }
    send(addr, &head, Vec::new()).await
}

/// POST with a Content-Length body and optional extra header lines.
pub async fn post(addr: SocketAddr, path: &str, extra: &[&str], body: Vec<u8>) -> Reply {
    let mut head = format!("POST {path} HTTP/1.1\r\nContent-Length: {}", body.len());
    for h in extra {
        head.push_str("\r\n");
        head.push_str(h);
    }
    send(addr, &head, body).await
}

pub fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// Decodes a chunked body; stops quietly at a truncation.
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { return out };
        if size == 0 || data.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[(eol + 4 + size).min(data.len())..];
    }
}

/// FNV-1a, to compare bodies without echoing them.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// What the recording upstream saw.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    InfoRefs {
        rpc: &'static str,
        repo: String,
        git_protocol: String,
        advertise_empty_if_missing: bool,
    },
    /// A Post* call received its first message.
    Started {
        rpc: &'static str,
        repo: String,
        git_protocol: String,
        first_data_len: usize,
    },
    /// A Post* call's request stream finished: `clean` is a proper end-of-stream,
    /// otherwise the stream failed (reset by the gateway) with `code`.
    Finished {
        rpc: &'static str,
        repo: String,
        bytes: usize,
        max_message_data: usize,
        clean: bool,
        code: Option<tonic::Code>,
    },
    Created(String),
    Removed(String),
}

/// Stand-in for a storage node that records what it receives.
#[derive(Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
    existing: Mutex<HashSet<String>>,
}

impl Recorder {
    fn push(&self, e: Event) {
        self.events.lock().expect("lock").push(e);
    }
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("lock").clone()
    }
    pub fn add_repository(&self, repo: &str) {
        self.existing.lock().expect("lock").insert(repo.to_owned());
    }
    pub fn exists(&self, repo: &str) -> bool {
        self.existing.lock().expect("lock").contains(repo)
    }
    /// Waits (generously) for an event matching `pred`.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        for _ in 0..1000 {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("upstream never saw {what}; saw {:?}", self.events());
    }
}

fn repo_name(r: &Option<Repository>) -> String {
    r.as_ref()
        .map(|r| format!("{}/{}", r.storage_name, r.relative_path))
        .unwrap_or_default()
}

#[derive(Clone)]
struct FakeNode(Arc<Recorder>);

/// Repository, data and git_protocol of one request message.
type Parts = (Option<Repository>, Vec<u8>, String);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Reads a Post* request stream in a task, like a real node that starts `git` and
/// returns its response stream at once, and answers once the input is complete.
fn consume<Req, Resp>(
    rec: Arc<Recorder>,
    rpc: &'static str,
    mut inbound: Streaming<Req>,
    parts: fn(Req) -> Parts,
    reply: fn(Vec<u8>) -> Resp,
) -> BoxStream<Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Resp, Status>>(4);
    tokio::spawn(async move {
        let (repo, first_data, git_protocol) = match inbound.message().await {
            Ok(Some(m)) => parts(m),
            _ => return,
        };
        let repo = repo_name(&repo);
        rec.push(Event::Started {
            rpc,
            repo: repo.clone(),
            git_protocol,
            first_data_len: first_data.len(),
        });
        let mut all = first_data;
        let mut max = 0;
        let (clean, code) = loop {
            match inbound.message().await {
                Ok(Some(m)) => {
                    let (_, data, _) = parts(m);
                    max = max.max(data.len());
                    all.extend_from_slice(&data);
                }
                Ok(None) => break (true, None),
                Err(s) => break (false, Some(s.code())),
            }
        };
        rec.push(Event::Finished {
            rpc,
            repo: repo.clone(),
            bytes: all.len(),
            max_message_data: max,
            clean,
            code,
        });
        if !clean {
            return;
        }
        if repo.contains("fail") {
            let _ = tx
                .send(Err(Status::internal("pre-receive hook declined")))
                .await;
            return;
        }
        let summary = format!("len={} fnv={:x}\n", all.len(), fnv(&all));
        let _ = tx.send(Ok(reply(summary.into_bytes()))).await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl SmartHttpService for FakeNode {
    type InfoRefsUploadPackStream = BoxStream<InfoRefsResponse>;
    type InfoRefsReceivePackStream = BoxStream<InfoRefsResponse>;
    type PostUploadPackStream = BoxStream<PostUploadPackResponse>;
    type PostReceivePackStream = BoxStream<PostReceivePackResponse>;

    async fn info_refs_upload_pack(
        &self,
        request: Request<InfoRefsRequest>,
    ) -> Result<Response<Self::InfoRefsUploadPackStream>, Status> {
        self.info_refs("InfoRefsUploadPack", request.into_inner())
    }

    async fn info_refs_receive_pack(
        &self,
        request: Request<InfoRefsRequest>,
    ) -> Result<Response<Self::InfoRefsReceivePackStream>, Status> {
        self.info_refs("InfoRefsReceivePack", request.into_inner())
    }

    async fn post_upload_pack(
        &self,
        request: Request<Streaming<PostUploadPackRequest>>,
    ) -> Result<Response<Self::PostUploadPackStream>, Status> {
        Ok(Response::new(consume(
            self.0.clone(),
            "PostUploadPack",
            request.into_inner(),
            |m| (m.repository, m.data, m.git_protocol),
            |data| PostUploadPackResponse { data },
        )))
    }

    async fn post_receive_pack(
        &self,
        request: Request<Streaming<PostReceivePackRequest>>,
    ) -> Result<Response<Self::PostReceivePackStream>, Status> {
        Ok(Response::new(consume(
            self.0.clone(),
            "PostReceivePack",
            request.into_inner(),
            |m| (m.repository, m.data, m.git_protocol),
            |data| PostReceivePackResponse { data },
        )))
    }
}

impl FakeNode {
    fn info_refs(
        &self,
        rpc: &'static str,
        r: InfoRefsRequest,
    ) -> Result<Response<BoxStream<InfoRefsResponse>>, Status> {
        let repo = repo_name(&r.repository);
        self.0.push(Event::InfoRefs {
            rpc,
            repo: repo.clone(),
            git_protocol: r.git_protocol.clone(),
            advertise_empty_if_missing: r.advertise_empty_if_missing,
        });
        if !self.0.exists(&repo) && !r.advertise_empty_if_missing {
            return Err(Status::not_found("repository not found"));
        }
        let chunks = vec![
            Ok(InfoRefsResponse {
                data: b"001e# service=git-upload-pack\n0000".to_vec(),
            }),
            Ok(InfoRefsResponse {
                data: format!("protocol={}", r.git_protocol).into_bytes(),
            }),
        ];
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

#[tonic::async_trait]
impl RepositoryService for FakeNode {
    async fn create_repository(
        &self,
        request: Request<CreateRepositoryRequest>,
    ) -> Result<Response<CreateRepositoryResponse>, Status> {
        let repo = repo_name(&request.into_inner().repository);
        if !self.0.existing.lock().expect("lock").insert(repo.clone()) {
            return Err(Status::already_exists("repository exists"));
        }
        self.0.push(Event::Created(repo));
        Ok(Response::new(CreateRepositoryResponse {}))
    }
    async fn repository_exists(
        &self,
        request: Request<RepositoryExistsRequest>,
    ) -> Result<Response<RepositoryExistsResponse>, Status> {
        let repo = repo_name(&request.into_inner().repository);
        Ok(Response::new(RepositoryExistsResponse {
            exists: self.0.exists(&repo),
        }))
    }
    async fn remove_repository(
        &self,
        request: Request<RemoveRepositoryRequest>,
    ) -> Result<Response<RemoveRepositoryResponse>, Status> {
        let repo = repo_name(&request.into_inner().repository);
        self.0.existing.lock().expect("lock").remove(&repo);
        self.0.push(Event::Removed(repo));
        Ok(Response::new(RemoveRepositoryResponse {}))
    }
    async fn repository_size(
        &self,
        _: Request<RepositorySizeRequest>,
    ) -> Result<Response<RepositorySizeResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn calculate_checksum(
        &self,
        _: Request<CalculateChecksumRequest>,
    ) -> Result<Response<CalculateChecksumResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn replicate_repository(
        &self,
        _: Request<ReplicateRepositoryRequest>,
    ) -> Result<Response<ReplicateRepositoryResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    type ListRepositoriesStream = BoxStream<ListRepositoriesResponse>;
    async fn list_repositories(
        &self,
        _: Request<ListRepositoriesRequest>,
    ) -> Result<Response<Self::ListRepositoriesStream>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn optimize_repository(
        &self,
        _: Request<OptimizeRepositoryRequest>,
    ) -> Result<Response<OptimizeRepositoryResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// Starts the recording upstream; with `token`, it enforces it like a storage node.
pub async fn recording_upstream(token: Option<&str>) -> (String, Arc<Recorder>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let rec = Arc::new(Recorder::default());
    let auth = TokenAuth::new(token.map(str::to_owned), false);
    let node = FakeNode(rec.clone());
    let smart = SmartHttpServiceServer::with_interceptor(node.clone(), auth.clone());
    let repos = RepositoryServiceServer::with_interceptor(node, auth);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(smart)
            .add_service(repos)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), rec)
}

/// gzip-compresses `data` with the `gzip` CLI.
pub async fn gzip(data: &[u8]) -> Vec<u8> {
    let mut child = tokio::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gzip");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = data.to_vec();
    let feed = tokio::spawn(async move {
        stdin.write_all(&input).await.expect("write gzip input");
    });
    let out = child.wait_with_output().await.expect("gzip output");
    feed.await.expect("feed");
    assert!(out.status.success());
    out.stdout
}

/// Waits until `stream` (a raw client socket) sees the server close it.
pub async fn drain(mut stream: TcpStream) {
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
}
