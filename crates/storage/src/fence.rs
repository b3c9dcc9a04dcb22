//! Per-repository fences inside one node process.
//!
//! ReplicateRepository reads the source's files, fetches its refs and rewrites the
//! target's HEAD, config and hooks in several steps. Two replications onto the same
//! target must never interleave: the second must start from a target the first has
//! finished with, or an older copy could finish last over a newer one (the
//! replicator's own lock is held on a database connection that can be lost
//! mid-copy, so the node keeps its own fence as well).
//!
//! Writes and conditional removal: every ref-changing write (receive-pack from its
//! first request message to its end, UpdateReferences, SetDefaultBranch) holds its
//! repository's lock *shared*; RemoveRepository with `only_if_empty` takes it
//! *exclusive* for a bounded time, so its "no write in flight, no reference" check
//! and the removal happen with no write in between. Tokio's lock is fair: a write
//! arriving while a removal waits queues behind it and then finds the repository
//! gone (NotFound) or, when the removal refused, proceeds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

type Lock = Arc<RwLock<()>>;

/// A lock per path, created on first use and dropped by the last holder to release
/// it while nobody waits, so the map holds the paths in use (plus, rarely, one left
/// by a waiter that gave up just after a release; the next holder reuses and drops it).
#[derive(Debug, Default)]
pub struct PathLocks {
    held: Arc<Mutex<HashMap<PathBuf, Lock>>>,
}

/// Holds the lock of one path (exclusive or shared) until dropped; owns what it
/// needs, so it can move into a spawned task.
#[derive(Debug)]
pub struct PathGuard {
    held: Arc<Mutex<HashMap<PathBuf, Lock>>>,
    path: PathBuf,
    guard: Option<Held>,
}

#[derive(Debug)]
enum Held {
    // Never read: holding them is the point.
    Exclusive(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
}

impl PathLocks {
    /// Waits until no other guard holds `path`, then holds it exclusively. Waiters
    /// are served in arrival order (tokio's lock is fair).
    pub async fn lock(&self, path: &Path) -> PathGuard {
        let lock = self.entry(path);
        PathGuard {
            held: self.held.clone(),
            path: path.to_owned(),
            guard: Some(Held::Exclusive(lock.write_owned().await)),
        }
    }

    /// Holds `path` shared with other shared holders; waits while it is held
    /// exclusively or an exclusive waiter arrived first.
    pub async fn share(&self, path: &Path) -> PathGuard {
        let lock = self.entry(path);
        PathGuard {
            held: self.held.clone(),
            path: path.to_owned(),
            guard: Some(Held::Shared(lock.read_owned().await)),
        }
    }

    fn entry(&self, path: &Path) -> Lock {
        self.map().entry(path.to_owned()).or_default().clone()
    }

    /// Number of paths in the map (held or waited for, see [`PathLocks`]).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// True when no path is held or waited for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn map(&self) -> MutexGuard<'_, HashMap<PathBuf, Lock>> {
        lock_map(&self.held)
    }
}

fn lock_map(map: &Mutex<HashMap<PathBuf, Lock>>) -> MutexGuard<'_, HashMap<PathBuf, Lock>> {
    map.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        // Under the map's lock, so no new waiter can take a clone between the check
        // and the removal.
        let mut held = lock_map(&self.held);
        drop(self.guard.take());
        if held
            .get(&self.path)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            held.remove(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_per_path_and_the_map_empties() {
        let locks = PathLocks::default();
        let a = locks.lock(Path::new("/s/a.git")).await;
        // Another path is independent.
        drop(locks.lock(Path::new("/s/b.git")).await);

        let waiting = locks.lock(Path::new("/s/a.git"));
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "a held path must not be handed out twice"
        );
        drop(a);
        let again = waiting.await;
        assert_eq!(locks.len(), 1);
        drop(again);
        assert!(locks.is_empty(), "released paths are forgotten");
    }

    #[tokio::test]
    async fn a_waiter_given_up_leaves_nothing_behind() {
        let locks = PathLocks::default();
        let a = locks.lock(Path::new("/s/a.git")).await;
        let gave_up =
            tokio::time::timeout(Duration::from_millis(10), locks.lock(Path::new("/s/a.git")))
                .await;
        assert!(gave_up.is_err());
        drop(a);
        assert!(locks.is_empty());
    }

    #[tokio::test]
    async fn shared_holders_coexist_and_exclude_an_exclusive_one() {
        let locks = PathLocks::default();
        let p = Path::new("/s/a.git");
        let one = locks.share(p).await;
        let two = locks.share(p).await;
        let exclusive = tokio::time::timeout(Duration::from_millis(20), locks.lock(p)).await;
        assert!(
            exclusive.is_err(),
            "shared holders keep an exclusive one out"
        );
        drop((one, two));
        let held = locks.lock(p).await;
        let shared = tokio::time::timeout(Duration::from_millis(20), locks.share(p)).await;
        assert!(shared.is_err(), "an exclusive holder keeps shared ones out");
        drop(held);
        drop(locks.share(p).await);
        assert!(locks.is_empty());
    }
}
