//! Start-up gate and lifecycle of the real `gitcluster-replicator` binary.

#![allow(clippy::disallowed_methods)] // tests block their own thread on the child process

use std::process::{Command, Stdio};

use gitcluster_integration_tests::{Member, TestDb, amqp_url, free_port, http_get, scratch_dir};

/// The replicator on a database that refuses it, run to its exit.
fn replicator(db_url: &str, metrics_port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gitcluster-replicator"));
    cmd.arg("--metrics-listen")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .env("DATABASE_URL", db_url)
        .stdin(Stdio::null());
    cmd
}

#[tokio::test]
async fn unmigrated_database_exits_78_with_one_line_naming_sql_migrate() {
    let db = TestDb::create(false).await;
    let out = replicator(&db.url, free_port())
        .output()
        .expect("run replicator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "stderr: {stderr}");
    let hits: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("gitcluster sql-migrate"))
        .collect();
    assert_eq!(hits.len(), 1, "stderr: {stderr}");
    assert!(
        hits[0].starts_with("gitcluster-replicator: database schema is out of date"),
        "{}",
        hits[0]
    );
}

#[tokio::test]
async fn migrated_database_serves_healthz_and_sigterm_exits_cleanly() {
    let db = TestDb::create(true).await;
    let prefix = format!("t{}", gitcluster_common::bus::new_job_id().simple());
    let dir = scratch_dir();
    let mut replicator = Member::new(
        "replicator",
        env!("CARGO_BIN_EXE_gitcluster-replicator"),
        dir.path(),
    )
    .env("DATABASE_URL", &db.url)
    .env("AMQP_URL", amqp_url())
    .env("GITCLUSTER_BUS_PREFIX", &prefix)
    .start()
    .await;
    let (code, _) = http_get(replicator.metrics_addr, "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(code, 200);

    let status = replicator.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "clean exit after SIGTERM:\n{}",
        replicator.log()
    );
    delete_base_topology(&prefix);
}

/// Deletes what the replicator declared under `prefix` with its default retry delays.
fn delete_base_topology(prefix: &str) {
    gitcluster_integration_tests::bus::delete_topology(prefix, &[], &[1000, 5000, 30000, 120000]);
}

#[test]
fn dump_config_redacts_passwords_and_bad_amqp_url_is_bad_config() {
    let run = |amqp: &str| {
        Command::new(env!("CARGO_BIN_EXE_gitcluster-replicator"))
            .arg("--dump-config")
            .env("DATABASE_URL", "postgres://gc:s3cret@db:5432/gitcluster")
            .env("AMQP_URL", amqp)
            .output()
            .expect("run replicator")
    };
    let out = run("amqp://jobs:hunter2@mq:5672/%2f");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout.contains("amqp_url = \"amqp://jobs:***@mq:5672/%2f\""),
        "{stdout}"
    );
    assert!(
        !stdout.contains("s3cret") && !stdout.contains("hunter2"),
        "{stdout}"
    );
    assert_eq!(run("http://mq:5672").status.code(), Some(64));
}

#[test]
fn missing_database_url_is_bad_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_gitcluster-replicator"))
        .env_remove("DATABASE_URL")
        .output()
        .expect("run replicator");
    assert_eq!(out.status.code(), Some(64));
}
