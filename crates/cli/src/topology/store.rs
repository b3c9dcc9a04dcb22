//! Reading the topology tables and writing one change to them.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;

use super::file::{Topology, VirtualStorage};
use super::plan::Change;

/// Reads the topology tables.
pub(super) async fn current_topology(
    client: &impl tokio_postgres::GenericClient,
) -> anyhow::Result<Topology> {
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
pub(super) async fn stranded(
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
pub(super) async fn write(
    client: &impl tokio_postgres::GenericClient,
    change: &Change,
) -> anyhow::Result<()> {
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
