//! Partial clone through the gateway: `--filter=blob:none` and `--filter=tree:0`
//! over protocol v0 and v2 leave objects out, and git fetches them lazily on demand.

#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::path::Path;

use gitcluster_integration_tests::{Cluster, git};

/// Objects the clone knows of but does not have (`git rev-list --missing=print`).
fn missing_objects(dir: &Path) -> Vec<String> {
    git::run(
        dir,
        &[
            "rev-list",
            "--objects",
            "--all",
            "--missing=print",
            "--quiet",
        ],
    )
    .lines()
    .filter_map(|l| l.strip_prefix('?').map(str::to_owned))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobless_and_treeless_clones_over_v0_and_v2_fetch_missing_objects_lazily() {
    let cluster = Cluster::builder().storages(1).gateway().start().await;
    let work = cluster.dir().join("work");
    std::fs::create_dir_all(work.join("dir/sub")).unwrap();
    git::run(&work, &["init", "-q", "--initial-branch=main"]);
    for i in 0..3 {
        std::fs::write(work.join("README.md"), format!("readme {i}\n")).unwrap();
        std::fs::write(work.join("dir/a.txt"), format!("a {i}\n")).unwrap();
        std::fs::write(work.join("dir/sub/b.txt"), format!("b {i}\n")).unwrap();
        git::commit_all(&work, &format!("commit {i}"));
    }
    let first_readme = git::run(&work, &["rev-parse", "HEAD~2:README.md"]);
    let url = cluster.repo_url("partial/clone.git");
    git::run(&work, &["push", "-q", &url, "main:main"]);

    for version in ["0", "2"] {
        for filter in ["blob:none", "tree:0"] {
            let name = format!("v{version}-{}", filter.replace(':', "-"));
            let dest = cluster.dir().join(&name);
            let out = git::run_output(
                cluster.dir(),
                &[
                    "-c",
                    &format!("protocol.version={version}"),
                    "clone",
                    "--no-checkout",
                    &format!("--filter={filter}"),
                    &url,
                    &name,
                ],
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{name}: clone failed: {stderr}");
            assert!(
                !stderr.contains("filtering not recognized"),
                "{name}: the server ignored the filter: {stderr}"
            );
            assert_eq!(
                git::run(&dest, &["config", "remote.origin.promisor"]),
                "true",
                "{name}: a partial clone"
            );
            // blob:none leaves out every blob not checked out; tree:0 every tree, so
            // the old blob is not even known locally, only its missing tree.
            let missing = missing_objects(&dest);
            if filter == "blob:none" {
                assert!(
                    missing.iter().any(|m| m == &first_readme),
                    "{name}: an old blob stays on the server: {missing:?}"
                );
            } else {
                assert!(!missing.is_empty(), "{name}: trees stay on the server");
            }

            // Checking out fetches the blobs (and trees) of HEAD; an old blob is
            // fetched when asked for.
            let checkout = git::run_output(
                &dest,
                &[
                    "-c",
                    &format!("protocol.version={version}"),
                    "checkout",
                    "-q",
                    "main",
                ],
            );
            assert!(
                checkout.status.success(),
                "{name}: checkout: {}",
                String::from_utf8_lossy(&checkout.stderr)
            );
            assert_eq!(
                std::fs::read_to_string(dest.join("dir/sub/b.txt")).unwrap(),
                "b 2\n"
            );
            assert_eq!(
                git::run(
                    &dest,
                    &[
                        "-c",
                        &format!("protocol.version={version}"),
                        "cat-file",
                        "-p",
                        &first_readme
                    ]
                ),
                "readme 0"
            );
            let out = git::run_output(&dest, &["cat-file", "-e", &first_readme]);
            assert!(out.status.success(), "{name}: the blob is now local");
        }
    }
}
