//! Running the real `git` CLI from tests, isolated from the user's configuration.

use std::path::Path;
use std::process::{Command, Output};

/// A `git` command with a private HOME and no system config, so the machine's own
/// settings cannot change test outcomes.
pub fn command(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .env_remove("GIT_PROTOCOL")
        .env_remove("GIT_DIR");
    c
}

/// Runs git and returns its output whatever the exit status.
pub fn run_output(dir: &Path, args: &[&str]) -> Output {
    command(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run git {args:?}: {e}"))
}

/// Runs git, panics on failure, returns trimmed stdout.
pub fn run(dir: &Path, args: &[&str]) -> String {
    let out = run_output(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

/// `git for-each-ref` over branches and tags, as `<oid> <ref>` lines.
pub fn refs(dir: &Path) -> String {
    run(
        dir,
        &[
            "for-each-ref",
            "--format=%(objectname) %(refname)",
            "refs/heads",
            "refs/tags",
        ],
    )
}

/// The Gitaly-compatible checksum computed independently from `git show-ref --head`:
/// XOR of SHA-1 over each `<oid> <ref>` line of HEAD and the checksummed namespaces.
pub fn checksum_from_show_ref(dir: &Path) -> String {
    use sha1::{Digest, Sha1};
    const PREFIXES: [&str; 6] = [
        "refs/heads/",
        "refs/tags/",
        "refs/keep-around/",
        "refs/merge-requests/",
        "refs/environments/",
        "refs/notes/",
    ];
    let out = run_output(dir, &["show-ref", "--head"]);
    let mut acc = [0u8; 20];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((_, name)) = line.split_once(' ') else {
            continue;
        };
        if name == "HEAD" || PREFIXES.iter().any(|p| name.starts_with(p)) {
            let digest = Sha1::digest(line.as_bytes());
            for (a, d) in acc.iter_mut().zip(digest.iter()) {
                *a ^= d;
            }
        }
    }
    hex::encode(acc)
}

/// Writes `len` bytes of incompressible data to `path` (so packs really are that big).
pub fn write_random_file(path: &Path, len: usize) {
    use rand::RngCore;
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(path, data).expect("write random file");
}

/// Clones `url` quietly into `dir/name` and returns the clone's HEAD commit id;
/// panics when git fails.
pub fn clone_head(dir: &Path, url: &str, name: &str) -> String {
    let clone = dir.join(name);
    let dest = clone.to_str().expect("UTF-8 path");
    run(dir, &["clone", "-q", url, dest]);
    run(&clone, &["rev-parse", "HEAD"])
}

/// Commits everything in the work tree with `message`; returns the new commit id.
pub fn commit_all(dir: &Path, message: &str) -> String {
    run(dir, &["add", "-A"]);
    run(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    run(dir, &["rev-parse", "HEAD"])
}
