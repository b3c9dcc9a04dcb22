//! Git process slots: how many git processes may run at once, and for whom.
//!
//! Every git process holds a [`Slot`] while it runs. Slots come in three classes
//! with separate pools, so one kind of traffic can never starve another:
//! - [`SlotClass::Client`]: everything a client request runs (`--max-git-processes`).
//!   A client process that belongs to a repository also holds one of that
//!   repository's slots (`--max-git-processes-per-repository`, default half the
//!   pool), so one busy or hostile repository cannot take every slot (Gitaly's
//!   concurrency limiter). The repository slot is taken first: a request queued
//!   behind its repository's limit holds no slot of the shared pool.
//! - [`SlotClass::Replication`]: the target's `git fetch` of a ReplicateRepository.
//! - [`SlotClass::Peer`]: the source's side of another node's replication
//!   (`InternalService`). Its own pool, because a target's fetch holds a
//!   replication slot while its ssh helper waits for the source's upload-pack,
//!   which may run on this very node: from one pool that could wait for itself.
//!
//! The replication and peer pools hold `--max-replication-git-processes` each.
//! No request waits for a slot longer than `--git-slot-wait-secs`: it then fails
//! with `ResourceExhausted` and a one-line reason (the gateway answers 503 with
//! `Retry-After`). Waiting and refused requests are counted in
//! [`crate::metrics::GIT_SLOTS_WAITING`] and [`crate::metrics::GIT_SLOTS_REFUSED`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::Status;

use crate::metrics::{GIT_PROCESSES, GIT_SLOTS_REFUSED, GIT_SLOTS_WAITING};

/// Default bound on waiting for a slot.
pub const DEFAULT_SLOT_WAIT: Duration = Duration::from_secs(10);
/// Default size of the replication pool and of the peer pool.
pub const DEFAULT_REPLICATION_PROCESSES: usize = 16;
/// Default time a smart HTTP call may go without a request message while its
/// request stream is open.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The flags of this module (flattened into [`crate::config::Args`]).
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Git processes one repository's client requests may run at once; 0 means half
    /// of --max-git-processes (at least 1).
    #[arg(
        long,
        env = "GITCLUSTER_STORAGE_MAX_GIT_PROCESSES_PER_REPOSITORY",
        default_value_t = 0
    )]
    pub max_git_processes_per_repository: usize,
    /// Git processes for replication, in each of two pools of their own (this node's
    /// fetches as a target, and upload-packs serving other nodes' fetches).
    #[arg(
        long,
        env = "GITCLUSTER_STORAGE_MAX_REPLICATION_GIT_PROCESSES",
        default_value_t = DEFAULT_REPLICATION_PROCESSES
    )]
    pub max_replication_git_processes: usize,
    /// Seconds a request may wait for a git process slot before it fails with
    /// ResourceExhausted.
    #[arg(
        long,
        env = "GITCLUSTER_STORAGE_GIT_SLOT_WAIT_SECS",
        default_value_t = DEFAULT_SLOT_WAIT.as_secs()
    )]
    pub git_slot_wait_secs: u64,
    /// Seconds a smart HTTP call (PostUploadPack, PostReceivePack) may go without a
    /// request message while its request stream is open; the node then ends it with
    /// DeadlineExceeded (and kills its git).
    #[arg(
        long,
        env = "GITCLUSTER_STORAGE_STREAM_IDLE_TIMEOUT_SECS",
        default_value_t = DEFAULT_STREAM_IDLE_TIMEOUT.as_secs()
    )]
    pub stream_idle_timeout_secs: u64,
}

/// The effective limits (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Per-repository client processes; 0 means half of the client pool.
    pub per_repository: usize,
    /// Size of the replication pool and of the peer pool.
    pub replication: usize,
    /// Bound on waiting for a slot.
    pub slot_wait: Duration,
    /// Bound on a smart HTTP request stream's silence.
    pub stream_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_repository: 0,
            replication: DEFAULT_REPLICATION_PROCESSES,
            slot_wait: DEFAULT_SLOT_WAIT,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
        }
    }
}

impl Limits {
    /// The limits given by `args`; zero durations and an empty replication pool are
    /// refused (they would refuse every request).
    pub fn from_args(args: &LimitArgs) -> Result<Self, String> {
        if args.max_replication_git_processes == 0 {
            return Err("--max-replication-git-processes must be at least 1".into());
        }
        if args.git_slot_wait_secs == 0 || args.stream_idle_timeout_secs == 0 {
            return Err(
                "--git-slot-wait-secs and --stream-idle-timeout-secs must be at least 1".into(),
            );
        }
        Ok(Limits {
            per_repository: args.max_git_processes_per_repository,
            replication: args.max_replication_git_processes,
            slot_wait: Duration::from_secs(args.git_slot_wait_secs),
            stream_idle_timeout: Duration::from_secs(args.stream_idle_timeout_secs),
        })
    }
}

/// Which pool a git process draws from (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotClass {
    /// A client request.
    Client,
    /// This node's fetch as a replication target.
    Replication,
    /// Serving another node's replication.
    Peer,
}

impl SlotClass {
    fn label(self) -> &'static str {
        match self {
            SlotClass::Client => "client",
            SlotClass::Replication => "replication",
            SlotClass::Peer => "peer",
        }
    }
}

type RepoMap = Arc<Mutex<HashMap<PathBuf, Arc<Semaphore>>>>;

/// The pools of one node.
#[derive(Debug)]
pub struct Slots {
    client: Arc<Semaphore>,
    client_max: usize,
    replication: Arc<Semaphore>,
    peer: Arc<Semaphore>,
    replication_max: usize,
    per_repository: usize,
    repositories: RepoMap,
    wait: Duration,
}

/// A held slot; dropping it frees the slot (and the repository's).
#[derive(Debug)]
pub struct Slot {
    _pool: OwnedSemaphorePermit,
    _repository: Option<RepoSlot>,
    _running: Gauge,
}

impl Slots {
    /// Pools for `max_processes` client processes and `limits`.
    pub fn new(max_processes: usize, limits: &Limits) -> Self {
        let client_max = max_processes.max(1);
        let per_repository = match limits.per_repository {
            0 => (client_max / 2).max(1),
            n => n.min(client_max),
        };
        let replication_max = limits.replication.max(1);
        Slots {
            client: Arc::new(Semaphore::new(client_max)),
            client_max,
            replication: Arc::new(Semaphore::new(replication_max)),
            peer: Arc::new(Semaphore::new(replication_max)),
            replication_max,
            per_repository,
            repositories: RepoMap::default(),
            wait: limits.slot_wait,
        }
    }

    /// The per-repository limit in effect.
    pub fn per_repository(&self) -> usize {
        self.per_repository
    }

    /// Waits for a slot of `class` (and, for a client process of a repository, one
    /// of `repository`'s) for at most the configured bound; ResourceExhausted after.
    pub async fn acquire(
        &self,
        class: SlotClass,
        repository: Option<&Path>,
    ) -> Result<Slot, Status> {
        let deadline = Instant::now() + self.wait;
        let _waiting = Gauge::up(GIT_SLOTS_WAITING, class);
        let repository = match (class, repository) {
            (SlotClass::Client, Some(path)) => {
                let semaphore = self.repository_semaphore(path);
                match tokio::time::timeout_at(deadline, semaphore.acquire_owned()).await {
                    Ok(Ok(permit)) => Some(RepoSlot {
                        repositories: self.repositories.clone(),
                        path: path.to_owned(),
                        permit: Some(permit),
                    }),
                    Ok(Err(_)) => return Err(Status::unavailable("git process limiter closed")),
                    Err(_) => {
                        refused(class, "repository");
                        return Err(Status::resource_exhausted(format!(
                            "this repository already runs {} git processes (the per-repository limit); waited {} s",
                            self.per_repository,
                            self.wait.as_secs_f64()
                        )));
                    }
                }
            }
            _ => None,
        };
        let (pool, max) = match class {
            SlotClass::Client => (&self.client, self.client_max),
            SlotClass::Replication => (&self.replication, self.replication_max),
            SlotClass::Peer => (&self.peer, self.replication_max),
        };
        match tokio::time::timeout_at(deadline, pool.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot {
                _pool: permit,
                _repository: repository,
                _running: Gauge::up(GIT_PROCESSES, class),
            }),
            Ok(Err(_)) => Err(Status::unavailable("git process limiter closed")),
            Err(_) => {
                refused(class, "node");
                Err(Status::resource_exhausted(format!(
                    "all {max} {} git process slots are busy; waited {} s",
                    class.label(),
                    self.wait.as_secs_f64()
                )))
            }
        }
    }

    fn repository_semaphore(&self, path: &Path) -> Arc<Semaphore> {
        lock(&self.repositories)
            .entry(path.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_repository)))
            .clone()
    }

    /// Number of repositories with a slot held or waited for (plus, rarely, one
    /// left by a waiter that gave up; the next holder drops it).
    pub fn repositories_tracked(&self) -> usize {
        lock(&self.repositories).len()
    }
}

fn lock(
    map: &Mutex<HashMap<PathBuf, Arc<Semaphore>>>,
) -> MutexGuard<'_, HashMap<PathBuf, Arc<Semaphore>>> {
    map.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn refused(class: SlotClass, limit: &'static str) {
    metrics::counter!(GIT_SLOTS_REFUSED, "class" => class.label(), "limit" => limit).increment(1);
}

/// One repository's slot; the repository's entry leaves the map with its last user.
#[derive(Debug)]
struct RepoSlot {
    repositories: RepoMap,
    path: PathBuf,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for RepoSlot {
    fn drop(&mut self) {
        // Under the map's lock, so no new waiter can clone the semaphore between the
        // check and the removal.
        let mut map = lock(&self.repositories);
        drop(self.permit.take());
        if map
            .get(&self.path)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            map.remove(&self.path);
        }
    }
}

/// A gauge raised for the lifetime of the value.
#[derive(Debug)]
struct Gauge {
    name: &'static str,
    class: SlotClass,
}

impl Gauge {
    fn up(name: &'static str, class: SlotClass) -> Self {
        metrics::gauge!(name, "class" => class.label()).increment(1.0);
        Gauge { name, class }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        metrics::gauge!(self.name, "class" => self.class.label()).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_repository: usize, wait_ms: u64) -> Limits {
        Limits {
            per_repository,
            replication: 1,
            slot_wait: Duration::from_millis(wait_ms),
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
        }
    }

    #[tokio::test]
    async fn a_repository_at_its_limit_is_refused_while_others_get_slots() {
        let slots = Slots::new(4, &limits(0, 50));
        assert_eq!(slots.per_repository(), 2);
        let a = Path::new("/s/a.git");
        let held = (
            slots
                .acquire(SlotClass::Client, Some(a))
                .await
                .expect("first"),
            slots
                .acquire(SlotClass::Client, Some(a))
                .await
                .expect("second"),
        );
        let refused = slots
            .acquire(SlotClass::Client, Some(a))
            .await
            .expect_err("third for one repository");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("per-repository"), "{refused:?}");
        let other = slots
            .acquire(SlotClass::Client, Some(Path::new("/s/b.git")))
            .await
            .expect("another repository still gets a slot");
        drop((held, other));
        assert_eq!(
            slots.repositories_tracked(),
            0,
            "released repositories are forgotten"
        );
    }

    #[tokio::test]
    async fn a_full_pool_refuses_after_the_wait_and_replication_has_its_own() {
        let slots = Slots::new(1, &limits(0, 50));
        let held = slots
            .acquire(SlotClass::Client, None)
            .await
            .expect("only slot");
        let refused = slots
            .acquire(SlotClass::Client, None)
            .await
            .expect_err("pool is full");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("slots are busy"), "{refused:?}");
        let fetch = slots
            .acquire(SlotClass::Replication, None)
            .await
            .expect("replication does not wait behind clients");
        slots
            .acquire(SlotClass::Peer, None)
            .await
            .expect("serving a peer does not wait behind this node's fetch");
        drop((held, fetch));
        drop(slots.acquire(SlotClass::Client, None).await.expect("freed"));
    }
}
