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

    /// The server's `host:port` in [`url`](Self::url) (port 5432 when unset).
    ///
    /// # Panics
    /// When the URL has no `scheme://authority/` shape.
    pub fn server_address(&self) -> String {
        let (_, host, _) = url_parts(&self.url);
        if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:5432")
        }
    }

    /// [`url`](Self::url) with the server's `host:port` replaced by `addr`, for
    /// connections that must pass through a relay.
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        let (before, _, path) = url_parts(&self.url);
        format!("{before}{addr}{path}")
    }
}

/// A `scheme://[user@]host[:port]/db[?query]` URL in three parts: everything up to
/// the host, `host[:port]`, and `/db[?query]`.
///
/// # Panics
/// When the URL has no `scheme://authority/` shape.
fn url_parts(url: &str) -> (&str, &str, &str) {
    let start = url.find("://").expect("scheme") + 3;
    let end = start + url[start..].find('/').expect("path");
    let host_start = url[start..end]
        .rfind('@')
        .map_or(start, |at| start + at + 1);
    (&url[..host_start], &url[host_start..end], &url[end..])
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
    let (before, host, path) = url_parts(url);
    let query = path.find('?').map_or("", |q| &path[q..]);
    format!("{before}{host}/{db}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_address_is_found_and_replaced() {
        let db = TestDb {
            name: "t".into(),
            url: "postgres://postgres@127.0.0.1:5432/t?sslmode=disable".into(),
        };
        assert_eq!(db.server_address(), "127.0.0.1:5432");
        let relay: std::net::SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        assert_eq!(
            db.url_via(relay),
            "postgres://postgres@127.0.0.1:4000/t?sslmode=disable"
        );
        let bare = TestDb {
            name: "t".into(),
            url: "postgres://db.example/t".into(),
        };
        assert_eq!(bare.server_address(), "db.example:5432");
        assert_eq!(bare.url_via(relay), "postgres://127.0.0.1:4000/t");
        assert_eq!(
            replace_db(&db.url, "other"),
            "postgres://postgres@127.0.0.1:5432/other?sslmode=disable"
        );
        assert_eq!(
            replace_db(&bare.url, "other"),
            "postgres://db.example/other"
        );
        // Not dropped: the database does not exist.
        std::mem::forget(db);
        std::mem::forget(bare);
    }
}
