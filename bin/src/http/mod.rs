//! The HTTP bridge: the API users, the SDK, the CLI, the dashboard and HTTP workers talk to.
//! See `docs/http-api.md` for the contract; `/openapi.json` is generated from the handlers
//! here.
//!
//! Every handler answers JSON; every refusal is an [`ApiError`] with a status, a code and a
//! message (and the field, for a bad value). Bodies are read as bytes and parsed here, so that
//! a malformed body, an unknown field or an oversized body gets the same clear answer
//! everywhere.

mod api;
mod artifacts;
pub(crate) mod auth;
mod endpoints;
mod error;
mod jobs;
mod ops;
mod pipelines;
mod responses;
mod workers;

pub(crate) use workers::{FRAME_TYPE, SESSION_HEADER, copy_sessions};

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServerHandle, Service, ServiceResponse};
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpResponse, HttpServer, ResponseError};
use anyhow::{Context, Result, bail};
use nexa_actors::ControlPlane;
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use self::error::ApiError;

/// The largest request body.
pub(crate) const MAX_BODY: usize = 4 << 20;

/// What every handler shares.
pub(crate) struct State {
    pub(crate) plane: Arc<ControlPlane>,
    pub(crate) tokens: auth::Tokens,
    pub(crate) requests: RequestCounts,
    pub(crate) openapi: String,
    /// The session of each worker registered over HTTP.
    pub(crate) worker_sessions: workers::Sessions,
    /// The pooled client requests to endpoints are forwarded with.
    pub(crate) proxy: reqwest::Client,
    /// Requests to each endpoint, for `/metrics`.
    pub(crate) traffic: endpoints::Traffic,
}

/// HTTP answers by status class.
#[derive(Default)]
pub(crate) struct RequestCounts([AtomicU64; 5]);

impl RequestCounts {
    fn count(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.0[class].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Vec<(String, u64)> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("{}xx", i + 1), n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Parses a JSON body, saying what is wrong with it and, for a bad value, where.
pub(crate) fn read_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request needs a JSON body"));
    }
    let mut reader = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        use serde_json::error::Category;
        let path = e.path().to_string();
        let inner = e.into_inner();
        let reason = inner.to_string();
        let reason = reason.split(" at line ").next().unwrap_or_default();
        match inner.classify() {
            Category::Data if path != "." => ApiError::invalid(path, reason),
            Category::Data => ApiError {
                status: actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
                code: "validation_error",
                message: reason.to_owned(),
                field: None,
            },
            _ => ApiError::bad_request(format!("the body is not valid JSON: {inner}")),
        }
    })?;
    reader
        .end()
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Nexa Forge",
        description = "Submit and watch ML lifecycle jobs (generate, audit, distill, train, evaluate, deploy); workers in any language can lease and run them over HTTP. Errors are JSON: {\"error\": {\"code\", \"message\", \"field\"}}. With tokens configured, send `Authorization: Bearer <token>`.",
    ),
    paths(
        jobs::job_types, jobs::submit, jobs::submit_batch, jobs::wait_many, jobs::list, jobs::get, jobs::delete, jobs::cancel, jobs::wait, jobs::events, jobs::logs,
        jobs::started, jobs::append_logs, jobs::progress, jobs::complete, jobs::fail,
        workers::register, workers::list, workers::heartbeat, workers::next_job,
        workers::messages,
        artifacts::get, artifacts::content, artifacts::of_job, artifacts::models, artifacts::model,
        endpoints::list, endpoints::get, endpoints::undeploy, endpoints::predict, endpoints::infer, endpoints::model,
        endpoints::model_ready, endpoints::live, endpoints::ready,
        pipelines::create, pipelines::list, pipelines::get, pipelines::cancel, pipelines::rerun,
        ops::healthz, ops::metrics,
    ),
    // The shared error rows (`responses`) refer to it without registering it.
    components(schemas(error::ErrorBody)),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, as served.
pub(crate) fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

async fn not_found() -> HttpResponse {
    ApiError::not_found("no such path; the API is described at /docs").error_response()
}

/// A resource at `path` whose other methods are answered 405 with the `Allow` header.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        let mut answer = ApiError::method_not_allowed().error_response();
        answer.headers_mut().insert(
            actix_web::http::header::ALLOW,
            actix_web::http::header::HeaderValue::from_static(allow),
        );
        answer
    }))
}

/// Answers that actix itself made (a body over the limit, a broken request) as the API's
/// JSON errors, like every other.
fn as_api_error<B: MessageBody + 'static>(res: ServiceResponse<B>) -> ServiceResponse<BoxBody> {
    let foreign = res
        .response()
        .error()
        .filter(|e| e.as_error::<ApiError>().is_none())
        .map(|e| (res.status(), e.to_string()));
    match foreign {
        Some((status, message)) => {
            res.into_response(ApiError::from_status(status, message).error_response())
        }
        None => res.map_into_boxed_body(),
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/", "GET").route(web::get().to(ops::dashboard)))
        .service(resource("/docs", "GET").route(web::get().to(ops::docs)))
        .service(resource("/openapi.json", "GET").route(web::get().to(ops::openapi)))
        .service(resource("/healthz", "GET").route(web::get().to(ops::healthz)))
        .service(resource("/metrics", "GET").route(web::get().to(ops::metrics)))
        .service(
            resource("/api/jobs", "GET, POST")
                .route(web::get().to(jobs::list))
                .route(web::post().to(jobs::submit)),
        )
        .service(resource("/api/job_types", "GET").route(web::get().to(jobs::job_types)))
        // Before /api/jobs/{id}, which would take their paths.
        .service(resource("/api/jobs/batch", "POST").route(web::post().to(jobs::submit_batch)))
        .service(resource("/api/jobs/wait", "POST").route(web::post().to(jobs::wait_many)))
        .service(
            resource("/api/jobs/{id}", "GET, DELETE")
                .route(web::get().to(jobs::get))
                .route(web::delete().to(jobs::delete)),
        )
        .service(resource("/api/jobs/{id}/cancel", "POST").route(web::post().to(jobs::cancel)))
        .service(resource("/api/jobs/{id}/events", "GET").route(web::get().to(jobs::events)))
        .service(resource("/api/jobs/{id}/wait", "GET").route(web::get().to(jobs::wait)))
        .service(
            resource("/api/jobs/{id}/logs", "GET, POST")
                .route(web::get().to(jobs::logs))
                .route(web::post().to(jobs::append_logs)),
        )
        .service(resource("/api/jobs/{id}/started", "POST").route(web::post().to(jobs::started)))
        .service(resource("/api/jobs/{id}/progress", "POST").route(web::post().to(jobs::progress)))
        .service(resource("/api/jobs/{id}/complete", "POST").route(web::post().to(jobs::complete)))
        .service(resource("/api/jobs/{id}/fail", "POST").route(web::post().to(jobs::fail)))
        .service(
            resource("/api/jobs/{id}/artifacts", "GET").route(web::get().to(artifacts::of_job)),
        )
        .service(resource("/api/artifacts/{sha256}", "GET").route(web::get().to(artifacts::get)))
        .service(
            resource("/api/artifacts/{sha256}/content", "GET")
                .route(web::get().to(artifacts::content)),
        )
        .service(resource("/api/models", "GET").route(web::get().to(artifacts::models)))
        .service(resource("/api/models/{name:.+}", "GET").route(web::get().to(artifacts::model)))
        .service(resource("/api/endpoints", "GET").route(web::get().to(endpoints::list)))
        .service(
            resource("/api/endpoints/{name}", "GET, DELETE")
                .route(web::get().to(endpoints::get))
                .route(web::delete().to(endpoints::undeploy)),
        )
        .service(
            resource("/api/endpoints/{name}/predict", "POST")
                .route(web::post().to(endpoints::predict)),
        )
        .service(resource("/v2/health/live", "GET").route(web::get().to(endpoints::live)))
        .service(resource("/v2/health/ready", "GET").route(web::get().to(endpoints::ready)))
        .service(resource("/v2/models/{name}", "GET").route(web::get().to(endpoints::model)))
        .service(
            resource("/v2/models/{name}/ready", "GET").route(web::get().to(endpoints::model_ready)),
        )
        .service(
            resource("/v2/models/{name}/infer", "POST").route(web::post().to(endpoints::infer)),
        )
        .service(
            resource("/api/pipelines", "GET, POST")
                .route(web::get().to(pipelines::list))
                .route(web::post().to(pipelines::create)),
        )
        .service(resource("/api/pipelines/{id}", "GET").route(web::get().to(pipelines::get)))
        .service(
            resource("/api/pipelines/{id}/cancel", "POST").route(web::post().to(pipelines::cancel)),
        )
        .service(
            resource("/api/pipelines/{id}/rerun", "POST").route(web::post().to(pipelines::rerun)),
        )
        .service(resource("/api/workers", "GET").route(web::get().to(workers::list)))
        .service(resource("/api/workers/register", "POST").route(web::post().to(workers::register)))
        .service(resource("/api/workers/next_job", "GET").route(web::get().to(workers::next_job)))
        .service(
            resource("/api/workers/{id}/messages", "POST").route(web::post().to(workers::messages)),
        )
        .service(
            resource("/api/workers/{id}/heartbeat", "POST")
                .route(web::post().to(workers::heartbeat)),
        );
}

/// A running HTTP API.
pub(crate) struct HttpApi {
    addr: SocketAddr,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HttpApi {
    /// Binds `listen` and starts serving `plane`. Refuses to listen beyond loopback without a
    /// token.
    pub(crate) fn start(plane: Arc<ControlPlane>, data: &Path, listen: SocketAddr) -> Result<Self> {
        let keep = auth::Keep::open(data, plane.config().database_url.as_deref())?;
        if let auth::Keep::Database(db) = &keep
            && data.join(auth::TOKENS_FILE).exists()
            && auth::list(&keep)?.is_none()
        {
            bail!(
                "{} holds API tokens, but this control plane keeps its tokens in the database {}, \
                 which has none: move them with `nexa store copy --from {} --to URL` (or make \
                 new ones with `nexa token create --database-url URL`), then remove the file",
                data.join(auth::TOKENS_FILE).display(),
                db.location(),
                data.display()
            );
        }
        let tokens = auth::Tokens::new(keep.clone());
        if !listen.ip().is_loopback() && !tokens.required() {
            let place = match &keep {
                auth::Keep::Folder(_) => format!("--data {}", data.display()),
                auth::Keep::Database(_) => "--database-url URL".to_owned(),
            };
            bail!(
                "the HTTP API would listen on {listen}, which is reachable from other machines, \
                 without a token; make one first with `nexa token create {place}`, or listen on \
                 127.0.0.1"
            );
        }
        let state = web::Data::new(State {
            plane,
            tokens,
            requests: RequestCounts::default(),
            openapi: openapi_json(),
            worker_sessions: workers::Sessions::load(keep)?,
            proxy: endpoints::proxy()?,
            traffic: endpoints::Traffic::default(),
        });
        let server = HttpServer::new(move || {
            let counted = state.clone();
            App::new()
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(MAX_BODY))
                .app_data(web::QueryConfig::default().error_handler(|e, _| {
                    ApiError::bad_request(format!("bad query string: {e}")).into()
                }))
                .wrap_fn(move |req, srv| {
                    let counted = counted.clone();
                    let answer = srv.call(req);
                    async move {
                        let res = as_api_error(answer.await?);
                        counted.requests.count(res.status().as_u16());
                        Ok(res)
                    }
                })
                .configure(routes)
                .default_service(web::to(not_found))
        })
        .workers(2)
        .shutdown_timeout(5)
        .disable_signals()
        .bind(listen)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen for HTTP on {}: {e}; is another nexa running there? pick another \
                 address with --http",
                listen
            )
        })?;
        let addr = server
            .addrs()
            .first()
            .copied()
            .context("the HTTP server has no address")?;
        let server = server.run();
        let handle = server.handle();
        let task = tokio::spawn(server);
        Ok(Self { addr, handle, task })
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets answers in flight finish (briefly), and stops.
    pub(crate) async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }
}
