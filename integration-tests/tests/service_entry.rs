//! The entry point the database-backed services share (`service::main`): the same
//! flags, the same exit codes and the same redacted `--dump-config`, for every one of
//! them — including the skeletons, which have no other tests yet.

#![allow(clippy::disallowed_methods)] // runs the service binaries as child processes

use std::process::Command;

use gitcluster_integration_tests::binary;

/// Every service that reads the cluster database, and whether it is on the job bus.
const SERVICES: [(&str, bool); 5] = [
    ("gitcluster-router", true),
    ("gitcluster-replicator", true),
    ("gitcluster-election", false),
    ("gitcluster-reconciler", true),
    ("gitcluster-geo-log-cursor", true),
];

fn service(name: &str) -> Command {
    let mut c = Command::new(binary(name));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn dump_config_redacts_the_shared_urls_and_shows_the_bus_prefix() {
    for (name, on_bus) in SERVICES {
        let out = service(name)
            .env("DATABASE_URL", "postgres://gc:hunter2@db:5432/gitcluster")
            .env("AMQP_URL", "amqp://jobs:hunter3@mq:5672/%2f")
            .env("GITCLUSTER_BUS_PREFIX", "site-a")
            .arg("--dump-config")
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{name}: {stdout}");
        assert!(
            stdout.contains("database_url = \"postgres://gc:***@db:5432/gitcluster\"\n"),
            "{name}: {stdout}"
        );
        assert!(
            !stdout.contains("hunter"),
            "{name} leaks a password: {stdout}"
        );
        assert_eq!(
            stdout
                .contains("amqp_url = \"amqp://jobs:***@mq:5672/%2f\"\nbus_prefix = \"site-a\"\n"),
            on_bus,
            "{name}: {stdout}"
        );
    }
}

#[test]
fn invalid_shared_settings_exit_64_with_one_line_naming_the_flag() {
    let cases: [(&str, &str, &str, bool); 3] = [
        // (DATABASE_URL, AMQP_URL, expected flag in the message, bus services only)
        (
            "postgres://db:notaport/x",
            "amqp://mq/%2f",
            "--database-url",
            false,
        ),
        ("postgres://db/x", "http://mq:5672", "--amqp-url", true),
        ("postgres://db/x", "amqp://", "--amqp-url", true),
    ];
    for (name, on_bus) in SERVICES {
        for (db, amqp, flag, bus_only) in cases {
            if bus_only && !on_bus {
                continue;
            }
            let out = service(name)
                .env("DATABASE_URL", db)
                .env("AMQP_URL", amqp)
                .output()
                .expect("run");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{name} {db} {amqp}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
            assert!(stderr.contains(flag), "{name} {db} {amqp}: {stderr}");
        }
    }
    // A prefix of nothing but dots names no exchange either.
    for (name, _) in SERVICES.iter().filter(|(_, on_bus)| *on_bus) {
        let out = service(name)
            .env("DATABASE_URL", "postgres://db/x")
            .arg("--bus-prefix=..")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(stderr.contains("--bus-prefix"), "{name}: {stderr}");
    }
}
