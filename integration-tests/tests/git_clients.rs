//! Git clients other than `git` through the gateway and a router: dulwich (pure
//! Python) and libgit2 (pygit2) each push (the first push creates the repository),
//! clone, push again, fetch and shallow-clone, driven by
//! `integration-tests/python/git_clients.py`. Both close the connection as soon as
//! they have read the push result; each repository must survive its first push.
//!
//! The clients live in the virtualenv `deploy/local/ensure-pyclients.sh` prepares
//! (`make test` and `.ci/run` run it); `GITCLUSTER_PYCLIENTS_PYTHON` overrides it.

#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use gitcluster_integration_tests::{Cluster, eventually, git};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let path = std::env::var_os("GITCLUSTER_PYCLIENTS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/pyclients-venv/bin/python"));
    assert!(
        path.exists(),
        "{} is missing: run deploy/local/ensure-pyclients.sh (make test does)",
        path.display()
    );
    path
}

/// The commit id the script's deterministic history ends at, with both clients.
const FINAL_MAIN: &str = "619242f796dfc1927b231fa658d4f0045fa85181";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dulwich_and_libgit2_push_clone_fetch_and_shallow_clone_through_the_cluster() {
    let cluster = Cluster::builder()
        .storages(2)
        .routers(1)
        .replicators(1)
        .gateway()
        .start()
        .await;
    let script = workspace().join("integration-tests/python/git_clients.py");
    for client in ["dulwich", "pygit2"] {
        let path = format!("py/{client}.git");
        let out = Command::new(python())
            .arg(&script)
            .args(["--client", client, "--url", &cluster.repo_url(&path)])
            .arg("--work")
            .arg(cluster.dir().join(format!("work-{client}")))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{client}: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("OK {client} {FINAL_MAIN}")),
            "{stdout}"
        );
        // The repository survived its first push: a plain git clone still sees it,
        // after the gateway's handling of the early close has run its course.
        let clone = cluster.dir().join(format!("check-{client}"));
        let url = cluster.repo_url(&path);
        eventually!(format!("{client}'s repository is still there").as_str(), {
            let _ = std::fs::remove_dir_all(&clone);
            let out = git::run_output(
                cluster.dir(),
                &["clone", "-q", &url, clone.to_str().unwrap()],
            );
            anyhow::ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        });
        assert_eq!(git::run(&clone, &["rev-parse", "HEAD"]), FINAL_MAIN);
    }
}
