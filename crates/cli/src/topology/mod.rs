//! `topology apply`, `topology show` and `list-storages`: the cluster's shape, as kept
//! in the `virtual_storages` and `storages` tables that every service reads.
//!
//! `apply` makes the database match a TOML file exactly (see [`TOPOLOGY_FILE_HELP`]):
//! it computes the difference between the file and the tables, then writes only that
//! difference in one transaction, so applying the same file twice writes nothing and
//! leaves `updated_at` alone. Removing a storage that is still the primary of a
//! repository, or a virtual storage that still holds repositories, is refused unless
//! `--force` is given.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::json;

use crate::{Format, print_json};
mod file;
mod plan;
mod store;

pub(crate) use file::TOPOLOGY_FILE_HELP;
use file::load_file;
use plan::{Change, plan};
use store::{current_topology, stranded, write};

/// Flags of `topology apply`.
#[derive(Debug, clap::Args)]
pub(crate) struct ApplyArgs {
    /// TOML file describing the whole topology.
    file: PathBuf,
    /// Also remove storages that are still the primary of repositories, and virtual
    /// storages that still hold repositories.
    #[arg(long)]
    force: bool,
    /// Print the changes without writing them.
    #[arg(long)]
    dry_run: bool,
}

/// Flags of `topology show` and `list-storages`.
#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    /// Only this virtual storage.
    #[arg(long)]
    virtual_storage: Option<String>,
}

/// `topology apply FILE [--force] [--dry-run]`.
pub(crate) async fn apply(url: &str, args: &ApplyArgs, format: Format) -> anyhow::Result<()> {
    let desired = load_file(&args.file)?;
    let mut client = crate::sql::connect(url).await?;
    // One transaction for the whole file: services never see half a topology, and two
    // operators applying at once are serialised by the table lock, each computing its
    // changes from what the other committed.
    let tx = client.transaction().await.context("begin transaction")?;
    tx.batch_execute("LOCK TABLE virtual_storages, storages IN SHARE ROW EXCLUSIVE MODE")
        .await
        .context("lock topology tables")?;
    let current = current_topology(&tx).await?;
    let changes = plan(&current, &desired);
    let removes = changes.iter().any(|c| {
        matches!(
            c,
            Change::RemoveStorage { .. } | Change::RemoveVirtualStorage { .. }
        )
    });
    if removes && !args.force {
        // Hold repository writes (an election moving a primary onto a storage being
        // removed) until commit, so the check below stays true when the delete lands.
        tx.batch_execute("LOCK TABLE repositories IN SHARE MODE")
            .await
            .context("lock repositories")?;
        let problems = stranded(&tx, &changes).await?;
        if !problems.is_empty() {
            bail!(
                "refusing to apply, nothing written: {}; move them first or pass --force",
                problems.join("; ")
            );
        }
    }
    for change in &changes {
        write(&tx, change).await?;
    }
    if args.dry_run {
        tx.rollback().await.context("roll back dry run")?;
    } else {
        tx.commit().await.context("commit topology")?;
    }
    match format {
        Format::Text => {
            for change in &changes {
                say!("{change}");
            }
            match (changes.len(), args.dry_run) {
                (0, _) => say!("gitcluster topology apply: no changes"),
                (n, true) => {
                    say!("gitcluster topology apply: DRY RUN, nothing written ({n} changes)")
                }
                (n, false) => say!("gitcluster topology apply: OK ({n} changes)"),
            }
        }
        Format::Json => {
            let list: Vec<serde_json::Value> = changes
                .iter()
                .map(|c| {
                    let mut v = serde_json::to_value(c).unwrap_or_else(|_| json!({}));
                    v["description"] = json!(c.to_string());
                    v
                })
                .collect();
            print_json(&json!({ "dry_run": args.dry_run, "changes": list }));
        }
    }
    Ok(())
}

/// One row of `topology show` / `list-storages`: a storage, or a virtual storage
/// without any (then `storage` and `address` are `None`).
struct Row {
    virtual_storage: String,
    replication_factor: Option<i32>,
    storage: Option<String>,
    address: Option<String>,
}

impl Row {
    /// The text columns both listings start with: virtual storage, node, address
    /// (empty for a virtual storage without nodes).
    fn node_cells(&self) -> Vec<String> {
        vec![
            self.virtual_storage.clone(),
            self.storage.clone().unwrap_or_default(),
            self.address.clone().unwrap_or_default(),
        ]
    }
}

/// The rows both listings print, sorted by virtual storage then storage.
async fn listing(url: &str, only: Option<&str>) -> anyhow::Result<Vec<Row>> {
    let client = crate::sql::connect(url).await?;
    let rows = client
        .query(
            "SELECT v.name, v.default_replication_factor, s.storage, s.address
               FROM virtual_storages v
               LEFT JOIN storages s ON s.virtual_storage = v.name
              WHERE $1::text IS NULL OR v.name = $1
              ORDER BY v.name, s.storage",
            &[&only],
        )
        .await
        .context("read topology")?;
    if let Some(name) = only
        && rows.is_empty()
    {
        bail!("no virtual storage named {name:?}");
    }
    Ok(rows
        .iter()
        .map(|r| Row {
            virtual_storage: r.get(0),
            replication_factor: r.get(1),
            storage: r.get(2),
            address: r.get(3),
        })
        .collect())
}

/// `topology show [--virtual-storage NAME]`.
pub(crate) async fn show(url: &str, args: &ShowArgs, format: Format) -> anyhow::Result<()> {
    let rows = listing(url, args.virtual_storage.as_deref()).await?;
    let rf = |r: &Row| {
        r.replication_factor
            .map_or("all".to_owned(), |n| n.to_string())
    };
    match format {
        Format::Text => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let mut cells = r.node_cells();
                    cells.push(rf(r));
                    cells
                })
                .collect();
            let header = ["VIRTUAL_STORAGE", "NODE", "ADDRESS", "REPLICATION_FACTOR"];
            say!("{}", crate::table::render(&header, &cells).trim_end());
        }
        Format::Json => {
            let mut list: Vec<serde_json::Value> = Vec::new();
            for r in &rows {
                let same = list
                    .last()
                    .is_some_and(|v| v["name"] == json!(r.virtual_storage));
                if !same {
                    list.push(json!({
                        "name": r.virtual_storage,
                        "default_replication_factor": r.replication_factor,
                        "nodes": [],
                    }));
                }
                if let (Some(storage), Some(address), Some(last)) =
                    (&r.storage, &r.address, list.last_mut())
                    && let Some(nodes) = last["nodes"].as_array_mut()
                {
                    nodes.push(json!({ "storage": storage, "address": address }));
                }
            }
            print_json(&json!({ "virtual_storages": list }));
        }
    }
    Ok(())
}

/// `list-storages [--virtual-storage NAME]`: Praefect's columns.
pub(crate) async fn list_storages(
    url: &str,
    args: &ShowArgs,
    format: Format,
) -> anyhow::Result<()> {
    let rows = listing(url, args.virtual_storage.as_deref()).await?;
    let rows: Vec<&Row> = rows.iter().filter(|r| r.storage.is_some()).collect();
    match format {
        Format::Text => {
            let cells: Vec<Vec<String>> = rows.iter().map(|r| r.node_cells()).collect();
            let header = ["VIRTUAL_STORAGE", "NODE", "ADDRESS"];
            say!("{}", crate::table::render(&header, &cells).trim_end());
        }
        Format::Json => {
            let list: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    json!({
                        "virtual_storage": r.virtual_storage,
                        "node": r.storage,
                        "address": r.address,
                    })
                })
                .collect();
            print_json(&json!({ "storages": list }));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::file::*;
    use super::plan::*;

    const GOOD: &str = r#"
[[virtual_storage]]
name = "default"
default_replication_factor = 2

[[virtual_storage.node]]
storage = "gitaly-1"
address = "http://127.0.0.1:8075"

[[virtual_storage.node]]
storage = "gitaly-2"
address = "tcp://[::1]:8076"
"#;

    #[test]
    fn a_valid_file_parses_in_file_order() {
        let d = parse(GOOD).expect("valid");
        assert_eq!(
            d.order,
            vec![(
                "default".to_owned(),
                vec!["gitaly-1".to_owned(), "gitaly-2".to_owned()]
            )]
        );
        assert_eq!(d.topology["default"].replication_factor, Some(2));
    }

    #[test]
    fn addresses_need_a_known_scheme_a_host_and_no_path() {
        for ok in [
            "http://h:1",
            "https://h",
            "tcp://10.0.0.1:8075",
            "tcp://[::1]:2",
            "http://h/",
        ] {
            assert!(check_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://h:1",
            "h:1",
            "http://",
            "http://:80",
            "http://h:0",
            "http://h:x",
            "http://h/p",
            "http://u@h",
            "http://h :1",
            "tcp://[::1",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_are_one_line_and_name_the_entry() {
        for (text, needle) in [
            ("[[virtual_storage]]\nname = \"a\"\nbogus = 1\n", "line 3"),
            ("[[virtual_storage]]\nname = \"a b\"\n", "\"a b\""),
            (
                "[[virtual_storage]]\nname = \"a\"\n[[virtual_storage.node]]\nstorage = \"s\"\naddress = \"x\"\n",
                "storage \"s\"",
            ),
        ] {
            let e = format!("{:#}", parse(text).expect_err(text));
            assert!(!e.contains('\n'), "{e}");
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn planning_against_itself_changes_nothing() {
        let d = parse(GOOD).expect("valid");
        assert!(plan(&d.topology, &d).is_empty());
        let changes = plan(&Topology::new(), &d);
        assert_eq!(changes.len(), 3);
        assert_eq!(
            changes[0].to_string(),
            "added virtual storage \"default\" with default replication factor 2"
        );
    }
}
