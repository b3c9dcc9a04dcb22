//! Running the real `gitcluster` binary against a test database.

#![allow(dead_code)] // each test binary uses its own subset

use std::process::{Command, Output};

/// Runs `gitcluster <args>` with `DATABASE_URL=<db_url>`.
pub fn gitcluster(db_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gitcluster"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .output()
        .expect("run gitcluster")
}

/// The command's standard output.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command's standard error.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the command, asserts it succeeded and returns its standard output.
pub fn ok(db_url: &str, args: &[&str]) -> String {
    let out = gitcluster(db_url, args);
    assert!(
        out.status.success(),
        "gitcluster {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}
