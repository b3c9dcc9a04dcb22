//! Streamed git output leaves the node in sensibly sized messages: h2's flood
//! guard answers a burst of small DATA frames with GOAWAY ENHANCE_YOUR_CALM
//! ("too_many_data_frames"), which kills every call on the connection, and a
//! receive-pack advertisement of a repository with many refs used to go out as
//! hundreds of tiny messages.

mod common;

use common::{TestNode, commit, git, start};
use gitcluster_proto::v1;

const TOKEN: &str = "internal-token";
const REFS: usize = 2000;

/// A repository with `REFS` branches on one commit, created behind the node's back.
async fn many_refs(node: &TestNode, rel: &str) -> String {
    node.create(rel).await;
    let dir = node.path(rel);
    let c = commit(&dir, "one", &[]).await;
    let mut stdin = String::new();
    for i in 0..REFS {
        stdin.push_str(&format!("create refs/heads/branch-{i:05} {c}\n"));
    }
    git(&dir, &["update-ref", "--stdin"], stdin.as_bytes()).await;
    c
}

/// The messages of an info/refs stream: their count and the whole body.
async fn advertisement(
    node: &TestNode,
    rel: &str,
    service: &str,
    protocol: &str,
) -> (usize, Vec<u8>) {
    let mut client = node.smarthttp().await;
    let request = v1::InfoRefsRequest {
        repository: Some(node.repo(rel)),
        git_protocol: protocol.into(),
        ..Default::default()
    };
    let mut stream = if service == "receive-pack" {
        client.info_refs_receive_pack(request).await
    } else {
        client.info_refs_upload_pack(request).await
    }
    .expect("info/refs")
    .into_inner();
    let (mut count, mut body) = (0, Vec::new());
    while let Some(m) = stream.message().await.expect("advertisement") {
        count += 1;
        body.extend_from_slice(&m.data);
    }
    (count, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertisements_of_2000_refs_arrive_in_a_handful_of_messages() {
    let node = start("default", Some(TOKEN), false).await;
    let rel = "many.git";
    many_refs(&node, rel).await;
    for service in ["receive-pack", "upload-pack"] {
        let (count, body) = advertisement(&node, rel, service, "").await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("refs/heads/branch-01999"),
            "whole advertisement"
        );
        assert!(text.ends_with("0000"), "ends with the flush packet");
        // The body is about 120 KiB: two full 64 KiB messages, the rest, and the
        // `# service=` prefix. Allow some slack, never hundreds.
        let full = body.len().div_ceil(gitcluster_proto::STREAM_CHUNK_BYTES);
        println!("{service}: {} bytes in {count} messages", body.len());
        assert!(
            count <= full + 4,
            "{service}: {} bytes in {count} messages",
            body.len()
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_pack_response_for_2000_refs_arrives_in_a_handful_of_messages() {
    let node = start("default", Some(TOKEN), false).await;
    let rel = "many.git";
    let c = many_refs(&node, rel).await;
    let pkt = |p: &str| format!("{:04x}{p}", p.len() + 4);
    // Protocol v2 ls-refs: a long, pkt-line by pkt-line answer.
    let body = format!(
        "{}{}0001{}0000",
        pkt("command=ls-refs\n"),
        pkt("object-format=sha1\n"),
        pkt("peel\n")
    );
    let mut response = node
        .smarthttp()
        .await
        .post_upload_pack(tokio_stream::iter(vec![v1::PostUploadPackRequest {
            repository: Some(node.repo(rel)),
            data: body.into_bytes(),
            git_protocol: "version=2".into(),
        }]))
        .await
        .expect("post upload-pack")
        .into_inner();
    let (mut count, mut out) = (0, Vec::new());
    while let Some(m) = response.message().await.expect("ls-refs") {
        count += 1;
        out.extend_from_slice(&m.data);
    }
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains(&format!("{c} refs/heads/branch-01999")),
        "{text:.200}"
    );
    let full = out.len().div_ceil(gitcluster_proto::STREAM_CHUNK_BYTES);
    println!("ls-refs: {} bytes in {count} messages", out.len());
    assert!(count <= full + 3, "{} bytes in {count} messages", out.len());
    node.stop().await;
}
