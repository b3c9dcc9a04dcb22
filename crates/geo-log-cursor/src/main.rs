//! `gitcluster-geo-log-cursor`: the shared service entry point (exit codes: 64 bad config,
//! 78 schema gate; `--dump-config` prints the effective configuration).

use std::process::ExitCode;

use gitcluster_common::service;
use gitcluster_geo_log_cursor::{Config, run};

fn main() -> ExitCode {
    service::main::<Config, _, _>(
        "gitcluster-geo-log-cursor",
        run,
        gitcluster_migrations::exit_status,
    )
}
