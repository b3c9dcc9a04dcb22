//! The connection pool and the mapping of database failures to what the replicator
//! does about them.

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

/// Builds the pool (connections are opened lazily, on first use).
pub fn pool(url: &str, size: usize) -> anyhow::Result<Pool> {
    let mut pg = gitcluster_common::database::postgres_config(url)?;
    pg.application_name("gitcluster-replicator");
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .context("build database pool")
}

/// What a database failure means for the job at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// The repository (and with it the job row, by cascade) was deleted meanwhile:
    /// the job has nothing left to do.
    RepositoryGone,
    /// Anything else: Postgres could not record the outcome, so the job must run again.
    Unavailable,
}

/// The one place SQLSTATE codes are mapped for this service.
pub fn classify(error: &tokio_postgres::Error) -> DbFailure {
    match error.code() {
        Some(code) if *code == SqlState::FOREIGN_KEY_VIOLATION => DbFailure::RepositoryGone,
        _ => DbFailure::Unavailable,
    }
}
