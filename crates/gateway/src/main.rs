//! `gitcluster-gateway`: the Git smart-HTTP gateway ("our Workhorse").

use std::process::ExitCode;

use clap::Parser as _;
use gitcluster_gateway::Cli;

/// Exit code for an invalid configuration (EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_BAD_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let dump_config = cli.dump_config;
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gitcluster-gateway: invalid configuration: {e:#}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if dump_config {
        println!("{}", config.dump());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gitcluster-gateway: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let telemetry = match gitcluster_proto::telemetry::init("gitcluster-gateway") {
            Ok(t) => t,
            Err(e) => {
                eprintln!("gitcluster-gateway: cannot initialise telemetry: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = gitcluster_proto::shutdown::on_signal();
        let result = gitcluster_gateway::run(config, shutdown).await;
        let code = match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "gateway failed");
                ExitCode::FAILURE
            }
        };
        telemetry.shutdown().await;
        code
    })
}
