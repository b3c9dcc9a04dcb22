//! Authentication is the default: a storage node refuses to start without a token
//! unless it is told `--no-auth`, so a forgotten token is a failed start, not an
//! open node.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn node_command(storage: &std::path::Path, metrics_port: u16) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gitcluster-storage"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .arg(format!("--metrics-listen=127.0.0.1:{metrics_port}"))
        .arg(format!("--storage=default={}", storage.display()))
        .env_remove("GITCLUSTER_STORAGES")
        .env_remove("GITCLUSTER_STORAGE_TOKEN")
        .env_remove("GITCLUSTER_STORAGE_TOKEN_FILE")
        .env_remove("GITCLUSTER_STORAGE_NO_AUTH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Runs the node and expects it to exit on its own; a node that starts instead is
/// killed after 30 s (a deadline for a hung test, not a timing goal).
async fn exit_of(mut cmd: tokio::process::Command) -> (Option<i32>, String) {
    let mut child = cmd.spawn().expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(status) => {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err).await;
            (status.expect("wait").code(), err)
        }
        Err(_) => {
            let _ = child.kill().await;
            (None, "the node kept running".into())
        }
    }
}

#[tokio::test]
async fn node_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = exit_of(node_command(&dir.path().join("s"), free_port())).await;
    assert_eq!(code, Some(64), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one-line reason: {stderr}");
    assert!(lines[0].contains("--no-auth"), "{stderr}");
}

#[tokio::test]
async fn a_token_and_no_auth_together_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = node_command(&dir.path().join("s"), free_port());
    cmd.arg("--no-auth")
        .env("GITCLUSTER_STORAGE_TOKEN", "s3cret");
    let (code, stderr) = exit_of(cmd).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[tokio::test]
async fn no_auth_starts_a_node_without_authentication() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut cmd = node_command(&dir.path().join("s"), port);
    cmd.arg("--no-auth");
    let mut child = cmd.spawn().expect("spawn");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            let _ = child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .await;
            panic!("node exited with {status}: {err}");
        }
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let _ = s
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.expect("kill our node");
}
