//! `gitcluster-storage`: the storage node binary. Parses the configuration and runs
//! [`gitcluster_storage::run`] under the shared entry point until SIGTERM/SIGINT.
//! Exit codes: 0 after a clean shutdown, 64 for a bad configuration, 1 otherwise.

use std::process::ExitCode;

use gitcluster_common::service;
use gitcluster_storage::config::{Args, Config};
use gitcluster_storage::ssh;

const SERVICE: &str = "gitcluster-storage";

fn main() -> ExitCode {
    // The hidden helper git runs as its ssh transport; it parses no flags (git passes
    // ssh options we ignore) and must keep stdout for the protocol.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == ssh::SUBCOMMAND)
    {
        std::process::exit(ssh::main());
    }
    let args: Args = match service::parse() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let dump = args.dump_config;
    let mut config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => return service::bad_config(SERVICE, &e),
    };
    if dump {
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = config.prepare_storages() {
        return service::bad_config(SERVICE, &e);
    }
    service::run(
        SERVICE,
        |shutdown| gitcluster_storage::run(config, shutdown),
        service::no_special_exit,
    )
}
