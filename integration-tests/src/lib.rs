//! Whole-cluster test harness: starts gitcluster binaries (built by `cargo build --bins`)
//! on free loopback ports with temp dirs and a fresh database, and can kill, pause or
//! restart any member. Nothing here is a mock: tests talk to real Postgres, real `git`
//! and our real binaries.
//!
//! Every member logs JSON to a file in the cluster's temp dir. When a `Cluster` is
//! dropped at the end of a passing test, those logs are scanned and the test fails on
//! any ERROR line it did not declare with `Cluster::expect_error`.

#![allow(clippy::disallowed_methods)] // tests may block their own thread on child processes

pub mod bus;
mod cluster;
pub mod db;
mod eventually;
pub mod git;
mod http;
mod member;
pub mod relay;

pub use cluster::*;
pub use db::TestDb;
pub use eventually::*;
pub use http::*;
pub use member::*;
