//! Service plumbing every gitcluster binary shares and none of the contracts: the
//! shared `main` and exit codes, telemetry, the admin HTTP port, signal-driven
//! shutdown, URL redaction, and (by feature) the cluster database's connection
//! settings and the AMQP job-bus session. The contracts themselves (generated code,
//! operation registry, job format, token check) stay in `gitcluster-proto`, so a
//! service that needs no database (the storage node, the gateway) pulls in no
//! Postgres crate.

pub mod admin;
#[cfg(feature = "bus")]
pub mod bus;
#[cfg(feature = "postgres")]
pub mod database;
#[cfg(feature = "postgres")]
pub mod listener;
pub mod redact;
pub mod service;
pub mod shutdown;
#[cfg(feature = "postgres")]
pub mod skeleton;
pub mod telemetry;
