//! `gitcluster`: the operator CLI of a gitcluster deployment. Subcommand names, flags
//! and output follow Praefect's (`praefect sql-migrate` becomes `gitcluster
//! sql-migrate`), plus `--format json` for scripts.
//!
//! Exit codes: 0 on success, 1 when the command failed (one line on stderr), 2 for
//! bad flags.

/// `println!` that ignores a closed stdout (`gitcluster sql-migrate | head`) instead of
/// panicking in the middle of a migration.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod repository;
mod sql;
mod table;
mod topology;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

/// Administer a gitcluster deployment: its database schema, topology and repositories.
#[derive(Debug, Parser)]
#[command(name = "gitcluster", version)]
struct Cli {
    /// PostgreSQL URL of the cluster database (required by the sql-*, topology and
    /// list-storages commands).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Output format: `text` for people, `json` (one document on stdout) for scripts.
    #[arg(long, value_enum, default_value_t = Format::Text, global = true)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Human-readable lines, as Praefect prints them.
    Text,
    /// One JSON document.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that the database is reachable: prints `gitcluster sql-ping: OK`.
    SqlPing,
    /// Apply every pending schema migration, under an advisory lock.
    SqlMigrate(sql::MigrateArgs),
    /// Show every known and applied migration and when it was applied.
    SqlMigrateStatus,
    /// Roll back the newest N migrations: a dry run unless -f is given.
    SqlMigrateDown(sql::MigrateDownArgs),
    /// Create an empty repository through a gitcluster.v1 gRPC endpoint.
    ///
    /// The endpoint is a router or, directly, a storage node. The token comes from
    /// `GITCLUSTER_TOKEN` or `--token-file`.
    CreateRepository(repository::CreateArgs),
    /// Change or show the cluster's virtual storages and storage nodes.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// List every storage node: VIRTUAL_STORAGE, NODE, ADDRESS (as Praefect prints).
    ListStorages(topology::ShowArgs),
}

#[derive(Debug, Subcommand)]
enum TopologyCommand {
    /// Make the database's topology match a TOML file, in one transaction.
    ///
    /// Adds and updates the virtual storages and storages of the file and removes those
    /// not in it; applying the same file again changes nothing. Removing a storage that
    /// is still the primary of a repository, or a virtual storage holding repositories,
    /// is refused unless --force is given. Prints one line per change.
    #[command(after_help = topology::TOPOLOGY_FILE_HELP)]
    Apply(topology::ApplyArgs),
    /// Show every virtual storage, its nodes and its default replication factor.
    Show(topology::ShowArgs),
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::SqlPing => "sql-ping",
            Command::SqlMigrate(_) => "sql-migrate",
            Command::SqlMigrateStatus => "sql-migrate-status",
            Command::SqlMigrateDown(_) => "sql-migrate-down",
            Command::CreateRepository(_) => "create-repository",
            Command::Topology(TopologyCommand::Apply(_)) => "topology apply",
            Command::Topology(TopologyCommand::Show(_)) => "topology show",
            Command::ListStorages(_) => "list-storages",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = cli.command.name();
    let database_url = || match &cli.database_url {
        Some(url) => url.clone(),
        // Same exit code (2) and shape as any other missing flag.
        None => Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                format!("{name} needs --database-url (or DATABASE_URL)"),
            )
            .exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gitcluster {name}: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let format = cli.format;
    let result = runtime.block_on(async {
        match &cli.command {
            Command::SqlPing => sql::ping(&database_url(), format).await,
            Command::SqlMigrate(args) => sql::migrate(&database_url(), args, format).await,
            Command::SqlMigrateStatus => sql::status(&database_url(), format).await,
            Command::SqlMigrateDown(args) => sql::migrate_down(&database_url(), args, format).await,
            Command::CreateRepository(args) => repository::create(args, format).await,
            Command::Topology(TopologyCommand::Apply(args)) => {
                topology::apply(&database_url(), args, format).await
            }
            Command::Topology(TopologyCommand::Show(args)) => {
                topology::show(&database_url(), args, format).await
            }
            Command::ListStorages(args) => {
                topology::list_storages(&database_url(), args, format).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gitcluster {name}: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Prints `value` as one pretty JSON document on stdout.
pub(crate) fn print_json(value: &serde_json::Value) {
    say!("{value:#}");
}

/// The error and its causes joined with ": ", skipping a cause whose text the line
/// already ends with (some errors print their source in their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
