//! The replication job bus contract: message body, AMQP properties and the names of
//! every exchange and queue. Documented for operators in `docs/jobs.md`.
//!
//! PostgreSQL's `replication_jobs` row is the truth; a message is only a wake-up call
//! carrying a copy of the row, so a lost, duplicated or reordered message corrupts
//! nothing. Topology (all durable, declared idempotently by whoever uses it):
//!
//! ```text
//! <p>.replication (direct) --<vs>.<storage>--> <p>.replication.<vs>.<storage>
//! <p>.replication.retry.<ms>ms (fanout) --> queue <p>.replication.retry.<ms>ms
//!        x-message-ttl=<ms>, dead-letters back to <p>.replication with the original key
//! <p>.replication.dead (fanout) --> queue <p>.replication.dead
//! ```
//! `<p>` is the bus prefix (`gitcluster` unless overridden, so parallel tests can
//! share one broker).

use serde::{Deserialize, Serialize};

/// Content type of every job message.
pub const CONTENT_TYPE: &str = "application/json";
/// Header holding the 1-based attempt number of this delivery.
pub const ATTEMPT_HEADER: &str = "x-gitcluster-attempt";
/// Header holding the last error, on dead-lettered messages.
pub const ERROR_HEADER: &str = "x-gitcluster-error";
/// Header holding the W3C trace context of the write that caused the job.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// What a replication job does to its target replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Make the target a mirror of the source, then raise its generation.
    Update,
    /// Remove the target replica and its record.
    DeleteReplica,
}

impl Change {
    /// The value stored in `replication_jobs.change`.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Update => "update",
            Change::DeleteReplica => "delete_replica",
        }
    }

    /// The change a `replication_jobs.change` value names, if any.
    pub fn parse(value: &str) -> Option<Change> {
        match value {
            "update" => Some(Change::Update),
            "delete_replica" => Some(Change::DeleteReplica),
            _ => None,
        }
    }
}

/// `replication_jobs.state`, as the replicator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Written, not yet confirmed by the broker.
    Pending,
    /// Confirmed by the broker.
    Published,
    /// A replicator is running it.
    InProgress,
    /// Finished successfully.
    Done,
    /// Failed; retried after a delay.
    Failed,
    /// Failed for the last time; in the dead-letter queue.
    Dead,
}

impl JobState {
    /// The state a `replication_jobs.state` value names, if any.
    pub fn parse(value: &str) -> Option<JobState> {
        Some(match value {
            "pending" => JobState::Pending,
            "published" => JobState::Published,
            "in_progress" => JobState::InProgress,
            "done" => JobState::Done,
            "failed" => JobState::Failed,
            "dead" => JobState::Dead,
            _ => return None,
        })
    }

    /// The value stored in `replication_jobs.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Published => "published",
            JobState::InProgress => "in_progress",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
        }
    }
}

/// Body of a replication job message (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationJob {
    /// `replication_jobs.id`; also the AMQP `message_id`.
    pub job_id: String,
    /// What to do.
    pub change: Change,
    /// Repository the job is about.
    pub repository_id: i64,
    /// Its virtual storage.
    pub virtual_storage: String,
    /// Client-visible path (for operators reading the queue; not used to route).
    pub relative_path: String,
    /// Physical path on every replica.
    pub replica_path: String,
    /// Storage to copy from (`update` only).
    pub source_storage: Option<String>,
    /// Storage whose replica is changed.
    pub target_storage: String,
}

/// Exchange and queue names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusNames {
    prefix: String,
}

impl Default for BusNames {
    fn default() -> Self {
        BusNames::new("gitcluster")
    }
}

impl BusNames {
    /// Names under `prefix` (no trailing dot).
    pub fn new(prefix: &str) -> Self {
        BusNames {
            prefix: prefix.trim_end_matches('.').to_owned(),
        }
    }

    /// The direct exchange every replication job is published to.
    pub fn replication_exchange(&self) -> String {
        format!("{}.replication", self.prefix)
    }

    /// Routing key of jobs for one target storage.
    pub fn routing_key(virtual_storage: &str, storage: &str) -> String {
        format!("{virtual_storage}.{storage}")
    }

    /// The durable queue holding jobs for one target storage.
    pub fn replication_queue(&self, virtual_storage: &str, storage: &str) -> String {
        format!("{}.replication.{virtual_storage}.{storage}", self.prefix)
    }

    /// Exchange (and queue) of the retry tier delaying messages by `delay_ms`.
    pub fn retry_exchange(&self, delay_ms: u64) -> String {
        format!("{}.replication.retry.{delay_ms}ms", self.prefix)
    }

    /// Exchange (and queue) of jobs that ran out of attempts.
    pub fn dead_letter(&self) -> String {
        format!("{}.replication.dead", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_json_is_stable_and_readable() {
        let job = ReplicationJob {
            job_id: "0190c5f2-0000-7000-8000-000000000001".into(),
            change: Change::Update,
            repository_id: 7,
            virtual_storage: "default".into(),
            relative_path: "group/project.git".into(),
            replica_path: "@cluster/repositories/7f/35/7".into(),
            source_storage: Some("gitaly-1".into()),
            target_storage: "gitaly-2".into(),
        };
        let json = serde_json::to_string(&job).expect("serialises");
        assert!(json.contains("\"change\":\"update\""), "{json}");
        assert_eq!(
            serde_json::from_str::<ReplicationJob>(&json).expect("parses"),
            job
        );
    }

    #[test]
    fn names_follow_the_documented_scheme() {
        let n = BusNames::new("t1.");
        assert_eq!(n.replication_exchange(), "t1.replication");
        assert_eq!(
            n.replication_queue("default", "gitaly-2"),
            "t1.replication.default.gitaly-2"
        );
        assert_eq!(
            BusNames::routing_key("default", "gitaly-2"),
            "default.gitaly-2"
        );
        assert_eq!(n.retry_exchange(5000), "t1.replication.retry.5000ms");
        assert_eq!(n.dead_letter(), "t1.replication.dead");
    }
}
