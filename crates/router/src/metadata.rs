//! The repository metadata cache: `(virtual storage, relative path)` → what routing
//! needs (id, replica path, primary, generations, assignments).
//!
//! Entries are loaded from Postgres on a miss and dropped when `gitcluster_metadata`
//! names their repository (see `notifications`), or when the router changes the
//! repository itself. NOTIFY is only a hint: when the listening connection is lost
//! the whole cache is cleared, and until it listens again nothing is cached (every
//! read goes to the tables), since a change made meanwhile would notify nobody. An
//! entry loaded concurrently with an invalidation is not inserted (the epoch check),
//! so a stale row can never outlive its notification.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use deadpool_postgres::Pool;

use crate::db;

const METADATA_QUERY: &str = include_str!("queries/repository_metadata.sql");

/// Routing metadata of one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryMetadata {
    /// `repositories.repository_id`.
    pub repository_id: i64,
    /// Its virtual storage.
    pub virtual_storage: String,
    /// Its client-visible path.
    pub relative_path: String,
    /// Path of every replica.
    pub replica_path: String,
    /// Current primary storage.
    pub primary: Option<String>,
    /// Highest generation of any replica.
    pub generation: i64,
    /// Assigned storages; empty means every storage of the virtual storage.
    pub assigned: Vec<String>,
    /// Generation of each existing replica, by storage.
    pub replicas: HashMap<String, i64>,
}

impl RepositoryMetadata {
    /// True when `storage` holds a replica at the repository's generation.
    pub fn is_up_to_date(&self, storage: &str) -> bool {
        self.replicas.get(storage) == Some(&self.generation)
    }

    /// True when `storage` is assigned (explicitly, or implicitly by having no
    /// assignment rows at all).
    pub fn is_assigned(&self, storage: &str) -> bool {
        self.assigned.is_empty() || self.assigned.iter().any(|s| s == storage)
    }
}

type Key = (String, String);

#[derive(Default)]
struct Entries {
    by_path: HashMap<Key, std::sync::Arc<RepositoryMetadata>>,
    by_id: HashMap<i64, HashSet<Key>>,
    /// Bumped by every invalidation; a load started under an older epoch is dropped.
    epoch: u64,
    /// True while the LISTEN connection is listening: only then are loads kept.
    listening: bool,
}

/// The cache (see the module doc).
pub struct MetadataCache {
    pool: Pool,
    entries: Mutex<Entries>,
}

impl MetadataCache {
    /// An empty cache reading through `pool`.
    pub fn new(pool: Pool) -> Self {
        MetadataCache {
            pool,
            entries: Mutex::new(Entries::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The repository at `(virtual_storage, relative_path)`, or `None` when it does
    /// not exist. Unknown repositories are not cached.
    pub async fn get(
        &self,
        virtual_storage: &str,
        relative_path: &str,
    ) -> Result<Option<std::sync::Arc<RepositoryMetadata>>, tonic::Status> {
        let key = (virtual_storage.to_owned(), relative_path.to_owned());
        let epoch = {
            let entries = self.lock();
            if let Some(m) = entries.by_path.get(&key) {
                return Ok(Some(m.clone()));
            }
            entries.epoch
        };
        let client = self.pool.get().await.map_err(db::pool_status)?;
        let row = client
            .query_opt(METADATA_QUERY, &[&virtual_storage, &relative_path])
            .await
            .map_err(|e| db::status("read repository metadata", &e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let storages: Vec<String> = row.get("replica_storages");
        let generations: Vec<i64> = row.get("replica_generations");
        let meta = std::sync::Arc::new(RepositoryMetadata {
            repository_id: row.get("repository_id"),
            virtual_storage: virtual_storage.to_owned(),
            relative_path: relative_path.to_owned(),
            replica_path: row.get("replica_path"),
            primary: row.get("primary"),
            generation: row.get("generation"),
            assigned: row.get("assigned"),
            replicas: storages.into_iter().zip(generations).collect(),
        });
        let mut entries = self.lock();
        if entries.listening && entries.epoch == epoch {
            entries
                .by_id
                .entry(meta.repository_id)
                .or_default()
                .insert(key.clone());
            entries.by_path.insert(key, meta.clone());
        }
        Ok(Some(meta))
    }

    /// Drops every entry of repository `id`.
    pub fn invalidate(&self, id: i64) {
        let mut entries = self.lock();
        entries.epoch += 1;
        if let Some(keys) = entries.by_id.remove(&id) {
            for k in keys {
                entries.by_path.remove(&k);
            }
        }
    }

    /// Drops everything.
    pub fn clear(&self) {
        let mut entries = self.lock();
        Self::drop_all(&mut entries);
    }

    /// The LISTEN connection listens (again): start from an empty cache and keep
    /// what is loaded from here on.
    pub fn start_listening(&self) {
        let mut entries = self.lock();
        Self::drop_all(&mut entries);
        entries.listening = true;
    }

    /// The LISTEN connection is lost: drop everything and cache nothing until
    /// [`start_listening`](Self::start_listening).
    pub fn stop_listening(&self) {
        let mut entries = self.lock();
        Self::drop_all(&mut entries);
        entries.listening = false;
    }

    fn drop_all(entries: &mut Entries) {
        entries.epoch += 1;
        entries.by_path.clear();
        entries.by_id.clear();
    }

    /// Number of cached repositories.
    pub fn len(&self) -> usize {
        self.lock().by_path.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
