//! Test support: raw HTTP/1.1 to a gateway, the gateway in-process for the few scenarios
//! that need a configuration the harness does not offer (a dead upstream, a wrong
//! upstream token), and helpers that make real git requests against the real storage
//! node started by `gitcluster_integration_tests::Cluster`. Nothing here stands in for
//! a service: every upstream call reaches `gitcluster-storage` and real `git`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use gitcluster_gateway::{Config, Listeners};
use gitcluster_integration_tests::{Cluster, git, http_get, metric_sum};
use gitcluster_proto::v1::CreateRepositoryRequest;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

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

/// The HTTP address of the cluster's gateway process.
pub fn gateway_addr(cluster: &Cluster) -> SocketAddr {
    cluster
        .gateway_url()
        .trim_start_matches("http://")
        .parse()
        .expect("gateway URL is http://<ip>:<port>")
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
    tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut raw))
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

/// gzip-compresses `data` with the `gzip` CLI.
pub async fn gzip(data: &[u8]) -> Vec<u8> {
    let mut child = tokio::process::Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
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

/// One pkt-line of git's wire protocol.
pub fn pkt_line(payload: &str) -> Vec<u8> {
    format!("{:04x}{payload}", payload.len() + 4).into_bytes()
}

/// A work tree in the cluster's temp dir with one commit; returns its path and the commit.
pub fn work_tree(cluster: &Cluster, name: &str) -> (PathBuf, String) {
    let work = cluster.dir().join(name);
    std::fs::create_dir_all(&work).expect("create work tree");
    git::run(&work, &["init", "-q", "--initial-branch=main"]);
    std::fs::write(work.join("README.md"), "hello\n").expect("write file");
    let oid = git::commit_all(&work, "first");
    (work, oid)
}

/// Pushes `main` of `work` through the cluster's gateway to `relative_path`.
pub fn push_main(cluster: &Cluster, work: &Path, relative_path: &str) {
    git::run(
        work,
        &["push", "-q", &cluster.repo_url(relative_path), "main"],
    );
}

/// Creates an empty repository on storage node 1 over gRPC.
pub async fn create_repository(cluster: &Cluster, relative_path: &str) {
    cluster
        .repository_client(0)
        .await
        .create_repository(CreateRepositoryRequest {
            repository: Some(cluster.repository(0, relative_path)),
            ..Default::default()
        })
        .await
        .expect("create repository");
}

/// Adds a commit with a 1 MiB incompressible file to `work` and returns a receive-pack
/// request body moving `refs/heads/main` from `old` (`None`: creating it) to that
/// commit, with the pack a real `git push` would send.
pub fn push_request(work: &Path, old: Option<&str>) -> (Vec<u8>, String) {
    git::write_random_file(&work.join("big.bin"), 1024 * 1024);
    let new = git::commit_all(work, "big");
    let revs = match old {
        Some(old) => format!("{new}\n^{old}\n"),
        None => format!("{new}\n"),
    };
    let pack = pipe_git(
        work,
        &["pack-objects", "--stdout", "--revs", "-q"],
        revs.as_bytes(),
    );
    let zero = "0".repeat(40);
    let old = old.unwrap_or(&zero);
    let mut body = pkt_line(&format!("{old} {new} refs/heads/main\0report-status\n"));
    body.extend_from_slice(b"0000");
    body.extend_from_slice(&pack);
    (body, new)
}

/// Runs git in `dir` with `input` on stdin; panics on failure; returns stdout.
pub fn pipe_git(dir: &Path, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = git::command(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn git {args:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        use std::io::Write as _;
        // git may stop reading early on bad input; its exit status tells.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("git output");
    feeder.join().expect("feeder thread");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A protocol v0 fetch negotiation for `want` padded with `haves` unknown `have` lines,
/// ending in `done`: the node answers `NAK` and a pack.
pub fn upload_pack_request(want: &str, haves: usize) -> Vec<u8> {
    let mut body = pkt_line(&format!("want {want} ofs-delta\n"));
    body.extend_from_slice(b"0000");
    for i in 0..haves {
        // Object ids nobody has: the node must read (and ignore) every one of them.
        body.extend_from_slice(&pkt_line(&format!("have {i:040x}\n")));
    }
    body.extend_from_slice(&pkt_line("done\n"));
    body
}

/// Checks an upload-pack result: `NAK`, then a pack that real `git index-pack` accepts
/// (in a scratch repository `scratch` under the cluster's dir) and that holds `want`.
pub fn assert_pack_with(cluster: &Cluster, scratch: &str, result: &[u8], want: &str) {
    assert!(
        result.starts_with(b"0008NAK\n"),
        "{:?}",
        String::from_utf8_lossy(&result[..result.len().min(200)])
    );
    let pack = &result[8..];
    assert!(pack.starts_with(b"PACK"), "a pack follows the NAK");
    let scratch = cluster.dir().join(scratch);
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    git::run(&scratch, &["init", "-q", "--bare"]);
    pipe_git(&scratch, &["index-pack", "--stdin", "--strict"], pack);
    assert_eq!(git::run(&scratch, &["cat-file", "-t", want]), "commit");
}

/// Opens a POST to `path` on `addr`, sends `body` cut short the way `chunked` says, waits
/// a moment so the gateway starts the upstream call, then drops the connection.
///
/// * `chunked`: the first half as one complete chunk, then the start of a chunk that
///   never finishes (and no terminating zero-length chunk);
/// * otherwise: `Content-Length` announces the whole body, half of it is sent.
pub async fn interrupted_post(addr: SocketAddr, path: &str, body: &[u8], chunked: bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {}", body.len())
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-git-receive-pack-request\r\n{framing}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    let half = &body[..body.len() / 2];
    if chunked {
        s.write_all(format!("{:x}\r\n", half.len()).as_bytes())
            .await
            .expect("write");
        s.write_all(half).await.expect("write");
        s.write_all(b"\r\n1000\r\nonly a bit of the next chunk")
            .await
            .expect("write");
    } else {
        s.write_all(half).await.expect("write");
    }
    s.flush().await.expect("flush");
    // Let the gateway start streaming to the node before we vanish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
}

/// Receive-pack requests the cluster's gateway process has answered so far.
pub async fn receive_packs(cluster: &Cluster) -> anyhow::Result<f64> {
    let addr = cluster
        .gateway
        .as_ref()
        .expect("cluster has a gateway")
        .member
        .metrics_addr;
    let (_, metrics) = http_get(addr, "/metrics").await?;
    Ok(metric_sum(
        &metrics,
        "gitcluster_gateway_requests_total",
        &[("service", "receive_pack")],
    ))
}

/// The cluster gateway process's log so far.
pub fn gateway_log(cluster: &Cluster) -> String {
    cluster
        .gateway
        .as_ref()
        .expect("cluster has a gateway")
        .member
        .log()
}

/// Whether `relative_path` is a directory on storage node 1's disk.
pub fn on_disk(cluster: &Cluster, relative_path: &str) -> bool {
    cluster.storages[0].root.join(relative_path).exists()
}
