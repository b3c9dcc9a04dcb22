//! The election service: every instance probes every storage node
//! (`grpc.health.v1`) on a short interval and records its observations; a node is
//! healthy when a majority of live observers saw it recently. Primaries are elected
//! per repository among healthy, assigned, up-to-date replicas, and a failover
//! publishes a NOTIFY so routers switch at once.
//!
//! This is the skeleton: it passes the schema gate and serves the admin port, but
//! runs no work loop yet.

gitcluster_common::skeleton_service! {
    label: "election",
    name: "gitcluster-election",
    about: "gitcluster election: health observer and per-repository primary elector",
    metrics_env: "GITCLUSTER_ELECTION_METRICS_LISTEN",
    metrics_default: "0.0.0.0:9653",
    bus: false
}
