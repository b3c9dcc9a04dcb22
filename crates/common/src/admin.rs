//! The admin HTTP port every service exposes: `/metrics` (Prometheus text) and
//! `/healthz` (200 while the service is serving, 503 while starting or draining).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Whether the service reports itself healthy on `/healthz`.
#[derive(Clone, Default, Debug)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the service as serving (or not, while draining).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    /// Current state.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The process-wide Prometheus recorder's handle. The first call installs the
/// recorder and a task that keeps histogram buckets bounded (so call it inside the
/// runtime); later calls return the same handle, so several services may run in one
/// process (tests). Fails only when a different recorder was installed first.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut installed = HANDLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .context("install metrics recorder")?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    *installed = Some(handle.clone());
    Ok(handle)
}

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    ready: Readiness,
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    ready: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AdminState>| async move { s.metrics.render() }),
        )
        .route(
            "/healthz",
            get(|State(s): State<AdminState>| async move {
                if s.ready.get() {
                    (StatusCode::OK, "ok\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .with_state(AdminState { metrics, ready });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// What a service without work loops yet (a skeleton) does: bind the admin port,
/// answer 503 on `/healthz` until `gate` (the schema check) passes, then 200 until
/// `shutdown`. A failed gate is returned as is, so its exit code survives.
pub async fn serve_skeleton<G, T>(
    service: &str,
    metrics_listen: std::net::SocketAddr,
    gate: G,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    G: std::future::Future<Output = anyhow::Result<T>>,
{
    use anyhow::Context as _;
    let listener = TcpListener::bind(metrics_listen)
        .await
        .context("bind metrics listener")?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listener bound");
    let ready = Readiness::default();
    let admin = tokio::spawn(serve(
        listener,
        install_metrics()?,
        ready.clone(),
        shutdown.clone(),
    ));
    tokio::select! {
        passed = gate => drop(passed?),
        () = shutdown.cancelled() => return Ok(()),
    }
    ready.set(true);
    tracing::info!("{service} skeleton ready: schema verified; no work loops yet");
    // The admin port is the only task: it returns when shutdown fires, or early on
    // failure, which ends the process non-zero.
    admin
        .await
        .context("admin port task")?
        .context("serve admin port")?;
    Ok(())
}
