//! The `sql-*` commands: database reachability and the schema migrations.

use anyhow::Context;
use chrono::{SecondsFormat, Utc};
use gitcluster_migrations::{self as schema, Backoff, MIGRATIONS, Progress};
use serde_json::json;

use crate::{Format, print_json};

/// Flags of `sql-migrate`.
#[derive(Debug, clap::Args)]
pub(crate) struct MigrateArgs {
    /// Also print the SQL of each migration as it is applied.
    #[arg(long)]
    verbose: bool,
    /// Tolerate applied migrations this binary does not know (a newer binary applied
    /// them); with `--ignore-unknown=false` they are an error.
    #[arg(
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    ignore_unknown: bool,
}

/// Flags of `sql-migrate-down`.
#[derive(Debug, clap::Args)]
pub(crate) struct MigrateDownArgs {
    /// How many of the newest applied migrations to roll back.
    #[arg(value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Really roll back; without it, only print what would be rolled back.
    #[arg(short = 'f', long = "force")]
    force: bool,
}

/// Operator commands fail fast: one attempt, no retry.
pub(crate) async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    Ok(schema::connect(url, Backoff::ONCE, |_, _, _| {}).await?)
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `sql-ping`: connects and runs `SELECT 1`.
pub(crate) async fn ping(url: &str, format: Format) -> anyhow::Result<()> {
    let client = connect(url).await?;
    client
        .simple_query("SELECT 1")
        .await
        .context("run SELECT 1")?;
    match format {
        Format::Text => say!("gitcluster sql-ping: OK"),
        Format::Json => print_json(&json!({ "ok": true })),
    }
    Ok(())
}

/// `sql-migrate`: applies pending migrations, printing progress as it goes.
pub(crate) async fn migrate(url: &str, args: &MigrateArgs, format: Format) -> anyhow::Result<()> {
    let mut client = connect(url).await?;
    let before = schema::status(&client).await?;
    let unknown: Vec<&str> = before
        .iter()
        .filter(|s| s.unknown)
        .map(|s| s.id.as_str())
        .collect();
    if !args.ignore_unknown && !unknown.is_empty() {
        return Err(schema::SchemaError::Unknown {
            unknown: unknown.join(", "),
        }
        .into());
    }
    let pending = before.iter().filter(|s| s.applied_at.is_none()).count();
    if format == Format::Text {
        if pending == 0 {
            say!("gitcluster sql-migrate: all migrations are up");
            return Ok(());
        }
        say!("gitcluster sql-migrate: migrations to apply: {pending}");
        say!();
    }
    let mut events = Vec::new();
    let applied = schema::migrate(&mut client, |p| match p {
        Progress::Started(id) => {
            let at = now();
            if format == Format::Text {
                say!("= {at} {id}: migrating");
                if args.verbose
                    && let Some(m) = MIGRATIONS.iter().find(|m| m.id == id)
                {
                    for line in m.up.lines() {
                        say!("\t{line}");
                    }
                }
            }
            events.push(json!({ "id": id, "started_at": at }));
        }
        Progress::Finished(id, took) => {
            if format == Format::Text {
                say!("== {} {id}: applied ({took:.2?})", now());
            }
            if let Some(ev) = events.last_mut() {
                ev["duration_ms"] = json!(took.as_secs_f64() * 1000.0);
            }
        }
    })
    .await?;
    match format {
        Format::Text => say!(
            "gitcluster sql-migrate: OK (applied {} migrations)",
            applied.len()
        ),
        Format::Json => print_json(&json!({ "applied": events, "ignored_unknown": unknown })),
    }
    Ok(())
}

/// `sql-migrate-status`: the table of known and applied migrations.
pub(crate) async fn status(url: &str, format: Format) -> anyhow::Result<()> {
    let client = connect(url).await?;
    let rows = schema::status(&client).await?;
    let applied = |s: &schema::MigrationStatus| {
        s.applied_at
            .map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, true))
    };
    match format {
        Format::Text => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|s| {
                    let value = match (s.unknown, applied(s)) {
                        (true, _) => "unknown migration".to_owned(),
                        (false, Some(at)) => at,
                        (false, None) => "no".to_owned(),
                    };
                    vec![s.id.clone(), value]
                })
                .collect();
            say!(
                "{}",
                crate::table::render(&["Migration", "Applied"], &cells).trim_end()
            );
        }
        Format::Json => {
            let list: Vec<_> = rows
                .iter()
                .map(|s| json!({ "id": s.id, "applied_at": applied(s), "unknown": s.unknown }))
                .collect();
            print_json(&json!({ "migrations": list }));
        }
    }
    Ok(())
}

/// `sql-migrate-down N [-f]`: dry run by default.
pub(crate) async fn migrate_down(
    url: &str,
    args: &MigrateDownArgs,
    format: Format,
) -> anyhow::Result<()> {
    let mut client = connect(url).await?;
    let n = usize::try_from(args.count).context("convert count")?;
    if !args.force {
        let plan = schema::plan_down(&client, n).await?;
        match format {
            Format::Text => {
                say!("DRY RUN -- would roll back:");
                say!();
                for id in &plan {
                    say!("- {id}");
                }
                say!();
                say!("To apply these migrations run with -f");
            }
            Format::Json => print_json(&json!({ "dry_run": true, "migrations": plan })),
        }
        return Ok(());
    }
    let done = schema::migrate_down(&mut client, n, |p| {
        if format == Format::Text {
            match p {
                Progress::Started(id) => say!("= {} {id}: rolling back", now()),
                Progress::Finished(id, took) => say!("== {} {id}: rolled back ({took:.2?})", now()),
            }
        }
    })
    .await?;
    match format {
        Format::Text => say!("OK (applied {} \"down\" migrations)", done.len()),
        Format::Json => print_json(&json!({ "dry_run": false, "migrations": done })),
    }
    Ok(())
}
