//! The entry point every service binary shares: flag parsing with our exit codes, the
//! runtime, telemetry, signal-driven shutdown, and turning the outcome into an exit
//! status. A service's `main` keeps only what is its own (validation, `--dump-config`).
//!
//! Exit codes: 0 after a clean shutdown (or `--help`), 64 (`EX_USAGE`) for a bad
//! configuration, a code chosen by the service's `classify` (78 for a schema version
//! mismatch), 1 for anything else. Failures print exactly one line to stderr.

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// Exit status for a bad configuration (`EX_USAGE` of sysexits.h).
pub const EXIT_BAD_CONFIG: u8 = 64;

/// Parses flags and environment; on failure prints clap's message and returns the
/// exit code to use (0 for `--help`/`--version`, 64 otherwise).
pub fn parse<A: clap::Parser>() -> Result<A, ExitCode> {
    A::try_parse().map_err(|e| {
        let _ = e.print();
        ExitCode::from(if e.use_stderr() { EXIT_BAD_CONFIG } else { 0 })
    })
}

/// Reports an invalid configuration on one line and returns exit code 64.
pub fn bad_config(service: &str, error: &dyn std::fmt::Display) -> ExitCode {
    // `{:#}` prints an anyhow chain on one line; other errors ignore the flag.
    eprintln!("{service}: invalid configuration: {error:#}");
    ExitCode::from(EXIT_BAD_CONFIG)
}

/// Runs `service` on a multi-threaded runtime with telemetry until it returns (it is
/// handed a token cancelled by SIGTERM/SIGINT). `classify` may turn an error into a
/// specific exit code and line; otherwise the code is 1 and the line the error chain.
pub fn run<F, Fut>(
    service: &'static str,
    body: F,
    classify: fn(&anyhow::Error) -> Option<(u8, String)>,
) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{service}: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let telemetry = crate::telemetry::init(service)?;
        let result = body(crate::shutdown::on_signal()).await;
        telemetry.shutdown().await;
        result
    });
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    let (code, line) = classify(&e).unwrap_or_else(|| (1, format!("{e:#}")));
    eprintln!("{service}: {line}");
    ExitCode::from(code)
}

/// A `classify` for services without special exit codes.
pub fn no_special_exit(_: &anyhow::Error) -> Option<(u8, String)> {
    None
}
