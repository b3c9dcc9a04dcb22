//! Polling instead of sleeping: `eventually!` retries a check until it holds.

use std::time::Duration;

/// How long `eventually!` keeps trying: `GITCLUSTER_TEST_PATIENCE_SECS`, default 60.
pub fn patience() -> Duration {
    let secs = std::env::var("GITCLUSTER_TEST_PATIENCE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// Retries an async block returning `anyhow::Result<T>` until it succeeds or the
/// patience runs out; then panics with the last error.
#[macro_export]
macro_rules! eventually {
    ($what:expr, $body:expr) => {
        $crate::eventually_impl($what, || async { $body }).await
    };
}

#[doc(hidden)]
pub async fn eventually_impl<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + patience();
    let mut delay = Duration::from_millis(20);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("eventually {what}: gave up after {:?}: {e:#}", patience())
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        }
    }
}
