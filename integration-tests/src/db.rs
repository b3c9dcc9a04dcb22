//! A fresh PostgreSQL database per test, so tests run in parallel without sharing state.

use tokio_postgres::NoTls;

/// Base URL of the test server: `GITCLUSTER_TEST_DATABASE_URL`, default the local
/// server with trust auth.
pub fn base_url() -> String {
    std::env::var("GITCLUSTER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database created for one test and dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDb {
    /// Database name, `t_<uuid>`.
    pub name: String,
    /// Connection URL of the database.
    pub url: String,
}

impl TestDb {
    /// Creates the database; runs every migration when `migrated`.
    pub async fn create(migrated: bool) -> TestDb {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&base_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = replace_db(&base_url(), &name);
        if migrated {
            let mut client = connect(&url).await;
            gitcluster_migrations::migrate(&mut client, |_| {})
                .await
                .expect("migrate test database");
        }
        TestDb { name, url }
    }

    /// A new connection to the database.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop needs async work: run it on a private runtime in its own thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) = tokio_postgres::connect(&base_url(), NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Connects or panics with a hint on how to start PostgreSQL.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to PostgreSQL at {url}: {e}; `make test` starts it (see .ci/run)"
            )
        });
    tokio::spawn(conn);
    client
}

/// `url` with its database name replaced by `db`.
pub fn replace_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let host_part = base.rsplit_once('/').map_or(base, |(h, _)| h);
    format!("{host_part}/{db}{query}")
}
