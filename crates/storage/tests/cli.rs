//! The binary's configuration interface: exit codes and `--dump-config`.

use std::process::Stdio;

async fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gitcluster-storage"));
    cmd.args(args)
        .env_remove("GITCLUSTER_STORAGES")
        .env_remove("GITCLUSTER_STORAGE_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().await.expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bad_configuration_exits_64() {
    assert_eq!(run(&[], &[]).await.0, 64, "no storage");
    assert_eq!(
        run(&["--storage", "a=/x", "--storage", "a=/y"], &[])
            .await
            .0,
        64,
        "duplicate"
    );
    assert_eq!(run(&["--storage", "nopath"], &[]).await.0, 64, "malformed");
    assert_eq!(run(&["--no-such-flag"], &[]).await.0, 64, "unknown flag");
}

#[tokio::test]
async fn dump_config_shows_the_effective_config_with_the_token_redacted() {
    let (code, stdout, _) = run(
        &["--dump-config", "--listen", "127.0.0.1:1234"],
        &[
            ("GITCLUSTER_STORAGES", "a=/srv/a,b=/srv/b"),
            ("GITCLUSTER_STORAGE_TOKEN", "s3cret"),
        ],
    )
    .await;
    assert_eq!(code, 0);
    assert!(stdout.contains("127.0.0.1:1234"), "{stdout}");
    assert!(stdout.contains("/srv/b"), "{stdout}");
    assert!(
        stdout.contains("<redacted>") && !stdout.contains("s3cret"),
        "{stdout}"
    );
}

#[tokio::test]
async fn ssh_helper_without_its_environment_fails_like_ssh() {
    let (code, stdout, stderr) = run(
        &[
            "ssh-upload-pack",
            "-o",
            "SendEnv=GIT_PROTOCOL",
            "host",
            "git-upload-pack '/x'",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 255);
    assert!(
        stdout.is_empty(),
        "stdout must stay clean for the protocol: {stdout}"
    );
    assert!(stderr.contains("GITCLUSTER_SSH_ADDRESS"), "{stderr}");
}
