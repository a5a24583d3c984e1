//! For operators and readers: health, Prometheus metrics, the OpenAPI document, the docs page
//! and the dashboard.

use std::fmt::Write as _;

use actix_web::HttpResponse;
use actix_web::web::{self, Json};
use nexa_runtime::JobState;

use super::State;
use super::api::Health;
use super::auth::Reader;
use super::error::{ApiError, ErrorBody};

/// Whether the server and its store answer.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses(
        (status = 200, description = "Up", body = Health),
        (status = 503, description = "The store does not answer", body = ErrorBody),
    )
)]
pub(crate) async fn healthz(state: web::Data<State>) -> Result<Json<Health>, ApiError> {
    state.plane.workers().await?;
    Ok(Json(Health {
        status: "ok".to_owned(),
    }))
}

/// Prometheus metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, description = "Token missing or unknown", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn metrics(_: Reader, state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let mut out = String::new();
    out.push_str("# HELP nexa_jobs Jobs by status.\n# TYPE nexa_jobs gauge\n");
    let mut queued = 0;
    for s in JobState::ALL {
        let n = state.plane.count(s).await?;
        if s == JobState::Queued {
            queued = n;
        }
        let _ = writeln!(out, "nexa_jobs{{status=\"{}\"}} {n}", s.as_str());
    }
    let _ = writeln!(
        out,
        "# HELP nexa_queue_depth Jobs queued (ready or waiting out a retry backoff).\n# TYPE nexa_queue_depth gauge\nnexa_queue_depth {queued}"
    );
    let workers = state.plane.workers().await?;
    let now = nexa_actors::now();
    let alive = workers
        .iter()
        .filter(|w| w.is_alive(now, state.worker_ttl))
        .count();
    let _ = writeln!(
        out,
        "# HELP nexa_workers Registered workers by whether they were heard from lately.\n# TYPE nexa_workers gauge\nnexa_workers{{status=\"alive\"}} {alive}\nnexa_workers{{status=\"lost\"}} {}",
        workers.len() - alive
    );
    let metrics = state.plane.metrics();
    let h = metrics.dispatch_latency();
    out.push_str("# HELP nexa_dispatch_latency_seconds Time from queued to leased.\n# TYPE nexa_dispatch_latency_seconds histogram\n");
    for (bound, n) in nexa_actors::DISPATCH_BUCKETS.iter().zip(&h.cumulative) {
        let _ = writeln!(
            out,
            "nexa_dispatch_latency_seconds_bucket{{le=\"{bound}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "nexa_dispatch_latency_seconds_bucket{{le=\"+Inf\"}} {}\nnexa_dispatch_latency_seconds_sum {}\nnexa_dispatch_latency_seconds_count {}",
        h.count, h.sum_seconds, h.count
    );
    let _ = writeln!(
        out,
        "# HELP nexa_leases_expired_total Leases that ran out without a heartbeat.\n# TYPE nexa_leases_expired_total counter\nnexa_leases_expired_total {}",
        metrics.leases_expired()
    );
    out.push_str("# HELP nexa_http_requests_total HTTP requests answered, by status class.\n# TYPE nexa_http_requests_total counter\n");
    for (class, n) in state.requests.snapshot() {
        let _ = writeln!(out, "nexa_http_requests_total{{status=\"{class}\"}} {n}");
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out))
}

/// The OpenAPI document.
pub(crate) async fn openapi(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi.clone())
}

/// The docs page: the OpenAPI document, rendered in the browser.
pub(crate) async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("docs.html"))
}

/// The dashboard.
pub(crate) async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(include_str!("dashboard.html"))
}
