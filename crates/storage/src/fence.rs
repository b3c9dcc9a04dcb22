//! Per-repository mutual exclusion inside one node process.
//!
//! ReplicateRepository reads the source's files, fetches its refs and rewrites the
//! target's HEAD, config and hooks in several steps. Two replications onto the same
//! target must never interleave: the second must start from a target the first has
//! finished with, or an older copy could finish last over a newer one (the
//! replicator's own lock is held on a database connection that can be lost
//! mid-copy, so the node keeps its own fence as well).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OwnedMutexGuard;

/// A lock per path, created on first use and dropped by the last holder to release
/// it while nobody waits, so the map holds the paths in use (plus, rarely, one left
/// by a waiter that gave up just after a release; the next holder reuses and drops it).
#[derive(Debug, Default)]
pub struct PathLocks {
    held: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds the lock of one path until dropped.
#[derive(Debug)]
pub struct PathGuard<'a> {
    locks: &'a PathLocks,
    path: PathBuf,
    guard: Option<OwnedMutexGuard<()>>,
}

impl PathLocks {
    /// Waits until no other guard holds `path`, then holds it. Waiters are served
    /// in arrival order (tokio's mutex is fair).
    pub async fn lock(&self, path: &Path) -> PathGuard<'_> {
        let lock = self.map().entry(path.to_owned()).or_default().clone();
        PathGuard {
            locks: self,
            path: path.to_owned(),
            guard: Some(lock.lock_owned().await),
        }
    }

    /// Number of paths in the map (held or waited for, see [`PathLocks`]).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// True when no path is held or waited for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn map(&self) -> MutexGuard<'_, HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for PathGuard<'_> {
    fn drop(&mut self) {
        // Under the map's lock, so no new waiter can take a clone between the check
        // and the removal.
        let mut held = self.locks.map();
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
}
