//! In-process storage nodes on `127.0.0.1:0` with temp storages, git helpers, and
//! the client side of a push (pkt-lines, packs, PostReceivePack) and of a replication.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use gitcluster_proto::auth::BearerToken;
use gitcluster_proto::v1::internal_service_client::InternalServiceClient;
use gitcluster_proto::v1::object_service_client::ObjectServiceClient;
use gitcluster_proto::v1::ref_service_client::RefServiceClient;
use gitcluster_proto::v1::repository_service_client::RepositoryServiceClient;
use gitcluster_proto::v1::smart_http_service_client::SmartHttpServiceClient;
use gitcluster_proto::v1::{self, Repository};
use gitcluster_storage::config::{Config, StorageConfig};
use gitcluster_storage::{Listeners, serve};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::Streaming;
use tonic::metadata::MetadataMap;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type Authed = InterceptedService<Channel, BearerToken>;

pub struct TestNode {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub url: String,
    pub storage: String,
    pub root: PathBuf,
    pub token: Option<String>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

pub async fn start(storage: &str, token: Option<&str>, transitioning: bool) -> TestNode {
    start_with(storage, token, transitioning, |_| {}).await
}

/// Like [`start`], with `adjust` applied to the node's config before it serves.
pub async fn start_with(
    storage: &str,
    token: Option<&str>,
    transitioning: bool,
    adjust: impl FnOnce(&mut Config),
) -> TestNode {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join(storage);
    let mut config = Config::with_storages(vec![StorageConfig {
        name: storage.into(),
        path: root.clone(),
    }]);
    config.token = token.map(str::to_owned);
    config.auth_transitioning = transitioning;
    config.ssh_helper = PathBuf::from(env!("CARGO_BIN_EXE_gitcluster-storage"));
    adjust(&mut config);
    let listeners = Listeners::bind(&config).await.expect("bind");
    let addr = listeners.grpc_addr().expect("addr");
    let admin_addr = listeners.admin.local_addr().expect("admin addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(config, listeners, shutdown.clone()));
    let root = root.canonicalize().unwrap_or(root);
    TestNode {
        addr,
        admin_addr,
        url: format!("http://{addr}"),
        storage: storage.into(),
        root,
        token: token.map(str::to_owned),
        shutdown,
        task: Some(task),
        _dir: dir,
    }
}

impl TestNode {
    pub fn repo(&self, rel: &str) -> Repository {
        Repository {
            storage_name: self.storage.clone(),
            relative_path: rel.into(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        // The storage root is created by the server; wait for it briefly.
        self.root
            .canonicalize()
            .unwrap_or_else(|_| self.root.clone())
            .join(rel)
    }

    async fn channel(&self) -> Channel {
        for _ in 0..100 {
            if let Ok(c) = Channel::from_shared(self.url.clone())
                .expect("url")
                .connect()
                .await
            {
                return c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("node at {} did not come up", self.url);
    }

    fn auth(&self, token: Option<&str>) -> BearerToken {
        BearerToken::new(token).expect("token")
    }

    pub async fn repos_with(&self, token: Option<&str>) -> RepositoryServiceClient<Authed> {
        RepositoryServiceClient::with_interceptor(self.channel().await, self.auth(token))
    }
    pub async fn repos(&self) -> RepositoryServiceClient<Authed> {
        self.repos_with(self.token.clone().as_deref()).await
    }
    pub async fn refs(&self) -> RefServiceClient<Authed> {
        RefServiceClient::with_interceptor(self.channel().await, self.auth(self.token.as_deref()))
    }
    pub async fn objects(&self) -> ObjectServiceClient<Authed> {
        ObjectServiceClient::with_interceptor(
            self.channel().await,
            self.auth(self.token.as_deref()),
        )
    }
    pub async fn smarthttp(&self) -> SmartHttpServiceClient<Authed> {
        SmartHttpServiceClient::with_interceptor(
            self.channel().await,
            self.auth(self.token.as_deref()),
        )
    }
    pub async fn internal(&self) -> InternalServiceClient<Authed> {
        InternalServiceClient::with_interceptor(
            self.channel().await,
            self.auth(self.token.as_deref()),
        )
    }

    pub async fn create(&self, rel: &str) {
        self.repos()
            .await
            .create_repository(v1::CreateRepositoryRequest {
                repository: Some(self.repo(rel)),
                ..Default::default()
            })
            .await
            .expect("create repository");
    }

    pub async fn checksum(&self, rel: &str) -> String {
        self.repos()
            .await
            .calculate_checksum(v1::CalculateChecksumRequest {
                repository: Some(self.repo(rel)),
            })
            .await
            .expect("checksum")
            .into_inner()
            .checksum
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.expect("join").expect("clean shutdown");
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Runs git in a bare repository and returns trimmed stdout; panics on failure.
pub async fn git(dir: &Path, args: &[&str], stdin: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "A U Thor")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "C O Mitter")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .env("GIT_AUTHOR_DATE", "1700000000 +0100")
        .env("GIT_COMMITTER_DATE", "1700000000 +0100")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn git");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("write stdin");
    drop(input);
    let out = child.wait_with_output().await.expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Writes a commit with one file and the given parents; returns its oid.
pub async fn commit(dir: &Path, content: &str, parents: &[&str]) -> String {
    let blob = git(dir, &["hash-object", "-w", "--stdin"], content.as_bytes()).await;
    let tree = git(
        dir,
        &["mktree"],
        format!("100644 blob {blob}\tfile.txt\n").as_bytes(),
    )
    .await;
    let message: String = content.chars().take(60).collect();
    let mut args = vec!["commit-tree", tree.as_str(), "-m", message.as_str()];
    for p in parents {
        args.push("-p");
        args.push(p);
    }
    git(dir, &args, b"").await
}

pub const ZERO_OID: &str = "0000000000000000000000000000000000000000";

pub async fn update_ref(
    node: &TestNode,
    rel: &str,
    reference: &str,
    old: &str,
    new: &str,
) -> Result<(), tonic::Status> {
    node.refs()
        .await
        .update_references(v1::UpdateReferencesRequest {
            repository: Some(node.repo(rel)),
            updates: vec![v1::update_references_request::Update {
                reference: reference.into(),
                old_oid: old.into(),
                new_oid: new.into(),
            }],
        })
        .await
        .map(|_| ())
}

pub fn is_bare_repo(dir: &Path) -> bool {
    dir.join("HEAD").is_file() && dir.join("objects").is_dir() && dir.join("refs").is_dir()
}

/// GETs `path` from the node's admin port; returns the whole HTTP response.
pub async fn admin_get(node: &TestNode, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(node.admin_addr)
        .await
        .expect("connect admin");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// Replicates `rel` from `source` onto `target` (same relative path on both, the
/// source reached at its own URL); the call's status on failure.
pub async fn replicate(target: &TestNode, source: &TestNode, rel: &str) -> Result<(), Status> {
    target
        .repos()
        .await
        .replicate_repository(v1::ReplicateRepositoryRequest {
            repository: Some(target.repo(rel)),
            source: Some(source.repo(rel)),
            source_address: source.url.clone(),
        })
        .await
        .map(|_| ())
}

/// One pkt-line: four hex digits giving the length (payload plus 4), then `payload`.
pub fn pkt(payload: &str) -> Vec<u8> {
    format!("{:04x}{payload}", payload.len() + 4).into_bytes()
}

/// Makes `dir` an empty bare repository: a client's, outside any storage.
pub async fn init_bare(dir: &Path) {
    git(dir, &["init", "--bare", "--quiet"], b"").await;
}

/// The pack `git pack-objects --revs` builds in the repository `dir` for `revs` (one
/// revision a line, `^rev` to leave out what `rev` reaches); panics if git fails.
pub async fn pack(dir: &Path, revs: &str) -> Vec<u8> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(dir)
        .args(["pack-objects", "--stdout", "--revs", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("pack-objects");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(revs.as_bytes()).await.expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("pack");
    assert!(out.status.success(), "pack-objects failed for {revs:?}");
    out.stdout
}

/// The receive-pack request body moving `reference` from `old` to `new` (with
/// report-status): the command, a flush, and a pack from the client repository
/// `client` of `new` and everything it reaches, less what `old` reaches unless
/// `old` is [`ZERO_OID`].
pub async fn push_body(client: &Path, old: &str, new: &str, reference: &str) -> Vec<u8> {
    let revs = if old == ZERO_OID {
        format!("{new}\n")
    } else {
        format!("{new}\n^{old}\n")
    };
    let mut body = pkt(&format!("{old} {new} {reference}\0report-status\n"));
    body.extend_from_slice(b"0000");
    body.extend_from_slice(&pack(client, &revs).await);
    body
}

/// Makes `client` a bare repository with one commit of `content`; returns that
/// commit and the push body creating `refs/heads/main` at it.
pub async fn client_push(client: &Path, content: &str) -> (String, Vec<u8>) {
    init_bare(client).await;
    let c = commit(client, content, &[]).await;
    let body = push_body(client, ZERO_OID, &c, "refs/heads/main").await;
    (c, body)
}

/// What a PostReceivePack call that ended OK returned.
pub struct Pushed {
    /// git's report (report-status), all response messages joined.
    pub report: String,
    /// The response trailers, `None` when the node sent none.
    pub trailers: Option<MetadataMap>,
}

/// Drains a PostReceivePack response; the first error status of the stream.
pub async fn read_report(
    mut response: Streaming<v1::PostReceivePackResponse>,
) -> Result<Pushed, Status> {
    let mut report = Vec::new();
    while let Some(m) = response.message().await? {
        report.extend_from_slice(&m.data);
    }
    let trailers = response.trailers().await?;
    Ok(Pushed {
        report: String::from_utf8_lossy(&report).into_owned(),
        trailers,
    })
}

/// Sends `messages` as one PostReceivePack call through `client` and drains the
/// response; the call's or the stream's error status.
pub async fn receive_pack_on(
    client: &mut SmartHttpServiceClient<Authed>,
    messages: Vec<v1::PostReceivePackRequest>,
) -> Result<Pushed, Status> {
    let response = client
        .post_receive_pack(tokio_stream::iter(messages))
        .await?
        .into_inner();
    read_report(response).await
}

/// Sends `body` to `rel` as a single PostReceivePack message on a new connection
/// to `node`; the call's or the stream's error status.
pub async fn receive_pack(node: &TestNode, rel: &str, body: Vec<u8>) -> Result<Pushed, Status> {
    let message = v1::PostReceivePackRequest {
        repository: Some(node.repo(rel)),
        data: body,
        git_protocol: String::new(),
    };
    receive_pack_on(&mut node.smarthttp().await, vec![message]).await
}

/// Asserts that the push whose report is `report` created `refs/heads/main` of
/// `rel` on `node` at `commit`: git said `ok` and the node's repository has it.
pub async fn assert_pushed_main(node: &TestNode, rel: &str, report: &str, commit: &str) {
    assert!(report.contains("ok refs/heads/main"), "{report}");
    assert_eq!(
        git(&node.path(rel), &["rev-parse", "refs/heads/main"], b"").await,
        commit
    );
}
