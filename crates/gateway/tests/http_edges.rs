//! HTTP edges of the gateway (defect 11) and slow or idle clients (defect 6): each
//! costs only its own request or connection, and a client's malformed protocol is a
//! 4xx with one line of reason, never a 5xx or a hang.
//!
//! The gateway runs in-process (so each scenario can set short bounds), in front of a
//! real storage node and real git.

#![allow(clippy::disallowed_methods)] // tests block their own thread on git

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gitcluster_gateway::Config;
use gitcluster_integration_tests::{Cluster, eventually, git};
use support::{Gateway, create_repository, parse_reply, pkt_line, work_tree};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// An in-process gateway in front of storage node 1, with `tweak` applied.
async fn gateway(cluster: &Cluster, tweak: impl FnOnce(&mut Config)) -> Gateway {
    let token = cluster.token.clone();
    Gateway::start(&cluster.storages[0].address, move |c| {
        c.upstream_token = Some(token);
        tweak(c);
    })
    .await
}

/// Reads until the server closes the connection (or resets it); returns what came.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.expect("the gateway closes the connection");
    raw
}

/// Cheap incompressible bytes (xorshift), not pkt-line data.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http09_request_line_and_slow_headers_are_closed_after_the_header_bound() {
    let cluster = Cluster::builder().storages(1).start().await;
    let gw = gateway(&cluster, |c| c.header_read_timeout = Duration::from_secs(1)).await;

    let mut s = TcpStream::connect(gw.http).await.expect("connect");
    s.write_all(b"GET /\r\n").await.expect("write");
    read_until_closed(&mut s).await;

    // 200 clients each sending an endless header one byte at a time: every one is
    // closed, long before it could have finished anything.
    let slow: Vec<_> = (0..200)
        .map(|_| tokio::spawn(slow_header_client(gw.http)))
        .collect();
    for client in slow {
        let sent = client.await.expect("slow client");
        assert!(
            sent < 200,
            "a slow-header connection stayed open for {sent} bytes"
        );
    }
    gw.stop().await;
}

/// Sends `GET / HTTP/1.1` and then header bytes every 100 ms, never finishing; returns
/// how many bytes it sent before the gateway closed the connection.
async fn slow_header_client(addr: SocketAddr) -> usize {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let mut sent = 0;
    let head = b"GET /healthz HTTP/1.1\r\nX-Slow: ";
    let mut closed = Box::pin(async move {
        let mut buf = [0u8; 256];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    loop {
        let byte = head.get(sent).copied().unwrap_or(b'a');
        tokio::select! {
            () = &mut closed => return sent,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if wr.write_all(&[byte]).await.is_err() {
            return sent;
        }
        sent += 1;
        if sent >= 200 {
            return sent;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_pkt_lines_is_400_with_a_reason() {
    let cluster = Cluster::builder().storages(1).start().await;
    create_repository(&cluster, "p.git").await;
    let gw = gateway(&cluster, |_| {}).await;
    let st = cluster.storages[0].storage.clone();
    for (service, len) in [
        ("git-upload-pack", 100 << 20),
        ("git-receive-pack", 1 << 20),
    ] {
        let reply = support::post(
            gw.http,
            &format!("/{st}/p.git/{service}"),
            &["User-Agent: curl/8"],
            noise(len),
        )
        .await;
        assert_eq!(reply.status, 400, "{service}: {}", reply.text());
        assert_eq!(reply.text().lines().count(), 1, "{}", reply.text());
        assert!(reply.text().contains("pkt-line"), "{}", reply.text());
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_chunked_is_400_and_the_connection_closed() {
    let cluster = Cluster::builder().storages(1).start().await;
    create_repository(&cluster, "p.git").await;
    let gw = gateway(&cluster, |_| {}).await;
    let st = &cluster.storages[0].storage;
    let body = [pkt_line("command=ls-refs\n"), b"0000".to_vec()].concat();
    let mut s = TcpStream::connect(gw.http).await.expect("connect");
    let head = format!(
        "POST /{st}/p.git/git-upload-pack HTTP/1.1\r\nHost: t\r\n\
         Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        body.len() + 20,
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(&body).await.expect("write body");
    s.write_all(b"\r\n0\r\n\r\n").await.expect("write end");
    // Keep-alive was not refused by the client: only the gateway can end this.
    let reply = parse_reply(&read_until_closed(&mut s).await);
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(reply.text().lines().count(), 1, "{}", reply.text());
    gw.stop().await;
}

/// Processes running `git receive-pack` on a repository under `root`.
fn receive_packs_under(root: &std::path::Path) -> usize {
    let root = root.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("receive-pack") && c.contains(&root))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_body_never_comes_is_closed_after_the_idle_bound_and_holds_no_git() {
    let cluster = Cluster::builder().storages(1).start().await;
    let (work, _) = work_tree(&cluster, "work");
    create_repository(&cluster, "p.git").await;
    let gw = gateway(&cluster, |c| c.body_idle_timeout = Duration::from_secs(2)).await;
    let st = cluster.storages[0].storage.clone();
    let url = format!("http://{}/{st}/p.git", gw.http);
    git::run(&work, &["push", "-q", &url, "main"]);
    let repo = cluster.storages[0].root.join("p.git");
    let refs = git::refs(&repo);

    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.http).await.expect("connect");
        let head = format!(
            "POST /{st}/p.git/git-receive-pack HTTP/1.1\r\nHost: t\r\n\
             Content-Type: application/x-git-receive-pack-request\r\nContent-Length: 1000\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("write head");
        idle.push(s);
    }
    for mut s in idle {
        let raw = read_until_closed(&mut s).await;
        let reply = parse_reply(&raw);
        assert_eq!(reply.status, 408, "{}", reply.text());
    }
    let root = cluster.storages[0].root.clone();
    eventually!("no git process is left for the idle requests", {
        let n = receive_packs_under(&root);
        anyhow::ensure!(n == 0, "{n} receive-pack processes");
        Ok(())
    });
    assert_eq!(git::refs(&repo), refs);
    git::run(&work, &["push", "-q", &url, "main:other"]);
    gw.stop().await;
}

/// Sends a valid upload-pack request one byte every 100 ms in chunked encoding until
/// `stop` fires.
async fn slow_body_client(
    addr: SocketAddr,
    path: String,
    stop: tokio_util::sync::CancellationToken,
) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let line = pkt_line("command=ls-refs\n");
    let body: Vec<u8> = line.iter().copied().cycle().take(100_000).collect();
    for b in body {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let chunk = [b"1\r\n".as_slice(), &[b], b"\r\n"].concat();
        if s.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

/// With 200 clients sending `slow_path` on `gw` a body byte every 100 ms, three
/// rounds of an ordinary push of `work` to `url` and a clone of it (into `dir`)
/// succeed; the slow clients are stopped afterwards and must end cleanly.
async fn push_and_clone_beside_slow_bodies(
    gw: &Gateway,
    slow_path: &str,
    work: PathBuf,
    url: String,
    dir: PathBuf,
) {
    let stop = tokio_util::sync::CancellationToken::new();
    let slow: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(slow_body_client(
                gw.http,
                slow_path.to_owned(),
                stop.clone(),
            ))
        })
        .collect();
    // Let the slow bodies get going before the ordinary traffic.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pushed = tokio::task::spawn_blocking(move || {
        for i in 0..3 {
            git::write_random_file(&work.join(format!("f{i}.bin")), 256 * 1024);
            git::commit_all(&work, &format!("c{i}"));
            git::run(&work, &["push", "-q", &url, "main"]);
            let clone = dir.join(format!("clone{i}"));
            git::run(&dir, &["clone", "-q", &url, &clone.to_string_lossy()]);
            assert_eq!(
                git::run(&clone, &["rev-parse", "HEAD"]),
                git::run(&work, &["rev-parse", "HEAD"])
            );
        }
    });
    pushed.await.expect("ordinary pushes and clones succeed");
    stop.cancel();
    for client in slow {
        client.await.expect("slow client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_slow_bodies_do_not_break_an_ordinary_push_and_clone() {
    let cluster = Cluster::builder().storages(1).start().await;
    let (work, _) = work_tree(&cluster, "work");
    create_repository(&cluster, "slow.git").await;
    let gw = gateway(&cluster, |_| {}).await;
    let st = cluster.storages[0].storage.clone();
    let url = format!("http://{}/{st}/p.git", gw.http);
    push_and_clone_beside_slow_bodies(
        &gw,
        &format!("/{st}/slow.git/git-upload-pack"),
        work,
        url,
        cluster.dir().to_owned(),
    )
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_slow_bodies_through_the_router_do_not_break_an_ordinary_push_and_clone() {
    let cluster = Cluster::builder().storages(1).routers(1).start().await;
    let (work, _) = work_tree(&cluster, "work");
    let token = cluster.external_token.clone();
    let gw = Gateway::start(&cluster.routers[0].address, move |c| {
        c.upstream_token = Some(token);
    })
    .await;
    let url = format!("http://{}/default/p.git", gw.http);
    git::run(&work, &["push", "-q", &url, "main"]);
    push_and_clone_beside_slow_bodies(
        &gw,
        "/default/p.git/git-upload-pack",
        work,
        url,
        cluster.dir().to_owned(),
    )
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_gets_its_errors_as_err_packets_and_other_clients_get_the_status() {
    let gw = Gateway::start(&support::dead_upstream().await, |_| {}).await;
    let git_ua = "User-Agent: git/2.43.0";
    let r = support::get(
        gw.http,
        "/default/p.git/info/refs?service=git-upload-pack",
        &[git_ua],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/x-git-upload-pack-advertisement")
    );
    assert_eq!(r.header("x-gitcluster-status"), Some("503"));
    assert!(r.text()[4..].starts_with("ERR "), "{}", r.text());
    assert_eq!(
        usize::from_str_radix(&r.text()[..4], 16).expect("pkt-line length"),
        r.body.len()
    );
    for service in ["git-upload-pack", "git-receive-pack"] {
        let body = [
            pkt_line("want 0000000000000000000000000000000000000001\n"),
            b"0000".to_vec(),
        ]
        .concat();
        let path = format!("/default/p.git/{service}");
        let r = support::post(gw.http, &path, &[git_ua], body.clone()).await;
        assert_eq!(r.status, 200, "{service}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some(format!("application/x-{service}-result").as_str())
        );
        assert!(r.text()[4..].starts_with("ERR "), "{service}: {}", r.text());
        let r = support::post(gw.http, &path, &["User-Agent: curl/8.5"], body).await;
        assert_eq!(r.status, 503, "{service}: {}", r.text());
    }
    // 401 and 404 stay statuses for git: it prompts for credentials / says "not found".
    let r = support::get(gw.http, "/nope", &[git_ua]).await;
    assert_eq!(r.status, 404);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_tiny_chunks_goes_upstream_in_few_messages() {
    let cluster = Cluster::builder().storages(1).start().await;
    let (work, head) = work_tree(&cluster, "work");
    create_repository(&cluster, "p.git").await;
    let gw = gateway(&cluster, |_| {}).await;
    let st = cluster.storages[0].storage.clone();
    git::run(
        &work,
        &[
            "push",
            "-q",
            &format!("http://{}/{st}/p.git", gw.http),
            "main",
        ],
    );
    let messages = |text: &str| {
        gitcluster_integration_tests::metric_sum(text, gitcluster_gateway::MESSAGES_METRIC, &[])
    };
    let before = messages(&support::get(gw.metrics, "/metrics", &[]).await.text());

    // 2000 haves (about 100 KB) cut into 7-byte HTTP chunks, all written at once.
    let mut body = pkt_line(&format!("want {head}\n"));
    body.extend_from_slice(b"0000");
    for i in 0..2000u32 {
        body.extend(pkt_line(&format!("have {:040x}\n", i + 1)));
    }
    body.extend(pkt_line("done\n"));
    let mut wire = Vec::new();
    for chunk in body.chunks(7) {
        wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let head_lines =
        format!("POST /{st}/p.git/git-upload-pack HTTP/1.1\r\nTransfer-Encoding: chunked");
    let reply = support::send(gw.http, &head_lines, wire).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let sent = messages(&support::get(gw.metrics, "/metrics", &[]).await.text()) - before;
    // Full 64 KiB messages, the flush after the wants, the end: a handful, where one
    // message per HTTP chunk would be about 15 000.
    assert!(
        sent <= 50.0,
        "{sent} upstream messages for {} body bytes",
        body.len()
    );
    gw.stop().await;
}
