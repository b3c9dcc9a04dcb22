//! `gitcluster-reconciler`: validate the configuration, honour `--dump-config`, then run the
//! service under the shared entry point (exit codes: 64 bad config, 78 schema gate).

use std::process::ExitCode;

use gitcluster_proto::service;
use gitcluster_reconciler::{Config, run};

fn main() -> ExitCode {
    let name = "gitcluster-reconciler";
    let config: Config = match service::parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = config.validate() {
        return service::bad_config(name, &e);
    }
    if config.dump_config {
        print!("{}", config.dump());
        return ExitCode::SUCCESS;
    }
    service::run(
        name,
        |shutdown| run(config, shutdown),
        gitcluster_migrations::exit_status,
    )
}
