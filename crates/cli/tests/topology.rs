//! `topology apply`, `topology show` and `list-storages`, run as the real binary against
//! a fresh, migrated database per test.

#![allow(clippy::disallowed_methods)] // tests block their own thread on the child process

use std::path::PathBuf;

mod common;

use common::{gitcluster, ok, stderr, stdout};
use gitcluster_integration_tests::TestDb;

/// Runs a command that must fail with exit 1 and one line on stderr; returns the line.
fn fails(db_url: &str, args: &[&str]) -> String {
    let out = gitcluster(db_url, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "gitcluster {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    err
}

/// Writes `text` to a file named after the test database (unique per test).
fn topology_file(db: &TestDb, name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}-{name}.toml", db.name));
    std::fs::write(&path, text).expect("write topology file");
    path
}

fn path_str(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// `default` with gitaly-1..3 (optional RF) and `other` with gitaly-4.
fn three_nodes(rf: Option<u32>, third_address: &str) -> String {
    let rf = rf.map_or(String::new(), |n| {
        format!("default_replication_factor = {n}\n")
    });
    format!(
        r#"
[[virtual_storage]]
name = "default"
{rf}
[[virtual_storage.node]]
storage = "gitaly-1"
address = "http://127.0.0.1:8075"

[[virtual_storage.node]]
storage = "gitaly-2"
address = "tcp://127.0.0.1:8076"

[[virtual_storage.node]]
storage = "gitaly-3"
address = "{third_address}"

[[virtual_storage]]
name = "other"

[[virtual_storage.node]]
storage = "gitaly-4"
address = "https://gitaly-4.example.com:443"
"#
    )
}

/// Everything in the topology tables, including timestamps, as comparable text.
async fn snapshot(db: &TestDb) -> Vec<String> {
    let client = db.client().await;
    let mut out = Vec::new();
    for row in client
        .query(
            "SELECT name || ' ' || coalesce(default_replication_factor::text, 'all') || ' ' \
             || created_at::text || ' ' || updated_at::text FROM virtual_storages ORDER BY name",
            &[],
        )
        .await
        .expect("read virtual storages")
    {
        out.push(row.get(0));
    }
    for row in client
        .query(
            "SELECT virtual_storage || ' ' || storage || ' ' || address || ' ' \
             || created_at::text || ' ' || updated_at::text FROM storages \
             ORDER BY virtual_storage, storage",
            &[],
        )
        .await
        .expect("read storages")
    {
        out.push(row.get(0));
    }
    out
}

#[tokio::test]
async fn apply_to_an_empty_database_then_show_lists_every_node() {
    let db = TestDb::create(true).await;
    let file = topology_file(&db, "t", &three_nodes(Some(2), "http://127.0.0.1:8077"));
    let out = ok(&db.url, &["topology", "apply", path_str(&file)]);
    assert_eq!(
        out,
        "added virtual storage \"default\" with default replication factor 2\n\
         added storage \"gitaly-1\" to virtual storage \"default\" at http://127.0.0.1:8075\n\
         added storage \"gitaly-2\" to virtual storage \"default\" at tcp://127.0.0.1:8076\n\
         added storage \"gitaly-3\" to virtual storage \"default\" at http://127.0.0.1:8077\n\
         added virtual storage \"other\" replicating to every storage\n\
         added storage \"gitaly-4\" to virtual storage \"other\" at https://gitaly-4.example.com:443\n\
         gitcluster topology apply: OK (6 changes)\n"
    );

    let show = ok(&db.url, &["topology", "show"]);
    let lines: Vec<&str> = show.lines().collect();
    assert_eq!(
        lines[1].split('|').map(str::trim).collect::<Vec<_>>(),
        [
            "",
            "VIRTUAL_STORAGE",
            "NODE",
            "ADDRESS",
            "REPLICATION_FACTOR",
            ""
        ]
    );
    let rows: Vec<Vec<&str>> = lines
        .iter()
        .skip(3)
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["default", "gitaly-1", "http://127.0.0.1:8075", "2"],
            vec!["default", "gitaly-2", "tcp://127.0.0.1:8076", "2"],
            vec!["default", "gitaly-3", "http://127.0.0.1:8077", "2"],
            vec![
                "other",
                "gitaly-4",
                "https://gitaly-4.example.com:443",
                "all"
            ],
        ]
    );

    let only = ok(&db.url, &["topology", "show", "--virtual-storage", "other"]);
    assert!(
        only.contains("gitaly-4") && !only.contains("gitaly-1"),
        "{only}"
    );
    let err = fails(&db.url, &["topology", "show", "--virtual-storage", "nope"]);
    assert!(err.starts_with("gitcluster topology show: "), "{err}");

    // list-storages: exactly Praefect's columns, from the same query.
    let list = ok(&db.url, &["list-storages", "--virtual-storage", "default"]);
    let header: Vec<&str> = list
        .lines()
        .nth(1)
        .expect("header")
        .split('|')
        .map(str::trim)
        .collect();
    assert_eq!(header, ["", "VIRTUAL_STORAGE", "NODE", "ADDRESS", ""]);
    assert_eq!(
        list.lines().filter(|l| l.contains("| default ")).count(),
        3,
        "{list}"
    );
}

#[tokio::test]
async fn reapplying_the_same_file_is_no_changes_and_writes_nothing() {
    let db = TestDb::create(true).await;
    let file = topology_file(&db, "t", &three_nodes(None, "http://127.0.0.1:8077"));
    ok(&db.url, &["topology", "apply", path_str(&file)]);
    let before = snapshot(&db).await;
    assert_eq!(before.len(), 6);

    let out = ok(&db.url, &["topology", "apply", path_str(&file)]);
    assert_eq!(out, "gitcluster topology apply: no changes\n");
    assert_eq!(snapshot(&db).await, before, "updated_at untouched");
}

#[tokio::test]
async fn changing_address_and_replication_factor_updates_only_those_rows() {
    let db = TestDb::create(true).await;
    let first = topology_file(&db, "first", &three_nodes(None, "http://127.0.0.1:8077"));
    ok(&db.url, &["topology", "apply", path_str(&first)]);
    let before = snapshot(&db).await;

    let second = topology_file(&db, "second", &three_nodes(Some(3), "http://10.0.0.3:8075"));
    let out = ok(&db.url, &["topology", "apply", path_str(&second)]);
    assert_eq!(
        out,
        "set default replication factor of \"default\" to 3\n\
         changed address of storage \"gitaly-3\" in virtual storage \"default\" from http://127.0.0.1:8077 to http://10.0.0.3:8075\n\
         gitcluster topology apply: OK (2 changes)\n"
    );
    let after = snapshot(&db).await;
    let changed: Vec<(&String, &String)> =
        before.iter().zip(&after).filter(|(b, a)| b != a).collect();
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert!(changed[0].1.starts_with("default 3 "), "{changed:?}");
    assert!(
        changed[1]
            .1
            .starts_with("default gitaly-3 http://10.0.0.3:8075 "),
        "{changed:?}"
    );

    // Back to "every storage".
    let out = ok(&db.url, &["topology", "apply", path_str(&first)]);
    assert!(
        out.starts_with("unset default replication factor of \"default\""),
        "{out}"
    );
}

#[tokio::test]
async fn removing_a_primary_storage_is_refused_until_forced() {
    let db = TestDb::create(true).await;
    let all = topology_file(&db, "all", &three_nodes(None, "http://127.0.0.1:8077"));
    ok(&db.url, &["topology", "apply", path_str(&all)]);
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO repositories (repository_id, virtual_storage, relative_path, replica_path, \"primary\") VALUES \
             (1, 'default', 'a.git', '@cluster/repositories/00/00/1', 'gitaly-3'), \
             (2, 'default', 'b.git', '@cluster/repositories/00/00/2', 'gitaly-3'), \
             (3, 'default', 'c.git', '@cluster/repositories/00/00/3', 'gitaly-1'), \
             (4, 'other', 'd.git', '@cluster/repositories/00/00/4', 'gitaly-4')",
        )
        .await
        .expect("insert repositories");
    let before = snapshot(&db).await;

    // Without gitaly-3 (primary of two repositories).
    let text = three_nodes(None, "http://127.0.0.1:8077");
    let cut = text.replace(
        "[[virtual_storage.node]]\nstorage = \"gitaly-3\"\naddress = \"http://127.0.0.1:8077\"\n",
        "",
    );
    assert_ne!(cut, text);
    let without_3 = topology_file(&db, "without-3", &cut);
    let err = fails(&db.url, &["topology", "apply", path_str(&without_3)]);
    assert!(err.starts_with("gitcluster topology apply: "), "{err}");
    assert!(
        err.contains("storage \"gitaly-3\"") && err.contains("primary of 2 repositories"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    // A dry run predicts the same refusal.
    fails(
        &db.url,
        &["topology", "apply", "--dry-run", path_str(&without_3)],
    );
    assert_eq!(snapshot(&db).await, before, "nothing written");

    // Removing the virtual storage "other", which holds a repository.
    let only_default = cut
        .split("[[virtual_storage]]\nname = \"other\"")
        .next()
        .expect("split")
        .to_owned();
    let without_other = topology_file(&db, "without-other", &only_default);
    let err = fails(&db.url, &["topology", "apply", path_str(&without_other)]);
    assert!(
        err.contains("virtual storage \"other\" holds 1 repositories"),
        "{err}"
    );
    assert_eq!(snapshot(&db).await, before, "nothing written");

    let out = ok(
        &db.url,
        &["topology", "apply", "--force", path_str(&without_other)],
    );
    assert_eq!(
        out,
        "removed storage \"gitaly-3\" from virtual storage \"default\"\n\
         removed storage \"gitaly-4\" from virtual storage \"other\"\n\
         removed virtual storage \"other\"\n\
         gitcluster topology apply: OK (3 changes)\n"
    );
    let list = ok(&db.url, &["list-storages"]);
    assert!(
        !list.contains("gitaly-3") && !list.contains("other"),
        "{list}"
    );
    assert!(
        list.contains("gitaly-1") && list.contains("gitaly-2"),
        "{list}"
    );
}

#[tokio::test]
async fn invalid_files_exit_1_with_one_line_and_write_nothing() {
    let db = TestDb::create(true).await;
    let good = three_nodes(Some(2), "http://127.0.0.1:8077");
    let file = topology_file(&db, "good", &good);
    ok(&db.url, &["topology", "apply", path_str(&file)]);
    let before = snapshot(&db).await;

    let node = |s: &str, a: &str| {
        format!("[[virtual_storage.node]]\nstorage = \"{s}\"\naddress = \"{a}\"\n")
    };
    let vs = |name: &str, extra: &str, nodes: &str| {
        format!("[[virtual_storage]]\nname = \"{name}\"\n{extra}\n{nodes}")
    };
    let cases = [
        (
            "unknown key",
            vs("default", "replicas = 2", &node("gitaly-1", "http://h:1")),
            "unknown field `replicas`",
        ),
        (
            "unknown key in a node",
            format!(
                "{}port = 1\n",
                vs("default", "", &node("gitaly-1", "http://h:1"))
            ),
            "unknown field `port`",
        ),
        (
            "duplicate storage in one virtual storage",
            vs(
                "default",
                "",
                &(node("gitaly-1", "http://h:1") + &node("gitaly-1", "http://h:2")),
            ),
            "storage \"gitaly-1\" is listed twice",
        ),
        (
            "duplicate storage across virtual storages",
            vs("a", "", &node("gitaly-1", "http://h:1"))
                + &vs("b", "", &node("gitaly-1", "http://h:2")),
            "also in virtual storage \"a\"",
        ),
        (
            "replication factor 0",
            vs(
                "default",
                "default_replication_factor = 0",
                &node("gitaly-1", "http://h:1"),
            ),
            "default_replication_factor 0 must be between 1 and its 1 nodes",
        ),
        (
            "replication factor above the node count",
            vs(
                "default",
                "default_replication_factor = 3",
                &(node("gitaly-1", "http://h:1") + &node("gitaly-2", "http://h:2")),
            ),
            "default_replication_factor 3 must be between 1 and its 2 nodes",
        ),
        (
            "bad address scheme",
            vs("default", "", &node("gitaly-1", "ftp://h:1")),
            "storage \"gitaly-1\": address \"ftp://h:1\"",
        ),
        (
            "address without a host",
            vs("default", "", &node("gitaly-1", "http://:8075")),
            "has no host",
        ),
        (
            "name with a slash",
            vs("de/fault", "", &node("gitaly-1", "http://h:1")),
            "\"de/fault\"",
        ),
        ("not TOML", "[[virtual_storage]\n".to_owned(), "line 1"),
        ("empty", String::new(), "no [[virtual_storage]]"),
    ];
    for (what, text, needle) in cases {
        let file = topology_file(&db, "bad", &text);
        for dry_run in [false, true] {
            let mut args = vec!["topology", "apply", path_str(&file)];
            if dry_run {
                args.push("--dry-run");
            }
            let err = fails(&db.url, &args);
            assert!(
                err.starts_with("gitcluster topology apply: invalid topology file "),
                "{what}: {err}"
            );
            assert!(err.contains(needle), "{what}: {err}");
        }
    }
    let err = fails(
        &db.url,
        &["topology", "apply", "/nonexistent/topology.toml"],
    );
    assert!(err.contains("/nonexistent/topology.toml"), "{err}");
    assert_eq!(snapshot(&db).await, before, "nothing written");
}

#[tokio::test]
async fn dry_run_prints_the_changes_and_writes_nothing() {
    let db = TestDb::create(true).await;
    let file = topology_file(&db, "t", &three_nodes(Some(1), "http://127.0.0.1:8077"));
    let out = ok(
        &db.url,
        &["topology", "apply", "--dry-run", path_str(&file)],
    );
    assert!(
        out.starts_with("added virtual storage \"default\" with default replication factor 1\n"),
        "{out}"
    );
    assert!(
        out.ends_with("gitcluster topology apply: DRY RUN, nothing written (6 changes)\n"),
        "{out}"
    );
    assert!(snapshot(&db).await.is_empty(), "nothing written");

    ok(&db.url, &["topology", "apply", path_str(&file)]);
    let before = snapshot(&db).await;
    let changed = topology_file(&db, "changed", &three_nodes(None, "http://127.0.0.1:9999"));
    let out = ok(
        &db.url,
        &["topology", "apply", "--dry-run", path_str(&changed)],
    );
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_eq!(snapshot(&db).await, before, "nothing written");
}

#[tokio::test]
async fn json_output_parses() {
    let db = TestDb::create(true).await;
    let file = topology_file(&db, "t", &three_nodes(Some(2), "http://127.0.0.1:8077"));
    let parse = |args: &[&str]| -> serde_json::Value {
        let out = ok(&db.url, args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    };

    let dry = parse(&[
        "--format",
        "json",
        "topology",
        "apply",
        "--dry-run",
        path_str(&file),
    ]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["changes"].as_array().map(Vec::len), Some(6));

    let applied = parse(&["--format", "json", "topology", "apply", path_str(&file)]);
    assert_eq!(applied["dry_run"], false);
    let first = &applied["changes"][0];
    assert_eq!(first["kind"], "add_virtual_storage");
    assert_eq!(first["virtual_storage"], "default");
    assert_eq!(first["default_replication_factor"], 2);
    assert_eq!(applied["changes"][1]["kind"], "add_storage");
    assert_eq!(applied["changes"][1]["address"], "http://127.0.0.1:8075");

    let again = parse(&["--format", "json", "topology", "apply", path_str(&file)]);
    assert_eq!(again["changes"].as_array().map(Vec::len), Some(0));

    let show = parse(&["--format", "json", "topology", "show"]);
    let vss = show["virtual_storages"].as_array().expect("array");
    assert_eq!(vss.len(), 2);
    assert_eq!(vss[0]["name"], "default");
    assert_eq!(vss[0]["default_replication_factor"], 2);
    assert_eq!(vss[0]["nodes"].as_array().map(Vec::len), Some(3));
    assert_eq!(vss[0]["nodes"][2]["storage"], "gitaly-3");
    assert_eq!(
        vss[1]["default_replication_factor"],
        serde_json::Value::Null
    );

    let list = parse(&["--format", "json", "list-storages"]);
    let storages = list["storages"].as_array().expect("array");
    assert_eq!(storages.len(), 4);
    assert_eq!(storages[3]["virtual_storage"], "other");
    assert_eq!(storages[3]["node"], "gitaly-4");
    assert_eq!(storages[3]["address"], "https://gitaly-4.example.com:443");
}
