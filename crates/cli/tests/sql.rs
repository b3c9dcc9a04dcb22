//! The `sql-*` commands, run as the real binary against a fresh database per test.

#![allow(clippy::disallowed_methods)] // tests block their own thread on the child process

use std::process::Command;

mod common;

use common::{gitcluster, ok, stderr};
use gitcluster_integration_tests::TestDb;

async fn table_exists(db: &TestDb, table: &str) -> bool {
    db.client()
        .await
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("query to_regclass")
        .get(0)
}

#[tokio::test]
async fn sql_ping_reports_ok_on_a_reachable_database() {
    let db = TestDb::create(false).await;
    assert_eq!(ok(&db.url, &["sql-ping"]), "gitcluster sql-ping: OK\n");
}

#[test]
fn sql_ping_fails_with_one_line_on_an_unreachable_port() {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let out = gitcluster("postgres://postgres@127.0.0.1:1/postgres", &["sql-ping"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    assert!(
        err.starts_with("gitcluster sql-ping: connect to database: "),
        "{err}"
    );
}

#[test]
fn sql_commands_without_database_url_are_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_gitcluster"))
        .arg("sql-ping")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run gitcluster");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--database-url"), "{}", stderr(&out));
}

#[tokio::test]
async fn sql_migrate_applies_everything_once_then_reports_all_up() {
    let db = TestDb::create(false).await;
    let first = ok(&db.url, &["sql-migrate"]);
    let lines: Vec<&str> = first.lines().collect();
    let n = gitcluster_migrations::MIGRATIONS.len();
    assert_eq!(
        lines[0],
        format!("gitcluster sql-migrate: migrations to apply: {n}")
    );
    let last = gitcluster_migrations::MIGRATIONS
        .last()
        .expect("at least one migration")
        .id;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("= ") && l.ends_with(&format!(" {last}: migrating"))),
        "{first}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("== ") && l.contains(&format!(" {last}: applied ("))),
        "{first}"
    );
    assert_eq!(
        lines.last().copied(),
        Some(format!("gitcluster sql-migrate: OK (applied {n} migrations)").as_str())
    );
    assert!(table_exists(&db, "repositories").await);

    let second = ok(&db.url, &["sql-migrate"]);
    assert_eq!(second, "gitcluster sql-migrate: all migrations are up\n");
}

#[tokio::test]
async fn sql_migrate_refuses_unknown_migrations_only_when_asked() {
    let db = TestDb::create(true).await;
    db.client()
        .await
        .execute(
            "INSERT INTO schema_migrations (id) VALUES ('9999_from_the_future')",
            &[],
        )
        .await
        .expect("record unknown migration");
    assert_eq!(
        ok(&db.url, &["sql-migrate"]),
        "gitcluster sql-migrate: all migrations are up\n"
    );
    let out = gitcluster(&db.url, &["sql-migrate", "--ignore-unknown=false"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("9999_from_the_future"),
        "{}",
        stderr(&out)
    );
    let status = ok(&db.url, &["sql-migrate-status"]);
    assert!(
        status
            .lines()
            .any(|l| l.contains("9999_from_the_future") && l.contains("unknown migration")),
        "{status}"
    );
}

#[tokio::test]
async fn sql_migrate_status_shows_no_before_and_a_timestamp_after() {
    let db = TestDb::create(false).await;
    let id = gitcluster_migrations::MIGRATIONS[0].id;
    let before = ok(&db.url, &["sql-migrate-status"]);
    let lines: Vec<&str> = before.lines().collect();
    assert!(
        lines[1].contains("Migration") && lines[1].contains("Applied"),
        "{before}"
    );
    assert!(
        lines[2].starts_with("+-"),
        "separator under the header: {before}"
    );
    let row = |table: &str| {
        table
            .lines()
            .find(|l| l.contains(id))
            .map(|l| {
                l.split('|')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect::<Vec<_>>()[1]
                    .to_owned()
            })
            .expect("row for the migration")
    };
    assert_eq!(row(&before), "no");

    ok(&db.url, &["sql-migrate"]);
    let after = ok(&db.url, &["sql-migrate-status"]);
    let applied = row(&after);
    chrono::DateTime::parse_from_rfc3339(&applied).expect("applied column is an RFC 3339 time");
}

#[tokio::test]
async fn sql_migrate_down_is_a_dry_run_unless_forced() {
    let db = TestDb::create(true).await;
    let newest = gitcluster_migrations::MIGRATIONS
        .last()
        .expect("at least one migration")
        .id;

    let dry = ok(&db.url, &["sql-migrate-down", "1"]);
    let lines: Vec<&str> = dry.lines().collect();
    assert_eq!(lines[0], "DRY RUN -- would roll back:");
    assert!(lines.contains(&format!("- {newest}").as_str()), "{dry}");
    assert!(dry.contains("-f"), "hints at -f: {dry}");
    assert!(
        table_exists(&db, "repositories").await,
        "dry run changes nothing"
    );

    let applied = gitcluster_migrations::MIGRATIONS.len();
    let too_many = gitcluster(&db.url, &["sql-migrate-down", &(applied + 1).to_string()]);
    assert_eq!(too_many.status.code(), Some(1));
    assert_eq!(stderr(&too_many).lines().count(), 1);

    let forced = ok(&db.url, &["sql-migrate-down", &applied.to_string(), "-f"]);
    assert_eq!(
        forced.lines().last(),
        Some(format!("OK (applied {applied} \"down\" migrations)").as_str())
    );
    assert!(!table_exists(&db, "repositories").await, "tables are gone");
    let status = ok(&db.url, &["sql-migrate-status"]);
    let row = status.lines().find(|l| l.contains(newest)).expect("row");
    assert!(row.contains("| no "), "{status}");
}

#[tokio::test]
async fn json_format_prints_one_parseable_document() {
    let db = TestDb::create(false).await;
    let parse = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&ok(&db.url, &all)).expect("stdout is one JSON document")
    };
    assert_eq!(parse(&["sql-ping"])["ok"], true);
    let status = parse(&["sql-migrate-status"]);
    assert_eq!(
        status["migrations"][0]["applied_at"],
        serde_json::Value::Null
    );
    let migrated = parse(&["sql-migrate"]);
    assert_eq!(
        migrated["applied"].as_array().map(Vec::len),
        Some(gitcluster_migrations::MIGRATIONS.len())
    );
    let status = parse(&["sql-migrate-status"]);
    assert!(status["migrations"][0]["applied_at"].is_string());
    let dry = parse(&["sql-migrate-down", "1"]);
    assert_eq!(dry["dry_run"], true);
}
