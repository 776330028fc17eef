//! `GET /metrics` of the examples: this crate's metrics (feature `metrics`) in the
//! Prometheus text format, rendered by `metrics-exporter-prometheus` in an axum
//! route, so the API serves them on its own port with no listener of their own.
//!
//! An application does the same: install a recorder once at start-up, then render
//! it where its scraper looks. Built without the feature, the route says how to
//! turn it on.

use axum::routing::get;
use axum::Router;

/// The `/metrics` route, with the process's Prometheus recorder (installed by the
/// first call; needs a Tokio runtime).
#[cfg(feature = "metrics")]
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let handle = recorder().clone();
    Router::new().route("/metrics", get(move || async move { handle.render() }))
}

/// Installs the process's recorder now, so that nothing recorded before the first
/// scrape is lost (a figure recorded with no recorder installed goes nowhere).
/// Needs a Tokio runtime; nothing without the feature.
pub fn install() {
    #[cfg(feature = "metrics")]
    recorder();
}

#[cfg(feature = "metrics")]
fn recorder() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    use metrics_exporter_prometheus::PrometheusBuilder;
    use std::sync::OnceLock;
    use std::time::Duration;
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            // Every `_seconds` metric as a Prometheus histogram (aggregatable across
            // replicas) rather than the exporter's default summary.
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ])
            .expect("the buckets are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        tower_bearer::metrics::describe();
        // Without the exporter's own listener, its upkeep is ours.
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        handle
    })
}

/// Built without the `metrics` feature: `/metrics` says how to get them.
#[cfg(not(feature = "metrics"))]
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    use axum::http::StatusCode;
    Router::new().route(
        "/metrics",
        get(|| async {
            (
                StatusCode::NOT_FOUND,
                "tower-bearer was built without its `metrics` feature: run the example with --features metrics\n",
            )
        }),
    )
}
