//! The Geo log cursor runs on a secondary site, one active instance per site (a
//! lease with a short TTL renewed every poll). It reads the primary site's
//! `geo_event_log` in id order, tracks gaps left by in-flight transactions, writes
//! the registry, publishes sync jobs, backfills and schedules verification.
//!
//! This is the skeleton: it passes the schema gate and serves the admin port, but
//! runs no work loop yet.

gitcluster_common::skeleton_service! {
    label: "geo-log-cursor",
    name: "gitcluster-geo-log-cursor",
    about: "gitcluster geo-log-cursor: secondary-site reader of the primary site event log",
    metrics_env: "GITCLUSTER_GEO_LOG_CURSOR_METRICS_LISTEN",
    metrics_default: "0.0.0.0:9656",
    bus: true
}
