//! Smart HTTP POSTs driven with hand-built protocol bodies: a push, an interrupted
//! push that must leave nothing behind, and a fetch.

mod common;

use std::time::Duration;

use common::{assert_pushed_main, client_push, git, pkt, start};
use gitcluster_proto::v1;
use tokio_stream::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_fetch_through_stateless_rpc() {
    let node = start("default", None, false).await;
    node.create("p.git").await;
    let scratch = tempfile::tempdir().expect("tempdir");
    // Large random-ish content so the pack spans several messages.
    let content: String = (0..200_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    let (c, body) = client_push(scratch.path(), &content).await;

    let repo = node.repo("p.git");
    let messages: Vec<v1::PostReceivePackRequest> = body
        .chunks(16 * 1024)
        .enumerate()
        .map(|(i, chunk)| v1::PostReceivePackRequest {
            repository: (i == 0).then(|| repo.clone()),
            data: chunk.to_vec(),
            git_protocol: String::new(),
        })
        .collect();
    let report = common::receive_pack_on(&mut node.smarthttp().await, messages)
        .await
        .expect("push")
        .report;
    assert!(report.contains("unpack ok"), "{report}");
    assert_pushed_main(&node, "p.git", &report, &c).await;

    // Fetch it back (protocol v0): want, done; the answer is NAK and a pack.
    let mut req = pkt(&format!("want {c} ofs-delta\n"));
    req.extend_from_slice(b"0000");
    req.extend_from_slice(&pkt("done\n"));
    let mut fetched = node
        .smarthttp()
        .await
        .post_upload_pack(tokio_stream::iter(vec![v1::PostUploadPackRequest {
            repository: Some(repo.clone()),
            data: req,
            git_protocol: String::new(),
        }]))
        .await
        .expect("fetch")
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = fetched.message().await.expect("message") {
        out.extend_from_slice(&m.data);
    }
    assert!(
        out.starts_with(b"0008NAK\n"),
        "{:?}",
        String::from_utf8_lossy(&out[..out.len().min(64)])
    );
    assert!(out.windows(4).any(|w| w == b"PACK"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_push_leaves_no_refs_or_objects() {
    let node = start("default", None, false).await;
    node.create("i.git").await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let content: String = (0..300_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    let (c, body) = client_push(scratch.path(), &content).await;
    let half = body[..body.len() / 2].to_vec();
    let repo = node.repo("i.git");
    // The client reaches the node through a TCP proxy; cutting the proxy is the
    // client vanishing mid-push (connection gone, stream reset).
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let proxy_addr = proxy.local_addr().expect("addr");
    let upstream = node.addr;
    let proxy_task = tokio::spawn(async move {
        let (mut inbound, _) = proxy.accept().await.expect("accept");
        let mut outbound = tokio::net::TcpStream::connect(upstream)
            .await
            .expect("connect");
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{proxy_addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect through proxy");
    let mut client = v1::smart_http_service_client::SmartHttpServiceClient::new(channel);
    let call = tokio::spawn(async move {
        // Half the push, then the client stalls.
        let first = tokio_stream::iter(vec![v1::PostReceivePackRequest {
            repository: Some(repo),
            data: half,
            git_protocol: String::new(),
        }]);
        let stalled = first.chain(tokio_stream::pending());
        let response = client.post_receive_pack(stalled).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(response);
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy_task.abort();
    let _ = proxy_task.await;
    // The server notices the reset and kills receive-pack; quarantine discards the data.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let dir = node.path("i.git");
    let refs = git(&dir, &["for-each-ref"], b"").await;
    assert!(refs.is_empty(), "refs appeared: {refs}");
    let mut probe = tokio::process::Command::new("git");
    probe
        .arg("--git-dir")
        .arg(&dir)
        .args(["cat-file", "-e", &c]);
    let status = probe.status().await.expect("cat-file");
    assert!(
        !status.success(),
        "commit from the interrupted push is visible"
    );
    call.abort();
    // receive-pack was killed, not left waiting for input: draining is quick (the
    // drain deadline is 30 s; this bound is generous, not a timing goal).
    tokio::time::timeout(Duration::from_secs(20), node.stop())
        .await
        .expect("node drains");
}
