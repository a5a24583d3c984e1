//! Deployed models: `/api/endpoints` lists them, and each endpoint's stable URL routes
//! inference to its ready replicas — `POST /api/endpoints/{name}/predict` (rows) and the Open
//! Inference Protocol under `/v2` — round robin, trying the next replica when one fails.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::web::{self, Bytes, Json};
use actix_web::{HttpRequest, HttpResponse};
use nexa_runtime::{Job, JobParams};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::State;
use super::auth::{Reader, Writer};
use super::error::{ApiError, ErrorBody};
use super::jobs::audit;
use super::responses::{
    NoDeployJob, NoReplicaAnswered, NoReplicaReady, NoSuchEndpoint, ReadErrors, ReadOnly,
    Unauthorized,
};

/// One replica of an endpoint: a deploy job.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReplicaBody {
    pub(crate) job_id: String,
    /// `queued`, `assigned`, `running`…: the deploy job's status.
    pub(crate) status: String,
    pub(crate) worker_id: Option<String>,
    /// Where the replica serves, once ready.
    pub(crate) url: Option<String>,
    /// Passed its smoke test and heard from lately: requests go to it.
    pub(crate) ready: bool,
}

/// A deployed model.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EndpointBody {
    /// The name requests use: the deploy job's target, or the model's name.
    pub(crate) name: String,
    /// The model as the newest deploy job named it.
    pub(crate) model_id: String,
    /// Replicas ready to answer.
    pub(crate) ready_replicas: usize,
    /// The stable URL of its plain predictions (`POST` rows).
    pub(crate) predict_url: String,
    /// Its Open Inference Protocol URL (`POST …/infer`).
    pub(crate) infer_url: String,
    pub(crate) replicas: Vec<ReplicaBody>,
}

/// The endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EndpointsBody {
    pub(crate) endpoints: Vec<EndpointBody>,
}

/// The base URL the caller used, for the stable URLs it is shown.
fn base(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

async fn endpoints_of(state: &State, req: &HttpRequest) -> Result<Vec<EndpointBody>, ApiError> {
    let jobs: Vec<Job> = state.plane.deployments().await?;
    let ready = state.plane.replicas(None);
    let mut by_name: BTreeMap<String, EndpointBody> = BTreeMap::new();
    let base = base(req);
    for job in jobs {
        let JobParams::Deploy(p) = &job.spec.params else {
            continue;
        };
        let name = nexa_actors::endpoint_name(&p.model_id, &p.target);
        let replica = ready.iter().find(|r| r.job == job.id);
        let endpoint = by_name.entry(name.clone()).or_insert_with(|| EndpointBody {
            predict_url: format!("{base}/api/endpoints/{name}/predict"),
            infer_url: format!("{base}/v2/models/{name}/infer"),
            name,
            model_id: p.model_id.clone(),
            ready_replicas: 0,
            replicas: Vec::new(),
        });
        endpoint.ready_replicas += usize::from(replica.is_some());
        endpoint.replicas.push(ReplicaBody {
            job_id: job.id.to_string(),
            status: job.state.as_str().to_owned(),
            worker_id: job.live_attempt().map(|a| a.worker.to_string()),
            url: replica.map(|r| r.url.clone()),
            ready: replica.is_some(),
        });
    }
    Ok(by_name.into_values().collect())
}

/// The deployed models and their replicas.
#[utoipa::path(
    get, path = "/api/endpoints", tag = "endpoints",
    responses(
        (status = 200, description = "The endpoints", body = EndpointsBody),
        ReadErrors,
    )
)]
pub(crate) async fn list(
    _: Reader,
    req: HttpRequest,
    state: web::Data<State>,
) -> Result<Json<EndpointsBody>, ApiError> {
    Ok(Json(EndpointsBody {
        endpoints: endpoints_of(&state, &req).await?,
    }))
}

/// One endpoint.
#[utoipa::path(
    get, path = "/api/endpoints/{name}", tag = "endpoints",
    params(("name" = String, Path, description = "The endpoint's name")),
    responses(
        (status = 200, description = "The endpoint", body = EndpointBody),
        ReadErrors, NoDeployJob,
    )
)]
pub(crate) async fn get(
    _: Reader,
    req: HttpRequest,
    state: web::Data<State>,
    name: web::Path<String>,
) -> Result<Json<EndpointBody>, ApiError> {
    let all = endpoints_of(&state, &req).await?;
    let names: Vec<String> = all.iter().map(|e| e.name.clone()).collect();
    all.into_iter()
        .find(|e| e.name == *name)
        .map(Json)
        .ok_or_else(|| not_deployed(&name, &names))
}

/// What an undeploy cancelled.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UndeployedBody {
    pub(crate) name: String,
    /// The deploy jobs cancelled (every replica of the endpoint).
    pub(crate) cancelled: Vec<String>,
}

/// Undeploys an endpoint: cancels the deploy job of each of its replicas.
#[utoipa::path(
    delete, path = "/api/endpoints/{name}", tag = "endpoints",
    params(("name" = String, Path, description = "The endpoint's name")),
    responses(
        (status = 200, description = "Its deploy jobs, cancelled or cancelling", body = UndeployedBody),
        ReadErrors, ReadOnly, NoDeployJob,
    )
)]
pub(crate) async fn undeploy(
    Writer(caller): Writer,
    state: web::Data<State>,
    name: web::Path<String>,
) -> Result<Json<UndeployedBody>, ApiError> {
    let deployments = state.plane.deployments().await?;
    let mut names = Vec::new();
    let mut cancelled = Vec::new();
    for job in deployments {
        let JobParams::Deploy(p) = &job.spec.params else {
            continue;
        };
        let endpoint = nexa_actors::endpoint_name(&p.model_id, &p.target);
        if endpoint != *name {
            names.push(endpoint);
            continue;
        }
        match state
            .plane
            .cancel(job.id, format!("endpoint {:?} undeployed", name.as_str()))
            .await
        {
            Ok(_) => {
                audit(&caller, "undeploy", job.id);
                cancelled.push(job.id.to_string());
            }
            // It finished or went meanwhile: nothing left to undeploy there.
            Err(
                nexa_actors::PlaneError::NotFound(_)
                | nexa_actors::PlaneError::Conflict(nexa_runtime::StoreError::Transition(_)),
            ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if cancelled.is_empty() {
        names.sort();
        names.dedup();
        return Err(not_deployed(&name, &names));
    }
    Ok(Json(UndeployedBody {
        name: name.into_inner(),
        cancelled,
    }))
}

fn not_deployed(name: &str, names: &[String]) -> ApiError {
    ApiError::not_found(if names.is_empty() {
        format!("no endpoint {name:?}: nothing is deployed (submit a deploy job)")
    } else {
        format!("no endpoint {name:?}; deployed: {}", names.join(", "))
    })
}

/// Sends `body` to `path` on the ready replicas of `name`, the next one first, and answers
/// with the first replica that answers.
async fn forward(
    state: &State,
    name: &str,
    method: &'static str,
    path: String,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let replicas = state.plane.route(name);
    if replicas.is_empty() {
        let names = endpoints_names(state).await?;
        if !names.iter().any(|n| n == name) {
            return Err(not_deployed(name, &names));
        }
        state.traffic.record(name, Duration::ZERO, true);
        return Err(ApiError::unavailable(format!(
            "endpoint {name:?} has no ready replica yet (loading, smoke-testing, or being \
             placed again); retry shortly"
        )));
    }
    let started = std::time::Instant::now();
    let mut answered = Err(String::new());
    let mut down = Vec::new();
    for replica in replicas {
        let url = format!("{}{path}", replica.url);
        let request = match method {
            "GET" => state.proxy.get(&url),
            _ => state
                .proxy
                .post(&url)
                .header("Content-Type", "application/json")
                .body(body.clone()),
        };
        match relay(request).await {
            // A replica that answers, even with a refusal of the request, has answered.
            Ok((status, bytes)) if status < 500 => {
                answered = Ok((status, bytes, replica.job));
                break;
            }
            Ok((status, _)) => answered = Err(format!("{} answered {status}", replica.url)),
            Err(e) => answered = Err(format!("{}: {e}", replica.url)),
        }
        down.push(replica.job);
    }
    let failed = !matches!(&answered, Ok((status, ..)) if *status < 500);
    state.traffic.record(name, started.elapsed(), failed);
    // A replica that did not answer is not tried again until its worker says it serves.
    for job in down {
        state.plane.replica_failed(job);
    }
    match answered {
        Ok((status, bytes, job)) => Ok(HttpResponse::build(
            actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY),
        )
        .content_type("application/json")
        .insert_header(("X-Nexa-Replica", job.to_string()))
        .body(bytes)),
        Err(why) => Err(ApiError::from_status(
            actix_web::http::StatusCode::BAD_GATEWAY,
            format!("no replica of {name:?} answered: {why}"),
        )),
    }
}

async fn endpoints_names(state: &State) -> Result<Vec<String>, ApiError> {
    let mut names: Vec<String> = state
        .plane
        .deployments()
        .await?
        .iter()
        .filter_map(|j| match &j.spec.params {
            JobParams::Deploy(p) => Some(nexa_actors::endpoint_name(&p.model_id, &p.target)),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Predictions for rows: `{"inputs": [[...], ...]}` → `{"predictions": [[...]], "classes": [...]}`
/// (`classes` for a classifier).
#[utoipa::path(
    post, path = "/api/endpoints/{name}/predict", tag = "endpoints",
    params(("name" = String, Path, description = "The endpoint's name")),
    request_body(content = Object, description = "`{\"inputs\": [[1.0, 2.0], ...]}`, one array per row"),
    responses(
        (status = 200, description = "The predictions, one row each", body = Object),
        (status = 400, description = "Rows the model cannot take", body = Object),
        Unauthorized, NoSuchEndpoint, NoReplicaAnswered, NoReplicaReady,
    )
)]
pub(crate) async fn predict(
    _: Reader,
    state: web::Data<State>,
    name: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    forward(&state, &name, "POST", "/predict".to_owned(), body).await
}

/// Open Inference Protocol: inference.
#[utoipa::path(
    post, path = "/v2/models/{name}/infer", tag = "endpoints",
    params(("name" = String, Path, description = "The endpoint's name")),
    request_body(content = Object, description = "`{\"inputs\": [{\"name\": \"input\", \"shape\": [rows, features], \"datatype\": \"FP32\", \"data\": [...]}]}`"),
    responses(
        (status = 200, description = "`outputs`: `output` (FP32) and, for a classifier, `class`", body = Object),
        (status = 400, description = "A request the model cannot take", body = Object),
        Unauthorized, NoSuchEndpoint, NoReplicaAnswered, NoReplicaReady,
    )
)]
pub(crate) async fn infer(
    _: Reader,
    state: web::Data<State>,
    name: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let path = format!("/v2/models/{name}/infer");
    forward(&state, &name, "POST", path, body).await
}

/// Open Inference Protocol: the model's metadata.
#[utoipa::path(
    get, path = "/v2/models/{name}", tag = "endpoints",
    params(("name" = String, Path, description = "The endpoint's name")),
    responses(
        (status = 200, description = "Its inputs and outputs", body = Object),
        Unauthorized, NoSuchEndpoint, NoReplicaReady,
    )
)]
pub(crate) async fn model(
    _: Reader,
    state: web::Data<State>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let path = format!("/v2/models/{name}");
    forward(&state, &name, "GET", path, Bytes::new()).await
}

/// Open Inference Protocol: whether the model has a ready replica.
#[utoipa::path(
    get, path = "/v2/models/{name}/ready", tag = "endpoints",
    params(("name" = String, Path, description = "The endpoint's name")),
    responses(
        (status = 200, description = "A replica is ready", body = Object),
        Unauthorized, NoSuchEndpoint,
        (status = 503, description = "None is", body = ErrorBody),
    )
)]
pub(crate) async fn model_ready(
    _: Reader,
    state: web::Data<State>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let ready = state.plane.replicas(Some(&name)).len();
    if ready == 0 {
        let names = endpoints_names(&state).await?;
        if !names.contains(&name) {
            return Err(not_deployed(&name, &names));
        }
        return Err(ApiError::unavailable(format!(
            "endpoint {:?} has no ready replica",
            name.as_str()
        )));
    }
    Ok(HttpResponse::Ok().json(json!({"name": *name, "ready": true, "replicas": ready})))
}

/// Open Inference Protocol: the server is up.
#[utoipa::path(
    get, path = "/v2/health/live", tag = "endpoints",
    responses((status = 200, description = "Live", body = Object))
)]
pub(crate) async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"live": true}))
}

/// Open Inference Protocol: the server can route requests.
#[utoipa::path(
    get, path = "/v2/health/ready", tag = "endpoints",
    responses(
        (status = 200, description = "Ready", body = Object),
        (status = 503, description = "The control plane cannot work", body = ErrorBody),
    )
)]
pub(crate) async fn ready(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    if let Some(why) = state.plane.failure() {
        return Err(ApiError::unavailable(why.to_owned()));
    }
    Ok(HttpResponse::Ok().json(json!({"ready": true})))
}

/// Upper bounds (seconds) of the endpoint latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Requests to each endpoint's stable URL, for `/metrics`.
#[derive(Default)]
pub(crate) struct Traffic(std::sync::Mutex<BTreeMap<String, Counts>>);

#[derive(Default)]
struct Counts {
    requests: u64,
    errors: u64,
    /// Per bucket of [`LATENCY_BUCKETS`], then the slower ones.
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum_seconds: f64,
}

impl Traffic {
    fn record(&self, endpoint: &str, took: Duration, error: bool) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let counts = all.entry(endpoint.to_owned()).or_default();
        counts.requests += 1;
        counts.errors += u64::from(error);
        let seconds = took.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        counts.buckets[slot] += 1;
        counts.sum_seconds += seconds;
    }

    /// The Prometheus text of every endpoint's requests, errors, latency and ready replicas.
    pub(crate) fn render(&self, out: &mut String, ready: impl Fn(&str) -> usize) {
        use std::fmt::Write;
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str("# HELP nexa_endpoint_requests_total Requests to an endpoint's stable URL.\n# TYPE nexa_endpoint_requests_total counter\n");
        for (name, c) in all.iter() {
            let _ = writeln!(
                out,
                "nexa_endpoint_requests_total{{endpoint=\"{}\"}} {}",
                label(name),
                c.requests
            );
        }
        out.push_str("# HELP nexa_endpoint_errors_total Requests to an endpoint that no replica answered, or that failed on a replica (5xx).\n# TYPE nexa_endpoint_errors_total counter\n");
        for (name, c) in all.iter() {
            let _ = writeln!(
                out,
                "nexa_endpoint_errors_total{{endpoint=\"{}\"}} {}",
                label(name),
                c.errors
            );
        }
        out.push_str("# HELP nexa_endpoint_request_duration_seconds Time to answer a request to an endpoint.\n# TYPE nexa_endpoint_request_duration_seconds histogram\n");
        for (name, c) in all.iter() {
            let name = label(name);
            let mut cumulative = 0;
            for (bound, n) in LATENCY_BUCKETS.iter().zip(c.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "nexa_endpoint_request_duration_seconds_bucket{{endpoint=\"{name}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "nexa_endpoint_request_duration_seconds_bucket{{endpoint=\"{name}\",le=\"+Inf\"}} {}",
                c.requests
            );
            let _ = writeln!(
                out,
                "nexa_endpoint_request_duration_seconds_sum{{endpoint=\"{name}\"}} {}",
                c.sum_seconds
            );
            let _ = writeln!(
                out,
                "nexa_endpoint_request_duration_seconds_count{{endpoint=\"{name}\"}} {}",
                c.requests
            );
        }
        out.push_str("# HELP nexa_endpoint_replicas_ready Replicas of an endpoint ready to answer.\n# TYPE nexa_endpoint_replicas_ready gauge\n");
        for name in all.keys() {
            let _ = writeln!(
                out,
                "nexa_endpoint_replicas_ready{{endpoint=\"{}\"}} {}",
                label(name),
                ready(name)
            );
        }
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The most a replica's answer may hold (4096 rows of a wide model's outputs fit many
/// times over).
const MAX_ANSWER: usize = 256 << 20;

/// Sends `request` to a replica: its status and body, or why it did not answer.
async fn relay(request: reqwest::RequestBuilder) -> Result<(u16, Bytes), String> {
    let mut res = request.send().await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    if res.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
        return Err(format!("an answer of over {MAX_ANSWER} bytes"));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("an answer of over {MAX_ANSWER} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body.freeze()))
}

/// The pooled client the stable URLs forward with.
pub(crate) fn proxy() -> anyhow::Result<reqwest::Client> {
    use anyhow::Context;
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .context("cannot make the HTTP client the endpoints forward with")
}
