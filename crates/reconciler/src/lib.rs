//! The reconciler: one active instance (lease) relays the outbox, schedules repair
//! of outdated assigned replicas from a random up-to-date source, verifies replicas
//! in the background and crawls storages for untracked or leftover replicas.
//!
//! This is the skeleton: it passes the schema gate and serves the admin port, but
//! runs no work loop yet.

gitcluster_common::skeleton_service! {
    label: "reconciler",
    name: "gitcluster-reconciler",
    about: "gitcluster reconciler: outbox relay, reconciliation, verification and crawler",
    metrics_env: "GITCLUSTER_RECONCILER_METRICS_LISTEN",
    metrics_default: "0.0.0.0:9655",
    bus: true
}
