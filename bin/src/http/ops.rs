//! For operators and readers: health, Prometheus metrics, the OpenAPI document, the docs page
//! and the dashboard.

use std::fmt::Write as _;

use actix_web::HttpResponse;
use actix_web::web::{self, Json};
use nexa_runtime::JobState;
use serde::Serialize;
use utoipa::ToSchema;

use super::State;
use super::auth::Reader;
use super::error::{ApiError, ErrorBody};
use super::responses::ReadErrors;

/// Whether the server is well.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`.
    pub(crate) status: String,
}

/// Whether the server and its store answer.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses(
        (status = 200, description = "Up", body = Health),
        (status = 503, description = "The store does not answer", body = ErrorBody),
    )
)]
pub(crate) async fn healthz(state: web::Data<State>) -> Result<Json<Health>, ApiError> {
    if let Some(why) = state.plane.failure() {
        return Err(ApiError::unavailable(why.to_owned()));
    }
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
        ReadErrors,
    )
)]
pub(crate) async fn metrics(_: Reader, state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let mut out = String::new();
    out.push_str("# HELP nexa_jobs Jobs by status.\n# TYPE nexa_jobs gauge\n");
    let mut queued = 0;
    // One snapshot: the counts add up to the jobs stored at one moment.
    for (s, n) in state.plane.counts().await? {
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
        .filter(|w| w.is_alive(now, state.plane.config().store.worker_ttl))
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
    state
        .traffic
        .render(&mut out, |name| state.plane.replicas(Some(name)).len());
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
    static POLICY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let html = include_str!("docs.html");
    page(POLICY.get_or_init(|| content_policy(html))).body(html)
}

/// The dashboard.
pub(crate) async fn dashboard() -> HttpResponse {
    static POLICY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let html = include_str!("dashboard.html");
    page(POLICY.get_or_init(|| content_policy(html)))
        .insert_header(("Cache-Control", "no-cache"))
        .body(html)
}

/// An HTML page's answer with its security headers: the page runs only its own script,
/// talks only to this server, and is never framed by another site.
fn page(policy: &str) -> actix_web::HttpResponseBuilder {
    let mut res = HttpResponse::Ok();
    res.content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", policy.to_owned()))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"));
    res
}

/// The Content-Security-Policy of a page whose one script is inline: that script by its
/// SHA-256, styles of the page, and connections to this origin only.
fn content_policy(html: &str) -> String {
    use sha2::Digest as _;
    let script = html
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map_or("", |(script, _)| script);
    let digest = sha2::Sha256::digest(script.as_bytes());
    format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'",
        base64(&digest)
    )
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn the_policy_names_the_page_s_own_script() {
        let policy = content_policy("<p>x</p><script>alert(1)</script>");
        // sha256("alert(1)"), base64
        assert!(
            policy.contains("script-src 'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"),
            "{policy}"
        );
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    }
}
