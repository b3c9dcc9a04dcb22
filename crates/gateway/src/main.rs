//! `gitcluster-gateway`: the Git smart-HTTP gateway ("our Workhorse"), run under the
//! shared entry point. Exit codes: 0 clean shutdown, 64 bad configuration, 1 otherwise.

use std::process::ExitCode;

use gitcluster_common::service;
use gitcluster_gateway::Cli;

const SERVICE: &str = "gitcluster-gateway";

fn main() -> ExitCode {
    let cli: Cli = match service::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let dump_config = cli.dump_config;
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(e) => return service::bad_config(SERVICE, &e),
    };
    if dump_config {
        println!("{}", config.dump());
        return ExitCode::SUCCESS;
    }
    service::run(
        SERVICE,
        |shutdown| gitcluster_gateway::run(config, shutdown),
        service::no_special_exit,
    )
}
