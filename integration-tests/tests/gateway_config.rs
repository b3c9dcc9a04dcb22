//! The gateway refuses tokens it could not use safely: a blank one, one with
//! whitespace, one with bytes an HTTP header cannot carry. Each exits 64 (bad
//! configuration) with one line naming the variable, before anything is served.

#![allow(clippy::disallowed_methods)] // runs the gateway binary as a child process

use std::process::Command;

use gitcluster_integration_tests::binary;

fn gateway() -> Command {
    let mut c = Command::new(binary("gitcluster-gateway"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["--upstream", "http://127.0.0.1:1", "--dump-config"]);
    c
}

#[test]
fn blank_whitespace_or_header_unsafe_tokens_exit_64() {
    for variable in [
        "GITCLUSTER_GATEWAY_UPSTREAM_TOKEN",
        "GITCLUSTER_GATEWAY_AUTH_TOKEN",
    ] {
        for token in [
            "",
            "   ",
            " lead",
            "trail ",
            "in side",
            "tab\there",
            "nl\nx",
            "del\u{7f}",
            "é-token",
        ] {
            let out = gateway().env(variable, token).output().expect("run");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(64),
                "{variable}={token:?}: {stderr}"
            );
            assert_eq!(stderr.lines().count(), 1, "{variable}={token:?}: {stderr}");
            assert!(stderr.contains(variable), "{variable}={token:?}: {stderr}");
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("GITCLUSTER_GATEWAY_LISTEN"),
                "{variable}={token:?} was accepted"
            );
        }
        let out = gateway()
            .env(variable, "s3cret-Token_1.x~")
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
