//! `topology apply`, `topology show` and `list-storages`: the cluster's shape, as kept
//! in the `virtual_storages` and `storages` tables that every service reads.
//!
//! `apply` makes the database match a TOML file exactly (see [`TOPOLOGY_FILE_HELP`]):
//! it computes the difference between the file and the tables, then writes only that
//! difference in one transaction, so applying the same file twice writes nothing and
//! leaves `updated_at` alone. Removing a storage that is still the primary of a
//! repository, or a virtual storage that still holds repositories, is refused unless
//! `--force` is given.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Format, print_json};

/// The file format of `topology apply`, shown in its long help.
pub(crate) const TOPOLOGY_FILE_HELP: &str = r#"The file lists every virtual storage and its storage nodes:

    [[virtual_storage]]
    name = "default"
    default_replication_factor = 3   # optional; omitted = replicate to every storage

    [[virtual_storage.node]]
    storage = "gitaly-1"
    address = "http://127.0.0.1:8075"

Names must be non-empty without '/' or whitespace; storage names are unique across the
whole file; an address is an http://, https:// or tcp:// URL; a replication factor is
between 1 and the number of nodes of its virtual storage."#;

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

/// A topology file: `[[virtual_storage]]` tables, each with `[[virtual_storage.node]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    #[serde(default)]
    virtual_storage: Vec<VirtualStorageEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VirtualStorageEntry {
    name: String,
    // i64 (TOML's integer) so that a negative or huge value gets a precise message.
    default_replication_factor: Option<i64>,
    #[serde(default)]
    node: Vec<NodeEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    storage: String,
    address: String,
}

/// One virtual storage as the database holds it (or as a valid file wants it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct VirtualStorage {
    /// `None`: replicate to every storage.
    replication_factor: Option<i32>,
    /// Storage name to address.
    storages: BTreeMap<String, String>,
}

/// A whole topology, by virtual storage name. File order is kept separately for output.
type Topology = BTreeMap<String, VirtualStorage>;

/// A validated file: the wanted topology plus the order entries appear in.
#[derive(Debug)]
struct Desired {
    topology: Topology,
    /// Virtual storages in file order, each with its storages in file order.
    order: Vec<(String, Vec<String>)>,
}

/// Reads and validates a topology file; every error is one line naming the entry.
fn load_file(path: &Path) -> anyhow::Result<Desired> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    parse(&text).with_context(|| format!("invalid topology file {}", path.display()))
}

fn parse(text: &str) -> anyhow::Result<Desired> {
    let file: TopologyFile = toml::from_str(text).map_err(|e| {
        // toml's Display spans several lines (with a source excerpt): keep one.
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let message = e.message().replace('\n', " ");
        match line {
            Some(line) => anyhow!("line {line}: {}", message.trim()),
            None => anyhow!("{}", message.trim()),
        }
    })?;
    validate(file)
}

fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    if name.is_empty() {
        bail!("{what} name is empty");
    }
    if name
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        bail!("{what} name {name:?} contains '/', whitespace or a control character");
    }
    Ok(())
}

/// An `http://`, `https://` or `tcp://` URL with a host, an optional port and no path.
fn check_address(address: &str) -> anyhow::Result<()> {
    let bad = |why: &str| anyhow!("address {address:?} {why}");
    let Some((scheme, rest)) = address.split_once("://") else {
        return Err(bad("must be an http://, https:// or tcp:// URL"));
    };
    if !matches!(scheme, "http" | "https" | "tcp") {
        return Err(bad("must be an http://, https:// or tcp:// URL"));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '@'))
    {
        return Err(bad("must be scheme://host[:port] without a path"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("has an unclosed '['"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("has junk after ']'"))?,
                ),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(bad("has an invalid port"));
    }
    Ok(())
}

fn validate(file: TopologyFile) -> anyhow::Result<Desired> {
    if file.virtual_storage.is_empty() {
        bail!("no [[virtual_storage]] defined");
    }
    let mut topology = Topology::new();
    let mut order = Vec::new();
    // Physical storage names are unique in the cluster: where each was first seen.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for vs in file.virtual_storage {
        let ctx = format!("virtual storage {:?}", vs.name);
        check_name("virtual storage", &vs.name)?;
        if topology.contains_key(&vs.name) {
            bail!("{ctx} is defined twice");
        }
        if vs.node.is_empty() {
            bail!("{ctx} has no [[virtual_storage.node]]");
        }
        let mut storages = BTreeMap::new();
        let mut names = Vec::new();
        for node in vs.node {
            check_name("storage", &node.storage).with_context(|| ctx.clone())?;
            let node_ctx = format!("{ctx}: storage {:?}", node.storage);
            check_address(&node.address).with_context(|| node_ctx.clone())?;
            if let Some(first) = seen.insert(node.storage.clone(), vs.name.clone()) {
                if first == vs.name {
                    bail!("{node_ctx} is listed twice");
                }
                bail!(
                    "{node_ctx} is also in virtual storage {first:?}: storage names are unique in the cluster"
                );
            }
            names.push(node.storage.clone());
            storages.insert(node.storage, node.address);
        }
        let replication_factor = match vs.default_replication_factor {
            None => None,
            Some(rf) if rf >= 1 && rf <= storages.len() as i64 => {
                Some(i32::try_from(rf).context("replication factor fits i32")?)
            }
            Some(rf) => bail!(
                "{ctx}: default_replication_factor {rf} must be between 1 and its {} nodes",
                storages.len()
            ),
        };
        order.push((vs.name.clone(), names));
        topology.insert(
            vs.name,
            VirtualStorage {
                replication_factor,
                storages,
            },
        );
    }
    Ok(Desired { topology, order })
}

/// One change `apply` makes, in the order it makes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Change {
    AddVirtualStorage {
        virtual_storage: String,
        default_replication_factor: Option<i32>,
    },
    SetReplicationFactor {
        virtual_storage: String,
        default_replication_factor: Option<i32>,
    },
    AddStorage {
        virtual_storage: String,
        storage: String,
        address: String,
    },
    #[serde(rename = "change_address")]
    SetAddress {
        virtual_storage: String,
        storage: String,
        from: String,
        to: String,
    },
    RemoveStorage {
        virtual_storage: String,
        storage: String,
    },
    RemoveVirtualStorage {
        virtual_storage: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::AddVirtualStorage {
                virtual_storage: vs,
                default_replication_factor: Some(rf),
            } => write!(
                f,
                "added virtual storage {vs:?} with default replication factor {rf}"
            ),
            Change::AddVirtualStorage {
                virtual_storage: vs,
                default_replication_factor: None,
            } => write!(
                f,
                "added virtual storage {vs:?} replicating to every storage"
            ),
            Change::SetReplicationFactor {
                virtual_storage: vs,
                default_replication_factor: Some(rf),
            } => write!(f, "set default replication factor of {vs:?} to {rf}"),
            Change::SetReplicationFactor {
                virtual_storage: vs,
                default_replication_factor: None,
            } => write!(
                f,
                "unset default replication factor of {vs:?}: replicate to every storage"
            ),
            Change::AddStorage {
                virtual_storage: vs,
                storage,
                address,
            } => write!(
                f,
                "added storage {storage:?} to virtual storage {vs:?} at {address}"
            ),
            Change::SetAddress {
                virtual_storage: vs,
                storage,
                from,
                to,
            } => write!(
                f,
                "changed address of storage {storage:?} in virtual storage {vs:?} from {from} to {to}"
            ),
            Change::RemoveStorage {
                virtual_storage: vs,
                storage,
            } => write!(f, "removed storage {storage:?} from virtual storage {vs:?}"),
            Change::RemoveVirtualStorage {
                virtual_storage: vs,
            } => write!(f, "removed virtual storage {vs:?}"),
        }
    }
}

/// The changes that turn `current` into `desired`: additions and updates in file
/// order, then removals sorted by name (a removed virtual storage's storages first).
fn plan(current: &Topology, desired: &Desired) -> Vec<Change> {
    let mut changes = Vec::new();
    for (vs, order) in &desired.order {
        let want = &desired.topology[vs];
        let have = current.get(vs);
        match have {
            None => changes.push(Change::AddVirtualStorage {
                virtual_storage: vs.clone(),
                default_replication_factor: want.replication_factor,
            }),
            Some(have) if have.replication_factor != want.replication_factor => {
                changes.push(Change::SetReplicationFactor {
                    virtual_storage: vs.clone(),
                    default_replication_factor: want.replication_factor,
                })
            }
            Some(_) => {}
        }
        for storage in order {
            let address = &want.storages[storage];
            match have.and_then(|h| h.storages.get(storage)) {
                None => changes.push(Change::AddStorage {
                    virtual_storage: vs.clone(),
                    storage: storage.clone(),
                    address: address.clone(),
                }),
                Some(old) if old != address => changes.push(Change::SetAddress {
                    virtual_storage: vs.clone(),
                    storage: storage.clone(),
                    from: old.clone(),
                    to: address.clone(),
                }),
                Some(_) => {}
            }
        }
        if let Some(have) = have {
            for storage in have.storages.keys() {
                if !want.storages.contains_key(storage) {
                    changes.push(Change::RemoveStorage {
                        virtual_storage: vs.clone(),
                        storage: storage.clone(),
                    });
                }
            }
        }
    }
    for (vs, have) in current {
        if desired.topology.contains_key(vs) {
            continue;
        }
        for storage in have.storages.keys() {
            changes.push(Change::RemoveStorage {
                virtual_storage: vs.clone(),
                storage: storage.clone(),
            });
        }
        changes.push(Change::RemoveVirtualStorage {
            virtual_storage: vs.clone(),
        });
    }
    changes
}

/// Reads the topology tables.
async fn current_topology(client: &impl tokio_postgres::GenericClient) -> anyhow::Result<Topology> {
    let mut topology = Topology::new();
    for row in client
        .query(
            "SELECT name, default_replication_factor FROM virtual_storages",
            &[],
        )
        .await
        .context("read virtual storages")?
    {
        topology.insert(
            row.get(0),
            VirtualStorage {
                replication_factor: row.get(1),
                storages: BTreeMap::new(),
            },
        );
    }
    for row in client
        .query(
            "SELECT virtual_storage, storage, address FROM storages",
            &[],
        )
        .await
        .context("read storages")?
    {
        let vs: String = row.get(0);
        topology
            .entry(vs)
            .or_default()
            .storages
            .insert(row.get(1), row.get(2));
    }
    Ok(topology)
}

/// Removals that would strand repositories, as one line each; empty when none.
async fn stranded(
    client: &impl tokio_postgres::GenericClient,
    changes: &[Change],
) -> anyhow::Result<Vec<String>> {
    let removed_vs: BTreeSet<&str> = changes
        .iter()
        .filter_map(|c| match c {
            Change::RemoveVirtualStorage { virtual_storage } => Some(virtual_storage.as_str()),
            _ => None,
        })
        .collect();
    let mut problems = Vec::new();
    for change in changes {
        match change {
            // Reported once for its whole virtual storage below.
            Change::RemoveStorage {
                virtual_storage, ..
            } if removed_vs.contains(virtual_storage.as_str()) => {}
            Change::RemoveStorage {
                virtual_storage,
                storage,
            } => {
                let n: i64 = client
                    .query_one(
                        "SELECT count(*) FROM repositories WHERE virtual_storage = $1 AND \"primary\" = $2",
                        &[virtual_storage, storage],
                    )
                    .await
                    .context("count repositories on a removed storage")?
                    .get(0);
                if n > 0 {
                    problems.push(format!(
                        "storage {storage:?} of virtual storage {virtual_storage:?} is the primary of {n} repositories"
                    ));
                }
            }
            Change::RemoveVirtualStorage { virtual_storage } => {
                let n: i64 = client
                    .query_one(
                        "SELECT count(*) FROM repositories WHERE virtual_storage = $1",
                        &[virtual_storage],
                    )
                    .await
                    .context("count repositories of a removed virtual storage")?
                    .get(0);
                if n > 0 {
                    problems.push(format!(
                        "virtual storage {virtual_storage:?} holds {n} repositories"
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(problems)
}

/// Writes one change. Only rows that change are touched, so `updated_at` moves only
/// when something did.
async fn write(client: &impl tokio_postgres::GenericClient, change: &Change) -> anyhow::Result<()> {
    let result = match change {
        Change::AddVirtualStorage {
            virtual_storage,
            default_replication_factor,
        } => {
            client
                .execute(
                    "INSERT INTO virtual_storages (name, default_replication_factor) VALUES ($1, $2)",
                    &[virtual_storage, default_replication_factor],
                )
                .await
        }
        Change::SetReplicationFactor {
            virtual_storage,
            default_replication_factor,
        } => {
            client
                .execute(
                    "UPDATE virtual_storages SET default_replication_factor = $2, updated_at = now() WHERE name = $1",
                    &[virtual_storage, default_replication_factor],
                )
                .await
        }
        Change::AddStorage {
            virtual_storage,
            storage,
            address,
        } => {
            client
                .execute(
                    "INSERT INTO storages (virtual_storage, storage, address) VALUES ($1, $2, $3)",
                    &[virtual_storage, storage, address],
                )
                .await
        }
        Change::SetAddress {
            virtual_storage,
            storage,
            to,
            ..
        } => {
            client
                .execute(
                    "UPDATE storages SET address = $3, updated_at = now() WHERE virtual_storage = $1 AND storage = $2",
                    &[virtual_storage, storage, to],
                )
                .await
        }
        Change::RemoveStorage {
            virtual_storage,
            storage,
        } => {
            client
                .execute(
                    "DELETE FROM storages WHERE virtual_storage = $1 AND storage = $2",
                    &[virtual_storage, storage],
                )
                .await
        }
        Change::RemoveVirtualStorage { virtual_storage } => {
            client
                .execute(
                    "DELETE FROM virtual_storages WHERE name = $1",
                    &[virtual_storage],
                )
                .await
        }
    };
    result.with_context(|| format!("write change ({change})"))?;
    Ok(())
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
                    vec![
                        r.virtual_storage.clone(),
                        r.storage.clone().unwrap_or_default(),
                        r.address.clone().unwrap_or_default(),
                        rf(r),
                    ]
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
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.virtual_storage.clone(),
                        r.storage.clone().unwrap_or_default(),
                        r.address.clone().unwrap_or_default(),
                    ]
                })
                .collect();
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
    use super::*;

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
