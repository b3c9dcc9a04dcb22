//! The gateway in-process, spoken to over raw HTTP/1.1.
//!
//! Tests against a dead upstream need nothing else. Tests about streaming, aborts and
//! push-to-create use `support::recording_upstream`, a small `gitcluster.v1` server that
//! records what reaches it (the real storage node is written in parallel; the lead's
//! end-to-end tests run real git through gateway and storage node).

mod support;

use std::time::Duration;

use base64::Engine as _;
use support::{Event, Gateway, dead_upstream, fnv, get, post, recording_upstream};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

const INFO_REFS_UPLOAD: &str = "/default/p.git/info/refs?service=git-upload-pack";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_answers_503_and_the_gateway_keeps_serving() {
    let gw = Gateway::start(&dead_upstream().await, |_| {}).await;
    for _ in 0..2 {
        let r = get(gw.http, INFO_REFS_UPLOAD, &[]).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(
            r.body.iter().filter(|&&b| b == b'\n').count(),
            1,
            "one line"
        );
        let r = post(
            gw.http,
            "/default/p.git/git-upload-pack",
            &[],
            b"0000".to_vec(),
        )
        .await;
        assert_eq!(r.status, 503, "{}", r.text());
        let r = post(
            gw.http,
            "/default/p.git/git-receive-pack",
            &[],
            b"0000".to_vec(),
        )
        .await;
        assert_eq!(r.status, 503, "{}", r.text());
    }
    assert_eq!(get(gw.metrics, "/healthz", &[]).await.status, 200);
    assert_eq!(get(gw.http, "/healthz", &[]).await.status, 200);
    let metrics = get(gw.metrics, "/metrics", &[]).await.text();
    assert!(
        metrics.contains("gitcluster_gateway_requests_total"),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_credentials_answer_401_with_a_basic_challenge() {
    let gw = Gateway::start(&dead_upstream().await, |c| {
        c.auth_token = Some("s3cret".into())
    })
    .await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for extra in [
        String::new(),
        "Authorization: Bearer wrong".to_owned(),
        format!("Authorization: Basic {}", b64("git:wrong")),
        "Authorization: Basic %%%".to_owned(),
    ] {
        let extra: Vec<&str> = if extra.is_empty() {
            vec![]
        } else {
            vec![extra.as_str()]
        };
        let r = get(gw.http, INFO_REFS_UPLOAD, &extra).await;
        assert_eq!(r.status, 401, "{extra:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"gitcluster\"")
        );
        let r = post(
            gw.http,
            "/default/p.git/git-receive-pack",
            &extra,
            b"0000".to_vec(),
        )
        .await;
        assert_eq!(r.status, 401, "{extra:?}");
    }
    // Right credentials get past auth (and then meet the dead upstream).
    let basic = format!("Authorization: Basic {}", b64("anyone:s3cret"));
    for extra in ["Authorization: Bearer s3cret", basic.as_str()] {
        assert_eq!(
            get(gw.http, INFO_REFS_UPLOAD, &[extra]).await.status,
            503,
            "{extra}"
        );
    }
    // The health check stays open.
    assert_eq!(get(gw.http, "/healthz", &[]).await.status, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_unknown_services_and_wrong_methods_are_refused() {
    let gw = Gateway::start(&dead_upstream().await, |_| {}).await;
    for (path, status, reason) in [
        (
            "/default/../p.git/info/refs?service=git-upload-pack",
            400,
            "path traversal",
        ),
        (
            "/default/a/%2e%2e/p.git/info/refs?service=git-upload-pack",
            400,
            "path traversal",
        ),
        (
            "/default//p.git/info/refs?service=git-upload-pack",
            400,
            "empty path segment",
        ),
        (
            "/default/info/refs?service=git-upload-pack",
            400,
            "empty repository path",
        ),
        (
            "//p.git/info/refs?service=git-upload-pack",
            400,
            "empty storage name",
        ),
        (
            "/default/p%00.git/info/refs?service=git-upload-pack",
            400,
            "control characters",
        ),
        (
            "/default/p.git/info/refs?service=git-upload-archive",
            400,
            "unsupported service",
        ),
        ("/default/p.git/info/refs", 400, "missing service"),
        ("/default/p.git/HEAD", 404, "not found"),
        ("/", 404, "not found"),
        ("/default/p.git/git-upload-pack", 405, "method not allowed"),
        ("/default/p.git/git-receive-pack", 405, "method not allowed"),
    ] {
        let r = get(gw.http, path, &[]).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(r.text().contains(reason), "{path}: {}", r.text());
        assert!(
            r.text().ends_with('\n') && r.text().lines().count() == 1,
            "{path}"
        );
    }
    let r = get(gw.http, "/default/p.git/git-upload-pack", &[]).await;
    assert_eq!(r.header("allow"), Some("POST"));
    let r = post(
        gw.http,
        "/default/p.git/info/refs?service=git-upload-pack",
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    let r = post(
        gw.http,
        "/default/../p.git/git-receive-pack",
        &[],
        b"0000".to_vec(),
    )
    .await;
    assert_eq!(r.status, 400);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_refs_streams_the_advertisement_and_forwards_git_protocol() {
    let (upstream, rec) = recording_upstream(None).await;
    rec.add_repository("default/p.git");
    let gw = Gateway::start(&upstream, |_| {}).await;

    let r = get(gw.http, INFO_REFS_UPLOAD, &["Git-Protocol: version=2"]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/x-git-upload-pack-advertisement")
    );
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(
        r.text(),
        "001e# service=git-upload-pack\n0000protocol=version=2"
    );

    // Missing repository: 404 for fetches, an empty advertisement for pushes.
    let r = get(
        gw.http,
        "/default/missing.git/info/refs?service=git-upload-pack",
        &[],
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = get(
        gw.http,
        "/default/missing.git/info/refs?service=git-receive-pack",
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/x-git-receive-pack-advertisement")
    );
    rec.wait_for("receive-pack advertisement", |e| {
        matches!(
            e,
            Event::InfoRefs {
                rpc: "InfoRefsReceivePack",
                advertise_empty_if_missing: true,
                ..
            }
        )
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_pack_body_reaches_upstream_whole_in_bounded_chunks() {
    let (upstream, rec) = recording_upstream(None).await;
    rec.add_repository("default/p.git");
    let gw = Gateway::start(&upstream, |_| {}).await;
    let body: Vec<u8> = (0..3_000_003u32).map(|i| (i * 7 % 251) as u8).collect();

    let r = post(
        gw.http,
        "/default/p.git/git-upload-pack",
        &["Git-Protocol: version=2"],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/x-git-upload-pack-result")
    );
    assert_eq!(
        r.text(),
        format!("len={} fnv={:x}\n", body.len(), fnv(&body))
    );

    let started = rec
        .wait_for("start", |e| matches!(e, Event::Started { .. }))
        .await;
    assert_eq!(
        started,
        Event::Started {
            rpc: "PostUploadPack",
            repo: "default/p.git".into(),
            git_protocol: "version=2".into(),
            first_data_len: 0,
        }
    );
    let Event::Finished {
        clean,
        max_message_data,
        bytes,
        ..
    } = rec
        .wait_for("finish", |e| matches!(e, Event::Finished { .. }))
        .await
    else {
        unreachable!()
    };
    assert!(clean);
    assert_eq!(bytes, body.len());
    assert!(
        max_message_data <= gitcluster_proto::STREAM_CHUNK_BYTES,
        "{max_message_data}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_request_bodies_are_decompressed() {
    let (upstream, rec) = recording_upstream(None).await;
    rec.add_repository("default/p.git");
    let gw = Gateway::start(&upstream, |_| {}).await;
    let body = b"0032want 0123456789012345678901234567890123456789\n".repeat(2000);
    let compressed = support::gzip(&body).await;
    assert!(compressed.len() < body.len());

    let r = post(
        gw.http,
        "/default/p.git/git-upload-pack",
        &["Content-Encoding: gzip"],
        compressed,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        format!("len={} fnv={:x}\n", body.len(), fnv(&body))
    );
    gw.stop().await;
}

/// Opens a push whose body is cut short, waits until the upstream call is running,
/// then drops the connection.
async fn interrupted_push(gw: &Gateway, rec: &support::Recorder, path: &str, chunked: bool) {
    let mut s = TcpStream::connect(gw.http).await.expect("connect");
    let framing = if chunked {
        "Transfer-Encoding: chunked"
    } else {
        "Content-Length: 1000000"
    };
    let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write head");
    let part = vec![b'x'; 200_000];
    if chunked {
        s.write_all(format!("{:x}\r\n", part.len()).as_bytes())
            .await
            .expect("write");
        s.write_all(&part).await.expect("write");
        s.write_all(b"\r\n1000\r\nonly a bit of the next chunk")
            .await
            .expect("write");
    } else {
        s.write_all(&part).await.expect("write");
    }
    s.flush().await.expect("flush");
    rec.wait_for("the push to start", |e| matches!(e, Event::Started { .. }))
        .await;
    // Give the gateway a moment to forward what it has, then vanish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
}

async fn assert_aborted(rec: &support::Recorder) {
    let finished = rec
        .wait_for("the push to end", |e| matches!(e, Event::Finished { .. }))
        .await;
    let Event::Finished { clean, bytes, .. } = finished.clone() else {
        unreachable!()
    };
    assert!(
        !clean,
        "truncated body must reset the upstream stream, not end it: {finished:?}"
    );
    assert!(bytes < 1_000_000, "{finished:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_cut_short_by_content_length_resets_the_upstream_call() {
    let (upstream, rec) = recording_upstream(None).await;
    rec.add_repository("default/p.git");
    let gw = Gateway::start(&upstream, |_| {}).await;
    interrupted_push(&gw, &rec, "/default/p.git/git-receive-pack", false).await;
    assert_aborted(&rec).await;
    // The gateway still serves.
    let r = get(
        gw.http,
        "/default/p.git/info/refs?service=git-receive-pack",
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_with_unterminated_chunked_body_resets_the_upstream_call() {
    let (upstream, rec) = recording_upstream(None).await;
    rec.add_repository("default/p.git");
    let gw = Gateway::start(&upstream, |_| {}).await;
    interrupted_push(&gw, &rec, "/default/p.git/git-receive-pack", true).await;
    assert_aborted(&rec).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_push_creates_the_repository_and_keeps_it() {
    let (upstream, rec) = recording_upstream(None).await;
    let gw = Gateway::start(&upstream, |_| {}).await;
    let r = post(
        gw.http,
        "/default/new.git/git-receive-pack",
        &[],
        b"0000PACK".to_vec(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/x-git-receive-pack-result")
    );
    assert!(
        rec.events()
            .contains(&Event::Created("default/new.git".into()))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !rec.events()
            .contains(&Event::Removed("default/new.git".into()))
    );
    assert!(rec.exists("default/new.git"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_first_push_removes_the_repository_it_created() {
    let (upstream, rec) = recording_upstream(None).await;
    let gw = Gateway::start(&upstream, |_| {}).await;
    let r = post(
        gw.http,
        "/default/fail.git/git-receive-pack",
        &[],
        b"0000PACK".to_vec(),
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.text(), "pre-receive hook declined\n");
    rec.wait_for("removal", |e| {
        *e == Event::Removed("default/fail.git".into())
    })
    .await;
    assert!(
        rec.events()
            .contains(&Event::Created("default/fail.git".into()))
    );
    assert!(!rec.exists("default/fail.git"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_first_push_removes_the_repository_it_created() {
    let (upstream, rec) = recording_upstream(None).await;
    let gw = Gateway::start(&upstream, |_| {}).await;
    interrupted_push(&gw, &rec, "/default/new.git/git-receive-pack", false).await;
    assert_aborted(&rec).await;
    rec.wait_for("removal", |e| {
        *e == Event::Removed("default/new.git".into())
    })
    .await;
    assert!(!rec.exists("default/new.git"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_existing_repository_never_removes_it() {
    let (upstream, rec) = recording_upstream(None).await;
    rec.add_repository("default/fail-existing.git");
    let gw = Gateway::start(&upstream, |_| {}).await;
    let r = post(
        gw.http,
        "/default/fail-existing.git/git-receive-pack",
        &[],
        b"0000".to_vec(),
    )
    .await;
    assert_eq!(r.status, 500);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !rec.events()
            .iter()
            .any(|e| matches!(e, Event::Created(_) | Event::Removed(_))),
        "{:?}",
        rec.events()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_push_to_create_a_missing_repository_is_404() {
    let (upstream, rec) = recording_upstream(None).await;
    let gw = Gateway::start(&upstream, |c| c.push_to_create = false).await;
    let r = get(
        gw.http,
        "/default/new.git/info/refs?service=git-receive-pack",
        &[],
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = post(
        gw.http,
        "/default/new.git/git-receive-pack",
        &[],
        b"0000".to_vec(),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.text(), "repository not found\n");
    assert!(!rec.events().iter().any(|e| matches!(e, Event::Created(_))));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refusing_our_token_is_502() {
    let (upstream, rec) = recording_upstream(Some("right")).await;
    rec.add_repository("default/p.git");
    let gw = Gateway::start(&upstream, |c| c.upstream_token = Some("wrong".into())).await;
    assert_eq!(get(gw.http, INFO_REFS_UPLOAD, &[]).await.status, 502);
    let r = post(
        gw.http,
        "/default/p.git/git-receive-pack",
        &[],
        b"0000".to_vec(),
    )
    .await;
    assert_eq!(r.status, 502);
    gw.stop().await;

    let gw = Gateway::start(&upstream, |c| c.upstream_token = Some("right".into())).await;
    assert_eq!(get(gw.http, INFO_REFS_UPLOAD, &[]).await.status, 200);
    gw.stop().await;
}
