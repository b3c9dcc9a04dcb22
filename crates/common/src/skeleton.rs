//! One definition of a service that is not built yet (election, reconciler and Geo
//! log cursor until their issues fill them): its configuration (admin port, database
//! URL, and the job bus when it will speak it) and a `run` that passes the schema gate
//! and serves the admin port, with no work loop.
//!
//! [`skeleton_service!`](crate::skeleton_service) expands in the service's crate,
//! which must depend on `clap`, `tokio-util`, `tracing`, `anyhow` and
//! `gitcluster-migrations` (the schema gate).

/// Defines `Config` (a `clap::Parser` implementing `ServiceConfig`) and
/// `run(config, shutdown)` for a skeleton service.
///
/// `label` names the service in logs and `/healthz`; `name` and `about` are the
/// binary's; `metrics_env` and `metrics_default` are the admin port's environment
/// variable and default address; `bus: true` adds (and validates) `--amqp-url` and
/// `--bus-prefix`, which the skeleton does not connect to yet.
#[macro_export]
macro_rules! skeleton_service {
    (label: $label:literal, name: $name:literal, about: $about:literal,
     metrics_env: $env:literal, metrics_default: $default:literal, bus: true) => {
        $crate::skeleton_service!(@define $label, $name, $about, $env, $default,
            {
                /// `--amqp-url` and `--bus-prefix` (validated; the skeleton does not connect yet).
                #[command(flatten)]
                pub bus: $crate::service::BusArgs,
            },
            |c: &Config| c.bus.validate(),
            |c: &Config| c.bus.dump());
    };
    (label: $label:literal, name: $name:literal, about: $about:literal,
     metrics_env: $env:literal, metrics_default: $default:literal, bus: false) => {
        $crate::skeleton_service!(@define $label, $name, $about, $env, $default, {},
            |_: &Config| ::anyhow::Ok(()),
            |_: &Config| ::std::string::String::new());
    };
    (@define $label:literal, $name:literal, $about:literal, $env:literal, $default:literal,
     { $($bus_field:tt)* }, $bus_validate:expr, $bus_dump:expr) => {
        /// The service's configuration: every flag, its environment variable and default.
        #[derive(Debug, Clone, ::clap::Parser)]
        #[command(name = $name, version, about = $about)]
        pub struct Config {
            /// Address of the admin HTTP port serving `/metrics` and `/healthz`.
            #[arg(long, env = $env, default_value = $default)]
            pub metrics_listen: ::std::net::SocketAddr,
            /// `--database-url`.
            #[command(flatten)]
            pub database: $crate::database::DatabaseArgs,
            $($bus_field)*
            /// Print the effective configuration (secrets redacted) and exit.
            #[arg(long)]
            pub dump_config: bool,
        }

        impl $crate::service::ServiceConfig for Config {
            fn validate(&self) -> ::anyhow::Result<()> {
                self.database.validate()?;
                ($bus_validate)(self)
            }

            fn dump_requested(&self) -> bool {
                self.dump_config
            }

            fn dump(&self) -> ::std::string::String {
                format!(
                    "metrics_listen = \"{}\"\n{}{}",
                    self.metrics_listen,
                    self.database.dump(),
                    ($bus_dump)(self),
                )
            }
        }

        /// Runs the service until `shutdown` fires. Fails with a
        /// `gitcluster_migrations::SchemaError` when the database is unreachable or its
        /// schema is not the one this build expects.
        pub async fn run(
            config: Config,
            shutdown: ::tokio_util::sync::CancellationToken,
        ) -> ::anyhow::Result<()> {
            let gate = async {
                ::gitcluster_migrations::wait_for_schema(
                    &config.database.database_url,
                    |attempt, error, delay| {
                        ::tracing::warn!(attempt, %error, ?delay, "database not reachable, retrying");
                    },
                )
                .await
                .map_err(::anyhow::Error::from)
            };
            $crate::admin::serve_skeleton($label, config.metrics_listen, gate, shutdown).await
        }
    };
}
