//! `gitcluster-gateway`: serves real git clients over smart HTTP and carries every
//! request to a `gitcluster.v1` gRPC endpoint (a storage node, or the router), the way
//! GitLab's Workhorse fronts Gitaly. It holds no repository data itself.
//!
//! [`run`] binds the listeners, then serves until the shutdown token fires. Tests that
//! need the bound ports use [`Listeners::bind`] and [`serve`].

mod call;
pub mod client_auth;
pub mod config;
mod default_branch;
mod framing;
mod git_error;
mod http_server;
mod push_to_create;
mod request_body;
pub mod route;
mod smart_http;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use gitcluster_common::admin::{self, Readiness};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use call::{BYTES_METRIC, MESSAGES_METRIC, REQUESTS_METRIC};
pub use config::{Cli, Config};

/// The gateway's bound sockets.
pub struct Listeners {
    /// Git smart-HTTP port.
    pub http: TcpListener,
    /// Admin port: `/metrics` and `/healthz`.
    pub metrics: TcpListener,
}

impl Listeners {
    /// Binds both listeners of `config` and logs the bound addresses.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let http = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind http listener on {}", config.listen))?;
        let metrics = TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| format!("bind metrics listener on {}", config.metrics_listen))?;
        let listeners = Listeners { http, metrics };
        info!(addr = %listeners.http_addr()?, "http listener bound");
        info!(addr = %listeners.metrics_addr()?, "metrics listener bound");
        Ok(listeners)
    }

    /// Address of the git smart-HTTP port.
    pub fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        self.http.local_addr().context("read http listener address")
    }

    /// Address of the admin port.
    pub fn metrics_addr(&self) -> anyhow::Result<SocketAddr> {
        self.metrics
            .local_addr()
            .context("read metrics listener address")
    }
}

/// Binds the listeners of `config`, then serves until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config).await?;
    serve(config, listeners, shutdown).await
}

/// Serves on already bound `listeners` until `shutdown` fires.
///
/// Shutdown order: `/healthz` turns 503 and the HTTP port stops accepting; in-flight
/// requests (a long push, say) get `config.drain_timeout` to finish; then this returns
/// and whatever still runs is dropped with the runtime. Upstream calls of dropped
/// requests are reset, never ended cleanly, so no half push is applied.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate().context("validate configuration")?;
    let upstream = upstream::Upstream::connect_lazy(
        &config.upstream,
        config.upstream_token.as_deref(),
        config.upstream_connections,
    )?;
    let state = Arc::new(smart_http::AppState {
        upstream,
        auth: config.auth_token.clone().map(client_auth::ClientAuth::new),
        push_to_create: config.push_to_create,
        body_idle_timeout: config.body_idle_timeout,
    });
    let app = smart_http::router(state);

    let ready = Readiness::default();
    let mut admin = tokio::spawn(admin::serve(
        listeners.metrics,
        prometheus()?,
        ready.clone(),
        shutdown.clone(),
    ));

    let stop_accepting = {
        let shutdown = shutdown.clone();
        let ready = ready.clone();
        async move {
            shutdown.cancelled().await;
            ready.set(false);
            info!("shutdown requested, draining in-flight requests");
        }
    };
    let server = http_server::serve(
        listeners.http,
        app,
        config.header_read_timeout,
        stop_accepting,
    );
    tokio::pin!(server);
    ready.set(true);
    info!(upstream = %config.upstream, push_to_create = config.push_to_create, auth = config.auth_token.is_some(), "gateway serving");

    let drain_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(config.drain_timeout).await;
    };
    // Failure policy: the admin port is part of the service; if it dies before shutdown
    // the process exits instead of serving without health checks.
    let admin_died = async {
        let outcome = (&mut admin).await;
        if shutdown.is_cancelled() && matches!(outcome, Ok(Ok(()))) {
            // Stopped by the token: let the drain finish.
            std::future::pending::<()>().await;
        }
        match outcome {
            Ok(Ok(())) => anyhow::anyhow!("admin server stopped"),
            Ok(Err(e)) => anyhow::Error::new(e).context("serve admin port"),
            Err(e) => anyhow::Error::new(e).context("admin server task"),
        }
    };
    let result = tokio::select! {
        () = &mut server => Ok(()),
        () = drain_deadline => {
            warn!(timeout = ?config.drain_timeout, "drain deadline passed, dropping in-flight requests");
            Ok(())
        }
        e = admin_died => Err(e),
    };
    shutdown.cancel();
    if !admin.is_finished() {
        // The admin server stops with the token; do not wait on a stuck scrape.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut admin).await;
        admin.abort();
    }
    info!("gateway stopped");
    result
}

/// The process-wide Prometheus handle (shared by every gateway in one process); if a
/// different recorder was installed first, the admin port serves an empty exposition
/// instead of failing.
fn prometheus() -> anyhow::Result<PrometheusHandle> {
    Ok(admin::install_metrics().unwrap_or_else(|e| {
        warn!(error = %format!("{e:#}"), "gateway metrics not exported");
        PrometheusBuilder::new().build_recorder().handle()
    }))
}
