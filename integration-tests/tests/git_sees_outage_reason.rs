//! During an outage git users see why: the gateway answers git's requests with an
//! `ERR` pkt-line (or a side-band error message) that git prints as "remote error:
//! <reason>", instead of a bare "HTTP 503 … the remote end hung up". Other clients keep
//! the HTTP status.

#![allow(clippy::disallowed_methods)] // tests block their own thread on git

use gitcluster_integration_tests::{Cluster, eventually, git, http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_clone_with_the_primary_stopped_print_the_reason() {
    let mut cluster = Cluster::builder()
        .storages(1)
        .routers(1)
        .gateway()
        .start()
        .await;
    let work = cluster.dir().join("work");
    std::fs::create_dir_all(&work).expect("work tree");
    git::run(&work, &["init", "-q", "--initial-branch=main"]);
    std::fs::write(work.join("a.txt"), "a\n").expect("write");
    git::commit_all(&work, "first");
    let url = cluster.repo_url("outage.git");
    git::run(&work, &["push", "-q", &url, "main"]);

    cluster.storages[0].member.kill();
    std::fs::write(work.join("b.txt"), "b\n").expect("write");
    git::commit_all(&work, "second");
    let dir = cluster.dir().to_owned();
    let (push_stderr, clone_stderr) = eventually!("git prints the outage's reason", {
        let push = git::run_output(&work, &["push", &url, "main"]);
        let clone = git::run_output(&dir, &["clone", &url, "clone-during-outage"]);
        let push_err = String::from_utf8_lossy(&push.stderr).into_owned();
        let clone_err = String::from_utf8_lossy(&clone.stderr).into_owned();
        anyhow::ensure!(!push.status.success(), "push succeeded");
        anyhow::ensure!(!clone.status.success(), "clone succeeded");
        anyhow::ensure!(
            push_err.contains("remote error: ") && clone_err.contains("remote error: "),
            "push: {push_err}\nclone: {clone_err}"
        );
        Ok((push_err, clone_err))
    });
    println!("push: {push_stderr}\nclone: {clone_stderr}");
    for stderr in [&push_stderr, &clone_stderr] {
        assert!(!stderr.contains("HTTP 503"), "{stderr}");
    }

    // A client that is not git still gets the HTTP status.
    let path = url.trim_start_matches(cluster.gateway_url());
    let gateway = cluster
        .gateway_url()
        .trim_start_matches("http://")
        .parse()
        .expect("gateway address");
    let (status, _) = http_get(
        gateway,
        &format!("{path}/info/refs?service=git-receive-pack"),
    )
    .await
    .expect("get");
    assert!(status >= 500, "{status}");
    cluster.expect_error("gitaly-1");
}
