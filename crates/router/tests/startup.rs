//! Start-up gate and lifecycle of the real `gitcluster-router` binary.

#![allow(clippy::disallowed_methods)] // tests block their own thread on the child process

use std::process::{Command, Stdio};

use gitcluster_integration_tests::{Member, TestDb, amqp_url, free_port, http_get, scratch_dir};

/// The router on a database that refuses it, run to its exit.
fn router(db_url: &str, metrics_port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gitcluster-router"));
    cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen"])
        .arg(format!("127.0.0.1:{metrics_port}"))
        .env("DATABASE_URL", db_url)
        .stdin(Stdio::null());
    cmd
}

#[tokio::test]
async fn unmigrated_database_exits_78_with_one_line_naming_sql_migrate() {
    let db = TestDb::create(false).await;
    let out = router(&db.url, free_port()).output().expect("run router");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "stderr: {stderr}");
    let hits: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("gitcluster sql-migrate"))
        .collect();
    assert_eq!(hits.len(), 1, "stderr: {stderr}");
    assert!(
        hits[0].starts_with("gitcluster-router: database schema is out of date"),
        "{}",
        hits[0]
    );
}

#[tokio::test]
async fn migrated_database_serves_healthz_and_sigterm_exits_cleanly() {
    let db = TestDb::create(true).await;
    let dir = scratch_dir();
    let mut router = Member::new(
        "router",
        env!("CARGO_BIN_EXE_gitcluster-router"),
        dir.path(),
    )
    .arg("--listen=127.0.0.1:0")
    .env("DATABASE_URL", &db.url)
    .env("AMQP_URL", amqp_url())
    .start()
    .await;
    let (code, _) = http_get(router.metrics_addr, "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(code, 200);

    let status = router.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "clean exit after SIGTERM:\n{}",
        router.log()
    );
}

#[test]
fn dump_config_redacts_the_database_password() {
    let out = Command::new(env!("CARGO_BIN_EXE_gitcluster-router"))
        .arg("--dump-config")
        .env("DATABASE_URL", "postgres://gc:s3cret@db:5432/gitcluster")
        .output()
        .expect("run router");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout.contains("database_url = \"postgres://gc:***@db:5432/gitcluster\""),
        "{stdout}"
    );
    assert!(stdout.contains("listen = \"0.0.0.0:2305\""), "{stdout}");
    assert!(!stdout.contains("s3cret"), "{stdout}");
}

#[test]
fn missing_database_url_is_bad_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_gitcluster-router"))
        .env_remove("DATABASE_URL")
        .output()
        .expect("run router");
    assert_eq!(out.status.code(), Some(64));
}
