//! The gateway spoken to over raw HTTP/1.1, in front of the real storage node.
//!
//! Most scenarios use `gitcluster_integration_tests::Cluster`: a `gitcluster-storage`
//! process and a `gitcluster-gateway` process, real `git` behind them. A scenario that
//! needs a configuration the harness does not offer (an upstream where nothing listens,
//! a wrong upstream token) runs the gateway in-process with `support::Gateway`, pointed
//! at a real node. Effects are checked where they happen: on the node's disk, with git.
//!
//! Not repeated here because `integration-tests/tests` already covers them: a push cut
//! short by its Content-Length, to an existing repository and as a first push
//! (`bad_input.rs`), and a first push that creates the repository and keeps it
//! (`git_end_to_end.rs`).

#![allow(clippy::disallowed_methods)] // tests block their own thread on git

mod support;

use base64::Engine as _;
use gitcluster_integration_tests::{Cluster, eventually, git};
use support::{
    Gateway, assert_pack_with, create_repository, dead_upstream, gateway_addr, gateway_log, get,
    gzip, interrupted_post, on_disk, post, push_main, push_request, receive_packs,
    upload_pack_request, work_tree,
};

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
    let cluster = Cluster::builder()
        .storages(1)
        .gateway()
        .gateway_auth("s3cret")
        .start()
        .await;
    create_repository(&cluster, "p.git").await;
    let http = gateway_addr(&cluster);
    let st = cluster.storages[0].storage.clone();
    let info_refs = format!("/{st}/p.git/info/refs?service=git-upload-pack");
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
        let r = get(http, &info_refs, &extra).await;
        assert_eq!(r.status, 401, "{extra:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"gitcluster\"")
        );
        let r = post(
            http,
            &format!("/{st}/new.git/git-receive-pack"),
            &extra,
            b"0000".to_vec(),
        )
        .await;
        assert_eq!(r.status, 401, "{extra:?}");
    }
    // A refused push never reached the node: push-to-create did not create anything.
    assert!(!on_disk(&cluster, "new.git"));
    assert!(!gateway_log(&cluster).contains("created repository for push"));

    // Right credentials get through to the node and its real advertisement.
    let basic = format!("Authorization: Basic {}", b64("anyone:s3cret"));
    for extra in ["Authorization: Bearer s3cret", basic.as_str()] {
        let r = get(http, &info_refs, &[extra]).await;
        assert_eq!(r.status, 200, "{extra}: {}", r.text());
        assert!(
            r.text().starts_with("001e# service=git-upload-pack\n0000"),
            "{}",
            r.text()
        );
    }
    // The health check stays open.
    assert_eq!(get(http, "/healthz", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_unknown_services_and_wrong_methods_are_refused() {
    let cluster = Cluster::builder().storages(1).gateway().start().await;
    create_repository(&cluster, "p.git").await;
    let http = gateway_addr(&cluster);
    let st = cluster.storages[0].storage.clone();
    for (path, status, reason) in [
        (
            "/ST/../p.git/info/refs?service=git-upload-pack",
            400,
            "path traversal",
        ),
        (
            "/ST/a/%2e%2e/p.git/info/refs?service=git-upload-pack",
            400,
            "path traversal",
        ),
        (
            "/ST//p.git/info/refs?service=git-upload-pack",
            400,
            "empty path segment",
        ),
        (
            "/ST/info/refs?service=git-upload-pack",
            400,
            "empty repository path",
        ),
        (
            "//p.git/info/refs?service=git-upload-pack",
            400,
            "empty storage name",
        ),
        (
            "/ST/p%00.git/info/refs?service=git-upload-pack",
            400,
            "control characters",
        ),
        (
            "/ST/p.git/info/refs?service=git-upload-archive",
            400,
            "unsupported service",
        ),
        ("/ST/p.git/info/refs", 400, "missing service"),
        ("/ST/p.git/HEAD", 404, "not found"),
        ("/", 404, "not found"),
        ("/ST/p.git/git-upload-pack", 405, "method not allowed"),
        ("/ST/p.git/git-receive-pack", 405, "method not allowed"),
    ] {
        let path = path.replace("/ST/", &format!("/{st}/"));
        let r = get(http, &path, &[]).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(r.text().contains(reason), "{path}: {}", r.text());
        assert!(
            r.text().ends_with('\n') && r.text().lines().count() == 1,
            "{path}"
        );
    }
    let r = get(http, &format!("/{st}/p.git/git-upload-pack"), &[]).await;
    assert_eq!(r.header("allow"), Some("POST"));
    let r = post(
        http,
        &format!("/{st}/p.git/info/refs?service=git-upload-pack"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    let r = post(
        http,
        &format!("/{st}/../p.git/git-receive-pack"),
        &[],
        b"0000".to_vec(),
    )
    .await;
    assert_eq!(r.status, 400);
    // Nothing was created beside the storage, and the repository is still served.
    assert!(!cluster.storages[0].root.join("../p.git").exists());
    let r = get(
        http,
        &format!("/{st}/p.git/info/refs?service=git-upload-pack"),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_refs_streams_the_advertisement_and_forwards_git_protocol() {
    let cluster = Cluster::builder().storages(1).gateway().start().await;
    let (work, head) = work_tree(&cluster, "work");
    push_main(&cluster, &work, "p.git");
    let http = gateway_addr(&cluster);
    let st = cluster.storages[0].storage.clone();
    let upload = format!("/{st}/p.git/info/refs?service=git-upload-pack");

    // Protocol v0: the service pkt-line and a flush, then the refs.
    let r = get(http, &upload, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/x-git-upload-pack-advertisement")
    );
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    let text = r.text();
    assert!(
        text.starts_with("001e# service=git-upload-pack\n0000"),
        "{text}"
    );
    assert!(text.contains(&format!("{head} refs/heads/main")), "{text}");
    assert!(text.ends_with("0000"), "{text}");

    // Git-Protocol reaches git on the node: a v2 capability advertisement, no refs.
    let r = get(http, &upload, &["Git-Protocol: version=2"]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(text.starts_with("000eversion 2\n"), "{text}");
    assert!(text.contains("fetch"), "{text}");
    assert!(!text.contains("refs/heads/main"), "{text}");

    // Missing repository: 404 for fetches, an empty advertisement for pushes, and
    // advertising creates nothing.
    let r = get(
        http,
        &format!("/{st}/missing.git/info/refs?service=git-upload-pack"),
        &[],
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = get(
        http,
        &format!("/{st}/missing.git/info/refs?service=git-receive-pack"),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/x-git-receive-pack-advertisement")
    );
    let text = r.text();
    assert!(
        text.starts_with("001f# service=git-receive-pack\n0000"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} capabilities^{{}}", "0".repeat(40))),
        "{text}"
    );
    assert!(!on_disk(&cluster, "missing.git"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_pack_request_reaches_the_node_whole() {
    let cluster = Cluster::builder().storages(1).gateway().start().await;
    let (work, head) = work_tree(&cluster, "work");
    push_main(&cluster, &work, "p.git");
    let http = gateway_addr(&cluster);
    let st = cluster.storages[0].storage.clone();
    // About 3 MB of negotiation: many stream messages between gateway and node. Any
    // lost, reordered or truncated byte breaks git's pkt-line framing on the node.
    let body = upload_pack_request(&head, 60_000);
    assert!(body.len() > 3_000_000);

    let r = post(http, &format!("/{st}/p.git/git-upload-pack"), &[], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/x-git-upload-pack-result")
    );
    assert_pack_with(&cluster, "unpacked", &r.body, &head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_request_bodies_are_decompressed() {
    let cluster = Cluster::builder().storages(1).gateway().start().await;
    let (work, head) = work_tree(&cluster, "work");
    push_main(&cluster, &work, "p.git");
    let http = gateway_addr(&cluster);
    let st = cluster.storages[0].storage.clone();
    let body = upload_pack_request(&head, 2000);
    let compressed = gzip(&body).await;
    assert!(compressed.len() < body.len());

    let r = post(
        http,
        &format!("/{st}/p.git/git-upload-pack"),
        &["Content-Encoding: gzip"],
        compressed,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_pack_with(&cluster, "unpacked", &r.body, &head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_with_unterminated_chunked_body_changes_nothing() {
    let cluster = Cluster::builder().storages(1).gateway().start().await;
    let (work, old) = work_tree(&cluster, "work");
    push_main(&cluster, &work, "p.git");
    let repo = cluster.storages[0].root.join("p.git");
    let refs_before = git::refs(&repo);
    let (body, new) = push_request(&work, Some(&old));
    let before = receive_packs(&cluster).await.expect("gateway metrics");

    let path = format!("/{}/p.git/git-receive-pack", cluster.storages[0].storage);
    interrupted_post(gateway_addr(&cluster), &path, &body, true).await;

    eventually!("the gateway finished the aborted push", {
        let n = receive_packs(&cluster).await?;
        anyhow::ensure!(n > before, "{n} receive-pack requests counted");
        Ok(())
    });
    // Had the truncated body reached git as a complete one, the node would have
    // acted on it; instead nothing of it is visible.
    assert_eq!(git::refs(&repo), refs_before);
    assert!(
        !git::run_output(&repo, &["cat-file", "-e", &new])
            .status
            .success(),
        "objects of the aborted push are not in the repository"
    );
    git::run(&repo, &["fsck", "--full", "--strict"]);

    // Gateway and node keep serving: the same push done by git succeeds.
    push_main(&cluster, &work, "p.git");
    assert_eq!(git::run(&repo, &["rev-parse", "refs/heads/main"]), new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_first_push_removes_the_repository_it_created() {
    let cluster = Cluster::builder().storages(1).gateway().start().await;
    let path = format!("/{}/fail.git/git-receive-pack", cluster.storages[0].storage);
    // Not a pkt-line: the gateway refuses it as the client's mistake and aborts the call.
    let r = post(gateway_addr(&cluster), &path, &[], b"zzzz".to_vec()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("pkt-line"), "{}", r.text());
    assert_eq!(r.text().lines().count(), 1, "{}", r.text());

    eventually!("the created repository is removed", {
        anyhow::ensure!(!on_disk(&cluster, "fail.git"), "fail.git still on disk");
        let log = gateway_log(&cluster);
        anyhow::ensure!(
            log.contains("removed repository of an aborted first push"),
            "removal not logged yet"
        );
        Ok(())
    });
    assert!(gateway_log(&cluster).contains("created repository for push"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_chunked_first_push_removes_the_repository_it_created() {
    let cluster = Cluster::builder().storages(1).gateway().start().await;
    let (work, _) = work_tree(&cluster, "work");
    let (body, _) = push_request(&work, None);
    let path = format!("/{}/new.git/git-receive-pack", cluster.storages[0].storage);

    interrupted_post(gateway_addr(&cluster), &path, &body, true).await;

    eventually!("the created repository is removed", {
        anyhow::ensure!(!on_disk(&cluster, "new.git"), "new.git still on disk");
        let log = gateway_log(&cluster);
        anyhow::ensure!(
            log.contains("removed repository of an aborted first push"),
            "removal not logged yet"
        );
        Ok(())
    });
    assert!(gateway_log(&cluster).contains("created repository for push"));
    // The path is free for a real first push.
    push_main(&cluster, &work, "new.git");
    assert!(on_disk(&cluster, "new.git"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_push_to_existing_repository_never_removes_it() {
    let cluster = Cluster::builder().storages(1).gateway().start().await;
    // Created ahead of any push, so that no push of this test creates it.
    create_repository(&cluster, "existing.git").await;
    let (work, head) = work_tree(&cluster, "work");
    push_main(&cluster, &work, "existing.git");
    let repo = cluster.storages[0].root.join("existing.git");
    let refs_before = git::refs(&repo);
    let before = receive_packs(&cluster).await.expect("gateway metrics");

    let path = format!(
        "/{}/existing.git/git-receive-pack",
        cluster.storages[0].storage
    );
    let r = post(gateway_addr(&cluster), &path, &[], b"zzzz".to_vec()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    // And one that goes away half way.
    let (body, _) = push_request(&work, Some(&head));
    interrupted_post(gateway_addr(&cluster), &path, &body, false).await;

    eventually!("the gateway finished both pushes", {
        let n = receive_packs(&cluster).await?;
        anyhow::ensure!(n >= before + 2.0, "{n} receive-pack requests counted");
        Ok(())
    });
    assert!(on_disk(&cluster, "existing.git"));
    assert_eq!(git::refs(&repo), refs_before);
    git::run(&repo, &["fsck", "--full", "--strict"]);
    let log = gateway_log(&cluster);
    assert!(!log.contains("created repository for push"), "{log}");
    assert!(!log.contains("removed repository"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_push_to_create_a_missing_repository_is_404() {
    let cluster = Cluster::builder()
        .storages(1)
        .gateway()
        .no_push_to_create()
        .start()
        .await;
    let http = gateway_addr(&cluster);
    let st = cluster.storages[0].storage.clone();
    let r = get(
        http,
        &format!("/{st}/new.git/info/refs?service=git-receive-pack"),
        &[],
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = post(
        http,
        &format!("/{st}/new.git/git-receive-pack"),
        &[],
        b"0000".to_vec(),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.text(), "repository not found\n");
    assert!(!on_disk(&cluster, "new.git"));
    assert!(!gateway_log(&cluster).contains("created repository for push"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refusing_our_token_is_502() {
    // The gateway runs in-process (the harness always gives it the right token), so its
    // by-design ERROR ("upstream rejected the gateway's token") goes to the test output,
    // not to a member log the cluster checks; the node logs no ERROR for a wrong token.
    let cluster = Cluster::builder().storages(1).start().await;
    create_repository(&cluster, "p.git").await;
    let upstream = cluster.storages[0].address.clone();
    let st = cluster.storages[0].storage.clone();
    let info_refs = format!("/{st}/p.git/info/refs?service=git-upload-pack");

    for token in [None, Some("wrong".to_owned())] {
        let gw = Gateway::start(&upstream, |c| c.upstream_token = token.clone()).await;
        let r = get(gw.http, &info_refs, &[]).await;
        assert_eq!(r.status, 502, "{token:?}: {}", r.text());
        let r = post(
            gw.http,
            &format!("/{st}/new.git/git-receive-pack"),
            &[],
            b"0000".to_vec(),
        )
        .await;
        assert_eq!(r.status, 502, "{token:?}: {}", r.text());
        gw.stop().await;
    }
    assert!(!on_disk(&cluster, "new.git"));

    let gw = Gateway::start(&upstream, |c| {
        c.upstream_token = Some(cluster.token.clone())
    })
    .await;
    let r = get(gw.http, &info_refs, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    gw.stop().await;
}
