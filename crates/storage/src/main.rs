//! `gitcluster-storage`: the storage node binary. Parses the configuration, starts
//! telemetry and runs [`gitcluster_storage::run`] until SIGTERM/SIGINT.
//! Exit codes: 0 after a clean shutdown, 64 for a bad configuration, 1 otherwise.

use std::process::ExitCode;

use clap::Parser as _;
use gitcluster_storage::config::{Args, Config};
use gitcluster_storage::ssh;

/// Exit status for configuration errors (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    // The hidden helper git runs as its ssh transport; it parses no flags (git passes
    // ssh options we ignore) and must keep stdout for the protocol.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == ssh::SUBCOMMAND)
    {
        let code = ssh::main();
        std::process::exit(code);
    }
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let dump = args.dump_config;
    let mut config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gitcluster-storage: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if dump {
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = config.prepare_storages() {
        eprintln!("gitcluster-storage: invalid configuration: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gitcluster-storage: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let telemetry = match gitcluster_proto::telemetry::init("gitcluster-storage") {
            Ok(t) => t,
            Err(e) => {
                eprintln!("gitcluster-storage: cannot initialise telemetry: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = gitcluster_proto::shutdown::on_signal();
        let result = gitcluster_storage::run(config, shutdown).await;
        let code = match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "storage node failed");
                ExitCode::FAILURE
            }
        };
        telemetry.shutdown().await;
        code
    })
}
