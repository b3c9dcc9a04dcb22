//! Replication cannot leave its scratch copy behind, and a replication source cannot
//! plant code the target then runs: cancelled copies are removed, old temp entries
//! are swept while the node runs, only an allow-list of config keys travels, and git
//! never runs hooks from a repository's own directory or config.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::{
    TestNode, ZERO_OID, commit, git, init_bare, push_body, replicate, start, start_with, update_ref,
};
use gitcluster_proto::v1;

const TOKEN: &str = "internal-token";

/// Polls `check` every 50 ms until it holds; panics with `what` after 60 s (a
/// deadline for a hung test, not a timing goal).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tmp_entries(node: &TestNode) -> Vec<String> {
    let tmp = node.root.join("+gitcluster").join("tmp");
    let mut names: Vec<String> = std::fs::read_dir(&tmp)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A TCP relay to `upstream` that passes its first connection through and holds
/// every later one open without forwarding a byte: the source looks alive to the
/// replicating node (GetRepositoryFiles answers) but its upload-pack never speaks.
async fn stalling_relay(upstream: std::net::SocketAddr) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind relay");
    let addr = listener.local_addr().expect("relay addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut client, _)) = listener.accept().await {
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            } else {
                held.push(client);
            }
        }
    });
    (format!("http://{addr}"), accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_replication_leaves_no_temporary_copy() {
    let source = start("gitaly-1", Some(TOKEN), false).await;
    let target = start("gitaly-2", Some(TOKEN), false).await;
    let rel = "group/stalled.git";
    source.create(rel).await;
    let c1 = commit(&source.path(rel), "one", &[]).await;
    update_ref(&source, rel, "refs/heads/main", "", &c1)
        .await
        .expect("main");
    let (relay, accepted) = stalling_relay(source.addr).await;

    let mut repos = target.repos().await;
    let request = v1::ReplicateRepositoryRequest {
        repository: Some(target.repo(rel)),
        source: Some(source.repo(rel)),
        source_address: relay,
    };
    let call = tokio::spawn(async move { repos.replicate_repository(request).await });
    // The copy is under way: its scratch repository exists and the fetch has
    // reached the source through the relay (its second connection), where it hangs.
    eventually("the replication builds its copy in tmp/", || {
        tmp_entries(&target)
            .iter()
            .any(|n| n.starts_with("replicate-"))
            && accepted.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(
        !call.is_finished(),
        "the stalled replication must still run"
    );

    // The caller gives up (the replicator's deadline, a lost connection): the
    // stream is reset and the node drops the call.
    call.abort();
    let _ = call.await;
    eventually("the cancelled replication's temp copy is removed", || {
        tmp_entries(&target).is_empty()
    })
    .await;
    assert!(!target.path(rel).exists(), "nothing appeared at the target");
    target.stop().await;
    source.stop().await;
}

/// Sets the modification time of `path` (a file or a directory) to `ago` in the past.
fn age(path: &Path, ago: Duration) {
    let when = SystemTime::now() - ago;
    std::fs::File::open(path)
        .expect("open for mtime")
        .set_modified(when)
        .expect("set mtime");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_entries_older_than_the_bound_are_swept_while_the_node_runs() {
    let node = start_with("gitaly-1", Some(TOKEN), false, |c| {
        c.temp_max_age = Duration::from_secs(3600);
        c.temp_sweep_interval = Duration::from_millis(100);
    })
    .await;
    // Touching the node makes sure it has opened its storages (start-up cleaning
    // done) before anything is planted.
    node.create("alive.git").await;
    let tmp = node.root.join("+gitcluster").join("tmp");
    let old = tmp.join("replicate-old");
    std::fs::create_dir_all(old.join("objects/pack")).expect("plant old dir");
    std::fs::write(old.join("objects/pack/big.pack"), b"PACK").expect("plant file");
    let old_file = tmp.join("hooks-old.tmp");
    std::fs::write(&old_file, b"x").expect("plant old file");
    let fresh = tmp.join("replicate-fresh");
    std::fs::create_dir_all(&fresh).expect("plant fresh dir");
    age(
        &old.join("objects/pack/big.pack"),
        Duration::from_secs(2 * 3600),
    );
    age(&old.join("objects/pack"), Duration::from_secs(2 * 3600));
    age(&old.join("objects"), Duration::from_secs(2 * 3600));
    age(&old, Duration::from_secs(2 * 3600));
    age(&old_file, Duration::from_secs(2 * 3600));

    eventually("entries older than an hour are swept", || {
        !old.exists() && !old_file.exists()
    })
    .await;
    assert!(fresh.exists(), "a young entry is kept");
    assert!(node.path("alive.git").join("HEAD").exists());
    node.stop().await;
}

fn write_exec(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A script that appends its name to `marker` and succeeds.
fn marker_script(marker: &Path) -> String {
    format!("#!/bin/sh\necho \"$0\" >> '{}'\nexit 0\n", marker.display())
}

const HOOKS: &[&str] = &[
    "pre-receive",
    "update",
    "post-receive",
    "post-update",
    "reference-transaction",
    "push-to-checkout",
    "proc-receive",
    "pre-auto-gc",
];

/// Pushes a fresh commit from a new client repository at `client` to
/// `refs/heads/pushed` of `rel` through the node's PostReceivePack, and asserts that
/// git reported the update ok.
async fn push_new_branch(node: &TestNode, rel: &str, client: &Path) {
    init_bare(client).await;
    let pushed = commit(client, "pushed", &[]).await;
    let body = push_body(client, ZERO_OID, &pushed, "refs/heads/pushed").await;
    let report = common::receive_pack(node, rel, body)
        .await
        .expect("post receive-pack, push stream ends ok")
        .report;
    assert!(report.contains("ok refs/heads/pushed"), "{report}");
}

/// Reads the whole upload-pack advertisement of `rel`.
async fn fetch_advertisement(node: &TestNode, rel: &str) -> String {
    let mut stream = node
        .smarthttp()
        .await
        .info_refs_upload_pack(v1::InfoRefsRequest {
            repository: Some(node.repo(rel)),
            git_protocol: String::new(),
            ..Default::default()
        })
        .await
        .expect("info/refs")
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.expect("advertisement") {
        out.extend_from_slice(&m.data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every `key=value` of a config file as git reads it (keys lowercased by git),
/// without following includes.
async fn config_entries(repo: &Path) -> Vec<String> {
    let out = tokio::process::Command::new("git")
        .args(["config", "--no-includes", "--file"])
        .arg(repo.join("config"))
        .arg("--list")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .await
        .expect("git config");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_source_cannot_plant_hooks_or_dangerous_config() {
    let source = start("gitaly-1", Some(TOKEN), false).await;
    let target = start("gitaly-2", Some(TOKEN), false).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let marker = scratch.path().join("marker");
    let rel = "group/evil.git";
    source.create(rel).await;
    let dir = source.path(rel);
    let c1 = commit(&dir, "one", &[]).await;
    update_ref(&source, rel, "refs/heads/main", "", &c1)
        .await
        .expect("main");

    // The source's config points git at code the attacker controls, directly and
    // through an include.
    let evil_hooks = scratch.path().join("evil-hooks");
    for hook in HOOKS {
        write_exec(&evil_hooks.join(hook), &marker_script(&marker));
    }
    let script = scratch.path().join("evil.sh");
    write_exec(&script, &marker_script(&marker));
    let include = scratch.path().join("evil.inc");
    std::fs::write(
        &include,
        format!("[core]\n\thooksPath = {}\n", evil_hooks.display()),
    )
    .expect("include file");
    let set = |key: &'static str, value: PathBuf| {
        let dir = dir.clone();
        async move {
            git(&dir, &["config", key, &value.to_string_lossy()], b"").await;
        }
    };
    set("core.hooksPath", evil_hooks.clone()).await;
    set("core.fsmonitor", script.clone()).await;
    set("core.sshCommand", script.clone()).await;
    set("uploadpack.packObjectsHook", script.clone()).await;
    set("core.alternateRefsCommand", script.clone()).await;
    set("include.path", include.clone()).await;
    git(&dir, &["config", "gitlab.fullpath", "group/evil"], b"").await;
    git(&dir, &["config", "gitcluster.marker", "from-source"], b"").await;

    replicate(&target, &source, rel).await.expect("replicate");
    let copy = target.path(rel);
    assert_eq!(git(&copy, &["rev-parse", "refs/heads/main"], b"").await, c1);

    // Every hook-running operation on the target: a ref update, a push, a fetch
    // advertisement.
    let c2 = commit(&copy, "two", &[&c1]).await;
    update_ref(&target, rel, "refs/heads/updated", "", &c2)
        .await
        .expect("update ref on target");
    push_new_branch(&target, rel, &scratch.path().join("client.git")).await;
    assert!(
        fetch_advertisement(&target, rel)
            .await
            .contains("refs/heads/pushed")
    );

    assert!(
        !marker.exists(),
        "source-planted code ran on the target: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
    let entries = config_entries(&copy).await;
    for key in [
        "core.hookspath",
        "core.fsmonitor",
        "core.sshcommand",
        "uploadpack.packobjectshook",
        "core.alternaterefscommand",
        "include.path",
    ] {
        assert!(
            !entries.iter().any(|e| e.starts_with(&format!("{key}="))),
            "{key} reached the target config: {entries:?}"
        );
    }
    assert!(
        entries.contains(&"gitcluster.marker=from-source".to_owned())
            && entries.contains(&"gitlab.fullpath=group/evil".to_owned()),
        "allowed keys are copied: {entries:?}"
    );
    assert!(
        entries.contains(&"core.bare=true".to_owned()),
        "{entries:?}"
    );
    target.stop().await;
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_inside_a_repository_never_run() {
    let node = start("gitaly-1", Some(TOKEN), false).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let marker = scratch.path().join("marker");
    let rel = "hooked.git";
    node.create(rel).await;
    let dir = node.path(rel);
    // git's default hooks directory: whatever lands in it (by replication, a
    // restore, an operator) must not run under the node's identity.
    for hook in HOOKS {
        write_exec(&dir.join("hooks").join(hook), &marker_script(&marker));
    }
    let c1 = commit(&dir, "one", &[]).await;
    update_ref(&node, rel, "refs/heads/main", "", &c1)
        .await
        .expect("update ref");
    push_new_branch(&node, rel, &scratch.path().join("client.git")).await;
    assert!(
        !marker.exists(),
        "a hook in the repository ran: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
    node.stop().await;
}
