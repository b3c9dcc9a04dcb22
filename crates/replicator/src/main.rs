//! `gitcluster-replicator`: parse the configuration, start telemetry, run the replicator and
//! turn the outcome into an exit code (64 bad config, 78 schema gate failed).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use gitcluster_migrations::SchemaError;
use gitcluster_replicator::{Config, run};

use gitcluster_replicator::SERVICE;

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("{SERVICE}: {e:#}");
        return ExitCode::from(64);
    }
    if config.dump_config {
        print!("{}", config.dump());
        return ExitCode::SUCCESS;
    }
    let result = tokio::runtime::Runtime::new()
        .context("start runtime")
        .and_then(|rt| {
            rt.block_on(async {
                let telemetry = gitcluster_proto::telemetry::init(SERVICE)?;
                let result = run(config, gitcluster_proto::shutdown::on_signal()).await;
                telemetry.shutdown().await;
                result
            })
        });
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    let (code, line) = match e.downcast_ref::<SchemaError>() {
        Some(schema) => (schema.exit_code(), schema.report()),
        None => (1, format!("{e:#}")),
    };
    eprintln!("{SERVICE}: {line}");
    ExitCode::from(code)
}
