//! The topology file: its format, parsing and validation, and the model both the
//! file and the tables are read into.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;

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

/// A topology file: `[[virtual_storage]]` tables, each with `[[virtual_storage.node]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopologyFile {
    #[serde(default)]
    pub(super) virtual_storage: Vec<VirtualStorageEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VirtualStorageEntry {
    pub(super) name: String,
    // i64 (TOML's integer) so that a negative or huge value gets a precise message.
    pub(super) default_replication_factor: Option<i64>,
    #[serde(default)]
    pub(super) node: Vec<NodeEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NodeEntry {
    pub(super) storage: String,
    pub(super) address: String,
}

/// One virtual storage as the database holds it (or as a valid file wants it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct VirtualStorage {
    /// `None`: replicate to every storage.
    pub(super) replication_factor: Option<i32>,
    /// Storage name to address.
    pub(super) storages: BTreeMap<String, String>,
}

/// A whole topology, by virtual storage name. File order is kept separately for output.
pub(super) type Topology = BTreeMap<String, VirtualStorage>;

/// A validated file: the wanted topology plus the order entries appear in.
#[derive(Debug)]
pub(super) struct Desired {
    pub(super) topology: Topology,
    /// Virtual storages in file order, each with its storages in file order.
    pub(super) order: Vec<(String, Vec<String>)>,
}

/// Reads and validates a topology file; every error is one line naming the entry.
pub(super) fn load_file(path: &Path) -> anyhow::Result<Desired> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    parse(&text).with_context(|| format!("invalid topology file {}", path.display()))
}

pub(super) fn parse(text: &str) -> anyhow::Result<Desired> {
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

pub(super) fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
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
pub(super) fn check_address(address: &str) -> anyhow::Result<()> {
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

pub(super) fn validate(file: TopologyFile) -> anyhow::Result<Desired> {
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
