//! Bad input gets a precise status and never hurts the node: paths, tokens, malformed
//! requests, unknown repositories and a client that vanishes in the middle of a push.

#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use gitcluster_integration_tests::{Cluster, eventually, git, metric_sum};
use gitcluster_proto::v1::repository_service_client::RepositoryServiceClient;
use gitcluster_proto::v1::{
    CreateRepositoryRequest, Repository, RepositoryExistsRequest, RepositorySizeRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

fn repo(storage: &str, path: &str) -> Option<Repository> {
    Some(Repository {
        storage_name: storage.into(),
        relative_path: path.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grpc_requests_get_precise_status_codes() {
    let cluster = Cluster::builder().storages(1).start().await;
    let storage = cluster.storages[0].storage.clone();
    let mut client = cluster.repository_client(0).await;
    let size = |r| RepositorySizeRequest { repository: r };

    let cases = [
        (
            "traversal",
            repo(&storage, "../outside.git"),
            Code::InvalidArgument,
        ),
        (
            "nested traversal",
            repo(&storage, "a/../../outside.git"),
            Code::InvalidArgument,
        ),
        (
            "absolute path",
            repo(&storage, "/etc/passwd"),
            Code::InvalidArgument,
        ),
        (
            "empty component",
            repo(&storage, "a//b.git"),
            Code::InvalidArgument,
        ),
        (
            "NUL byte",
            repo(&storage, "a\0b.git"),
            Code::InvalidArgument,
        ),
        ("empty path", repo(&storage, ""), Code::InvalidArgument),
        (
            "internal dir",
            repo(&storage, "+gitcluster/tmp"),
            Code::InvalidArgument,
        ),
        (
            "unknown storage",
            repo("no-such-storage", "a.git"),
            Code::InvalidArgument,
        ),
        ("missing repository", None, Code::InvalidArgument),
        (
            "unknown repository",
            repo(&storage, "does/not/exist.git"),
            Code::NotFound,
        ),
    ];
    for (what, r, code) in cases {
        let err = client.repository_size(size(r)).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(
            !err.message().is_empty() && !err.message().contains('\n'),
            "{what}: one-line reason"
        );
    }

    // A symlink inside the storage pointing outside it is an escape, not a repository.
    let outside = cluster.dir().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, cluster.storages[0].root.join("escape")).unwrap();
    let err = client
        .create_repository(CreateRepositoryRequest {
            repository: repo(&storage, "escape/evil.git"),
            ..Default::default()
        })
        .await
        .expect_err("symlink escape");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );

    // Tokens: missing → Unauthenticated, wrong → PermissionDenied.
    let mut anonymous = RepositoryServiceClient::new(cluster.channel(0).await);
    let err = anonymous
        .repository_exists(RepositoryExistsRequest {
            repository: repo(&storage, "a.git"),
        })
        .await;
    assert_eq!(err.expect_err("no token").code(), Code::Unauthenticated);
    let wrong = gitcluster_proto::auth::BearerToken::new(Some("not-the-token")).unwrap();
    let mut impostor = RepositoryServiceClient::with_interceptor(cluster.channel(0).await, wrong);
    let err = impostor
        .repository_exists(RepositoryExistsRequest {
            repository: repo(&storage, "a.git"),
        })
        .await;
    assert_eq!(err.expect_err("wrong token").code(), Code::PermissionDenied);

    // A body that is not a valid protobuf message: the gRPC spec's INTERNAL for parse errors.
    let status = raw_unary(
        &cluster,
        "/gitcluster.v1.RepositoryService/RepositoryExists",
        Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
    )
    .await
    .expect_err("garbage must fail");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    // An unknown method is UNIMPLEMENTED.
    let status = raw_unary(
        &cluster,
        "/gitcluster.v1.RepositoryService/NoSuchMethod",
        Bytes::new(),
    )
    .await
    .expect_err("unknown method");
    assert_eq!(status.code(), Code::Unimplemented);

    // The node still serves after all of that.
    client
        .create_repository(CreateRepositoryRequest {
            repository: repo(&storage, "still/alive.git"),
            ..Default::default()
        })
        .await
        .expect("node keeps serving");
    let err = client
        .create_repository(CreateRepositoryRequest {
            repository: repo(&storage, "still/alive.git"),
            ..Default::default()
        })
        .await
        .expect_err("second create");
    assert_eq!(err.code(), Code::AlreadyExists);
}

/// Raw-bytes codec, so the test can send what no generated client would.
#[derive(Clone, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}
impl tonic::codec::Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}
impl tonic::codec::Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

async fn raw_unary(
    cluster: &Cluster,
    path: &'static str,
    body: Bytes,
) -> Result<Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(cluster.channel(0).await);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(body);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", cluster.token).parse().unwrap(),
    );
    grpc.unary(req, http::uri::PathAndQuery::from_static(path), RawCodec)
        .await
        .map(|r| r.into_inner())
}

/// Sends a raw HTTP/1.1 request and returns the status code.
async fn http_status(base: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_requests_get_precise_status_codes() {
    let cluster = Cluster::builder()
        .storages(1)
        .gateway()
        .gateway_auth("client-secret")
        .start()
        .await;
    let base = cluster.gateway_url().to_owned();
    let st = cluster.storages[0].storage.clone();
    let basic = format!("Basic {}", base64_encode(b"anyone:client-secret"));
    let bad_basic = format!("Basic {}", base64_encode(b"anyone:guess"));
    let auth = [("Authorization", basic.as_str())];
    let refs = |p: &str, svc: &str| format!("/{st}/{p}/info/refs?service={svc}");

    assert_eq!(
        http_status(&base, "GET", &refs("a.git", "git-upload-pack"), &[]).await,
        401
    );
    assert_eq!(
        http_status(
            &base,
            "GET",
            &refs("a.git", "git-upload-pack"),
            &[("Authorization", &bad_basic)]
        )
        .await,
        401
    );
    assert_eq!(
        http_status(
            &base,
            "GET",
            &refs("a.git", "git-upload-pack"),
            &[("Authorization", "Bearer client-secret")]
        )
        .await,
        404,
        "unknown repository"
    );
    assert_eq!(
        http_status(&base, "GET", &refs("missing.git", "git-upload-pack"), &auth).await,
        404
    );
    assert_eq!(
        http_status(
            &base,
            "GET",
            &refs("..%2f..%2fetc", "git-upload-pack"),
            &auth
        )
        .await,
        400
    );
    assert_eq!(
        http_status(
            &base,
            "GET",
            &format!("/{st}/a/../../b.git/info/refs?service=git-upload-pack"),
            &auth
        )
        .await,
        400
    );
    assert_eq!(
        http_status(&base, "GET", &refs("a.git", "git-upload-archive"), &auth).await,
        400
    );
    assert_eq!(
        http_status(&base, "GET", &format!("/{st}/a.git/git-upload-pack"), &auth).await,
        405
    );
    assert_eq!(http_status(&base, "GET", "/nothing-here", &auth).await, 404);
}

fn base64_encode(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

fn pkt_line(data: &str) -> String {
    format!("{:04x}{data}", data.len() + 4)
}

/// POSTs a receive-pack request announcing the whole body but sending only `send`
/// bytes of it, then drops the connection.
async fn truncated_push(base: &str, path: &str, body: &[u8], send: usize) {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-git-receive-pack-request\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..send]).await.unwrap();
    s.flush().await.unwrap();
    // Let the gateway start streaming to the node before we vanish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnecting_mid_push_leaves_no_partial_repository() {
    let cluster = Cluster::builder().storages(1).gateway().start().await;
    let st = cluster.storages[0].storage.clone();
    let work = cluster.dir().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git::run(&work, &["init", "-q", "--initial-branch=main"]);
    let old = git::commit_all(&work, "first");
    git::run(
        &work,
        &["push", "-q", &cluster.repo_url("victim.git"), "main"],
    );
    let on_disk = cluster.storages[0].root.join("victim.git");
    let refs_before = git::refs(&on_disk);

    git::write_random_file(&work.join("big.bin"), 8 * 1024 * 1024);
    let new = git::commit_all(&work, "big");
    let mut pack_objects = git::command(&work);
    pack_objects
        .args(["pack-objects", "--stdout", "--revs", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = pack_objects.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{new}\n^{old}").unwrap();
    }
    let pack = child.wait_with_output().unwrap().stdout;
    assert!(pack.len() > 8 * 1024 * 1024);

    let zero = "0".repeat(40);
    let mut update =
        pkt_line(&format!("{old} {new} refs/heads/main\0report-status\n")).into_bytes();
    update.extend_from_slice(b"0000");
    update.extend_from_slice(&pack);
    let mut create =
        pkt_line(&format!("{zero} {new} refs/heads/main\0report-status\n")).into_bytes();
    create.extend_from_slice(b"0000");
    create.extend_from_slice(&pack);

    let gw_metrics = cluster.gateway.as_ref().unwrap().member.metrics_addr;
    let receive_packs = || async move {
        let (_, m) = gitcluster_integration_tests::http_get(gw_metrics, "/metrics").await?;
        anyhow::Ok(metric_sum(
            &m,
            "gitcluster_gateway_requests_total",
            &[("service", "receive_pack")],
        ))
    };
    let before = receive_packs().await.unwrap();

    let half = update.len() / 2;
    truncated_push(
        cluster.gateway_url(),
        &format!("/{st}/victim.git/git-receive-pack"),
        &update,
        half,
    )
    .await;
    truncated_push(
        cluster.gateway_url(),
        &format!("/{st}/fresh.git/git-receive-pack"),
        &create,
        half,
    )
    .await;

    // Both aborted requests have been fully handled by the gateway...
    eventually!("gateway finished both aborted pushes", {
        let n = receive_packs().await?;
        anyhow::ensure!(n >= before + 2.0, "{n} receive-pack requests counted");
        Ok(())
    });
    // ...and nothing of them is visible: refs unchanged, no new objects, no new repository.
    let client = cluster.repository_client(0).await;
    eventually!("aborted push-to-create leaves no repository", {
        let exists = client
            .clone()
            .repository_exists(RepositoryExistsRequest {
                repository: repo(&st, "fresh.git"),
            })
            .await?
            .into_inner()
            .exists;
        anyhow::ensure!(!exists, "fresh.git exists");
        Ok(())
    });
    assert_eq!(git::refs(&on_disk), refs_before);
    assert!(
        !git::run_output(&on_disk, &["cat-file", "-e", &new])
            .status
            .success(),
        "partial objects invisible"
    );
    git::run(&on_disk, &["fsck", "--full", "--strict"]);

    // The node and the gateway keep serving: the same push done properly succeeds.
    git::run(
        &work,
        &["push", "-q", &cluster.repo_url("victim.git"), "main"],
    );
    assert_eq!(git::run(&on_disk, &["rev-parse", "refs/heads/main"]), new);
}
