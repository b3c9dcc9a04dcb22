//! The difference between the tables and a file, as the ordered list of changes
//! `apply` writes.

use std::fmt;

use serde::Serialize;

use super::file::{Desired, Topology};

/// One change `apply` makes, in the order it makes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Change {
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
pub(super) fn plan(current: &Topology, desired: &Desired) -> Vec<Change> {
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
