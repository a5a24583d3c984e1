//! `/api/workers`: workers that join over HTTP register, heartbeat and lease jobs here; anyone
//! may list the workers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::web::{self, Bytes, Json};
use actix_web::{HttpRequest, HttpResponse};
use nexa_actors::HeldLease;
use nexa_runtime::WorkerId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::api::{
    self, AssignmentBody, HeartbeatAnswer, HeartbeatRequest, NextJobParams, RegisterRequest,
    RegisteredBody, WorkersBody,
};
use super::auth::{Keep, Reader, WorkerCaller, hex, random_hex, unhex32};
use super::error::{ApiError, ErrorBody};
use super::jobs::show;
use super::responses::{
    BadQuery, NotThisWorker, ReadErrors, TooLarge, Unauthorized, WorkerErrors, WorkerNotRegistered,
};
use super::{State, read_json};

/// The longest `next_job` holds a request.
const MAX_WAIT: Duration = Duration::from_secs(30);

fn worker_id(field: &str, s: &str) -> Result<WorkerId, ApiError> {
    WorkerId::new(s).map_err(|e| ApiError::invalid(field, e))
}

/// The header an HTTP worker's later calls carry: the session its registration answered.
pub(crate) const SESSION_HEADER: &str = "X-Nexa-Worker-Session";

/// One HTTP worker's registration: the credential it registered with and its session.
struct Registration {
    /// The hash of the worker credential (none while the server has no tokens).
    credential: Option<[u8; 32]>,
    /// The hash of the session id.
    session: [u8; 32],
}

/// The workers registered over HTTP, by id. Kept where the tokens are ([`Keep`]): in the
/// data folder (`http_workers`) or in the database (`nexa_http_workers`), as the hashes of each
/// worker's credential and session, never the secrets, so that a worker's session outlives a
/// restart of the server (and, in a database, the loss of its machine), as its lease does.
pub(crate) struct Sessions {
    keep: Keep,
    registered: Mutex<HashMap<WorkerId, Registration>>,
}

/// The file, in the data folder, that keeps the sessions.
const SESSIONS_FILE: &str = "http_workers";

/// The sessions kept in the file `path` (none when there is none); a damaged line is skipped,
/// and its worker registers again.
fn read_file(path: &Path) -> HashMap<WorkerId, Registration> {
    let mut registered = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(id), Some(session), Some(credential)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let (Ok(id), Some(session)) = (WorkerId::new(id), unhex32(session)) else {
                continue;
            };
            let credential = match credential {
                "-" => None,
                c => match unhex32(c) {
                    Some(c) => Some(c),
                    None => continue,
                },
            };
            registered.insert(
                id,
                Registration {
                    credential,
                    session,
                },
            );
        }
    }
    registered
}

/// `worker`'s registration as a database keeps it.
fn stored(worker: &WorkerId, r: &Registration) -> nexa_storage::StoredSession {
    nexa_storage::StoredSession {
        worker: worker.to_string(),
        session: r.session,
        credential: r.credential,
    }
}

/// Copies the sessions kept in the data folder `data` into the database `to`; answers how
/// many (for `nexa store copy`).
pub(crate) fn copy_sessions(
    data: &Path,
    to: &nexa_storage::PgCredentials,
) -> anyhow::Result<usize> {
    let sessions = read_file(&data.join(SESSIONS_FILE));
    for (worker, r) in &sessions {
        to.put_session(&stored(worker, r), &[])?;
    }
    Ok(sessions.len())
}

impl Sessions {
    /// The sessions kept in `keep`.
    pub(crate) fn load(keep: Keep) -> anyhow::Result<Self> {
        let registered = match &keep {
            Keep::Folder(data) => read_file(&data.join(SESSIONS_FILE)),
            Keep::Database(db) => db
                .sessions()?
                .into_iter()
                .filter_map(|s| {
                    let id = WorkerId::new(&s.worker).ok()?;
                    let registration = Registration {
                        credential: s.credential,
                        session: s.session,
                    };
                    Some((id, registration))
                })
                .collect(),
        };
        Ok(Self {
            keep,
            registered: Mutex::new(registered),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, Registration>> {
        self.registered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `worker`'s new registration, and forgets those of the workers in `forget`: in
    /// the data folder, the whole file is written beside it and renamed over it.
    fn save(
        &self,
        registered: &HashMap<WorkerId, Registration>,
        worker: &WorkerId,
        forget: &[WorkerId],
    ) -> anyhow::Result<()> {
        match &self.keep {
            Keep::Folder(data) => {
                let mut text = String::new();
                for (id, r) in registered {
                    let credential = r
                        .credential
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), |c| hex(c));
                    text.push_str(&format!("{id} {} {credential}\n", hex(&r.session)));
                }
                nexa_actors::replace_private(&data.join(SESSIONS_FILE), text.as_bytes())?;
            }
            Keep::Database(db) => {
                if let Some(r) = registered.get(worker) {
                    let forget: Vec<String> = forget.iter().map(ToString::to_string).collect();
                    db.put_session(&stored(worker, r), &forget)?;
                }
            }
        }
        Ok(())
    }

    /// Whether `worker` was registered with `credential` before; `None` when it was not
    /// registered here.
    fn registered_by(&self, worker: &WorkerId, credential: Option<[u8; 32]>) -> Option<bool> {
        self.lock().get(worker).map(|r| r.credential == credential)
    }

    /// A new session for `worker`, replacing any earlier one; its id, to give the worker.
    /// Sessions of workers the store no longer has (pruned or removed) are dropped: `known`
    /// says which it has.
    fn open(
        &self,
        worker: WorkerId,
        credential: Option<[u8; 32]>,
        known: impl Fn(&WorkerId) -> bool,
    ) -> anyhow::Result<String> {
        let id = random_hex(16)?;
        let session = Sha256::digest(id.as_bytes()).into();
        let mut registered = self.lock();
        registered.insert(
            worker.clone(),
            Registration {
                credential,
                session,
            },
        );
        let forget: Vec<WorkerId> = registered.keys().filter(|id| !known(id)).cloned().collect();
        for id in &forget {
            registered.remove(id);
        }
        self.save(&registered, &worker, &forget)?;
        Ok(id)
    }

    /// `Ok` when the request carries `worker`'s session and the credential it registered
    /// with.
    fn check(
        &self,
        req: &HttpRequest,
        worker: &WorkerId,
        credential: Option<[u8; 32]>,
    ) -> Result<(), ApiError> {
        let presented: Option<[u8; 32]> = req
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| Sha256::digest(v.trim().as_bytes()).into());
        let sessions = self.lock();
        let held = sessions.get(worker).is_some_and(|r| {
            presented.is_some_and(|p| bool::from(r.session.ct_eq(&p))) && r.credential == credential
        });
        if held {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this is not worker {worker}'s session: register it (POST /api/workers/register) \
                 and send the session it answers in the {SESSION_HEADER} header"
            )))
        }
    }
}

/// Register a worker that speaks HTTP.
#[utoipa::path(
    post, path = "/api/workers/register", tag = "workers",
    request_body = RegisterRequest,
    responses(
        (status = 200, description = "Registered", body = RegisteredBody),
        WorkerErrors,
        (status = 409, description = "The worker id is another registrant's", body = ErrorBody),
    )
)]
pub(crate) async fn register(
    WorkerCaller(caller): WorkerCaller,
    state: web::Data<State>,
    body: Bytes,
) -> Result<Json<RegisteredBody>, ApiError> {
    let request: RegisterRequest = read_json(&body)?;
    let info = request.into_info()?;
    let id = info.id.clone();
    // A worker id is its registrant's: another credential cannot take it over, nor can
    // anyone take the id of a worker alive over QUIC (or registered before a restart).
    let credential = caller.credential;
    match state.worker_sessions.registered_by(&id, credential) {
        Some(true) => {}
        Some(false) => {
            return Err(ApiError::conflict(format!(
                "worker {id} is registered with another credential; pick another worker_id"
            )));
        }
        None => {
            let now = nexa_actors::now();
            let taken =
                state.plane.workers().await?.iter().any(|w| {
                    w.info.id == id && w.is_alive(now, state.plane.config().store.worker_ttl)
                });
            if taken {
                return Err(ApiError::conflict(format!(
                    "worker {id} is alive and was not registered here over HTTP (a QUIC \
                     worker, or one registered before this server started); pick another \
                     worker_id, or wait {:.0} s for it to be presumed gone",
                    state.plane.config().store.worker_ttl.as_secs_f64().ceil()
                )));
            }
        }
    }
    let record = state.plane.register_worker(info).await?;
    let known: std::collections::HashSet<WorkerId> = state
        .plane
        .workers()
        .await?
        .into_iter()
        .map(|w| w.info.id)
        .collect();
    tracing::info!(target: "nexa::audit", caller = %caller.name, action = "register", worker = %id, "register worker {id} by {}", caller.name);
    let session = state
        .worker_sessions
        .open(id, credential, |w| known.contains(w))
        .map_err(|e| ApiError::unavailable(format!("cannot keep the worker's session: {e}")))?;
    Ok(Json(RegisteredBody {
        session,
        worker: api::worker_body(&record, true, Vec::new()),
        lease_ttl_seconds: state.plane.config().store.lease_ttl.as_secs_f64(),
        heartbeat_interval_seconds: state.plane.config().heartbeat.as_secs_f64(),
    }))
}

/// List the workers.
#[utoipa::path(
    get, path = "/api/workers", tag = "workers",
    responses(
        (status = 200, description = "Every registered worker", body = WorkersBody),
        ReadErrors,
    )
)]
pub(crate) async fn list(
    _: Reader,
    state: web::Data<State>,
) -> Result<Json<WorkersBody>, ApiError> {
    let records = state.plane.workers().await?;
    let mut leased = state.plane.leased_jobs().await?;
    let now = nexa_actors::now();
    let workers = records
        .iter()
        .map(|w| {
            let alive = w.is_alive(now, state.plane.config().store.worker_ttl);
            let jobs = leased.remove(&w.info.id).unwrap_or_default();
            let jobs = jobs.iter().map(ToString::to_string).collect();
            api::worker_body(w, alive, jobs)
        })
        .collect();
    Ok(Json(WorkersBody { workers }))
}

/// A worker is alive, and so are its jobs.
#[utoipa::path(
    post, path = "/api/workers/{id}/heartbeat", tag = "workers",
    params(
        ("id" = String, Path, description = "Worker id"),
        ("X-Nexa-Worker-Session" = String, Header, description = "The session the worker's registration answered"),
    ),
    request_body(content = Option<HeartbeatRequest>, description = "The jobs it runs"),
    responses(
        (status = 200, description = "What to do with its jobs", body = HeartbeatAnswer),
        WorkerErrors, WorkerNotRegistered,
    )
)]
pub(crate) async fn heartbeat(
    WorkerCaller(caller): WorkerCaller,
    req: HttpRequest,
    state: web::Data<State>,
    id: web::Path<String>,
    body: Bytes,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    let worker = WorkerId::new(id.as_str())
        .map_err(|_| ApiError::not_found(format!("no worker {:?}", id.as_str())))?;
    state
        .worker_sessions
        .check(&req, &worker, caller.credential)?;
    let request: HeartbeatRequest = if body.iter().all(u8::is_ascii_whitespace) {
        HeartbeatRequest::default()
    } else {
        read_json(&body)?
    };
    if request.jobs.len() > 1024 {
        return Err(ApiError::invalid("jobs", "at most 1024 jobs a heartbeat"));
    }
    let mut jobs = Vec::with_capacity(request.jobs.len());
    for (i, j) in request.jobs.into_iter().enumerate() {
        if let Some(p) = j.progress.filter(|p| !(0.0..=1.0).contains(p)) {
            return Err(ApiError::invalid(
                format!("jobs[{i}].progress"),
                format!("{p} is outside 0.0 to 1.0"),
            ));
        }
        if let Some(url) = &j.serving_url
            && let Err(why) = nexa_runtime::wire::check_serving_url(url)
        {
            return Err(ApiError::invalid(format!("jobs[{i}].serving_url"), why));
        }
        let held = HeldLease::new(
            api::job_id(&format!("jobs[{i}].job_id"), &j.job_id)?,
            api::epoch(j.epoch),
            api::lease_token(&format!("jobs[{i}].lease_token"), &j.lease_token)?,
        );
        jobs.push(held.progress(j.progress).serving(j.serving_url));
    }
    let ack = state.plane.worker_heartbeat(worker, jobs).await?;
    Ok(Json(HeartbeatAnswer {
        cancel: ack.cancel.iter().map(ToString::to_string).collect(),
        lost: ack.lost.iter().map(ToString::to_string).collect(),
    }))
}

/// Lease the next job that fits the worker (a lease, not a pop: it comes back to the queue
/// if the worker stops heartbeating).
#[utoipa::path(
    get, path = "/api/workers/next_job", tag = "workers",
    params(
        NextJobParams,
        ("X-Nexa-Worker-Session" = String, Header, description = "The session the worker's registration answered"),
    ),
    responses(
        (status = 200, description = "A job leased to the worker", body = AssignmentBody),
        (status = 204, description = "No job fits within the wait"),
        ReadErrors, BadQuery, NotThisWorker, WorkerNotRegistered,
        (status = 409, description = "The worker is draining", body = ErrorBody),
    )
)]
pub(crate) async fn next_job(
    WorkerCaller(caller): WorkerCaller,
    req: HttpRequest,
    state: web::Data<State>,
    query: web::Query<NextJobParams>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let worker = worker_id("worker_id", &q.worker_id)
        .map_err(|e| ApiError::bad_param("worker_id", e.message))?;
    let wait = q.wait_seconds.unwrap_or(0.0);
    if !(wait.is_finite() && (0.0..=MAX_WAIT.as_secs_f64()).contains(&wait)) {
        return Err(ApiError::bad_param(
            "wait_seconds",
            "must be between 0 and 30",
        ));
    }
    state
        .worker_sessions
        .check(&req, &worker, caller.credential)?;
    // Asking is a sign of life now; a request held open for long is not, later: a job is
    // leased only to a worker heard from lately (its heartbeats keep it so).
    state
        .plane
        .worker_heartbeat(worker.clone(), Vec::new())
        .await?;
    // The worker's GPUs as registered; jobs it already holds keep theirs.
    let record = state
        .plane
        .workers()
        .await?
        .into_iter()
        .find(|w| w.info.id == worker)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "worker {worker} is not registered; POST /api/workers/register first"
            ))
        })?;
    let free_gpus = match q.free_gpus.as_deref() {
        None => record.info.gpus.iter().map(|g| g.memory_mb).collect(),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.parse::<u64>().map_err(|_| {
                    ApiError::bad_param("free_gpus", format!("{m:?} is not a memory size in MiB"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    if free_gpus.len() > record.info.gpus.len() {
        return Err(ApiError::bad_param(
            "free_gpus",
            format!(
                "lists {} GPUs; the worker registered {}",
                free_gpus.len(),
                record.info.gpus.len()
            ),
        ));
    }
    let lease = state
        .plane
        .next_job(worker, free_gpus, Duration::from_secs_f64(wait))
        .await?;
    let Some(lease) = lease else {
        return Ok(HttpResponse::NoContent().finish());
    };
    Ok(HttpResponse::Ok().json(AssignmentBody {
        job_id: lease.job.id.to_string(),
        job: show(&state, &lease.job, false).await,
        attempt: lease.attempt,
        epoch: lease.epoch.0,
        lease_token: state.plane.lease_token(&lease).to_hex(),
        lease_expires_at: api::time(lease.lease_expires_at),
        deadline: api::time(lease.deadline),
    }))
}

/// The media type of a request to `/api/workers/{id}/messages` and of its answer: one frame of
/// the worker protocol (`nexa_runtime::wire`), length prefix included.
pub(crate) const FRAME_TYPE: &str = "application/octet-stream";

/// One request of the worker protocol, as a QUIC worker sends it, over HTTP: what
/// `nexa worker --api` speaks. The answer is the frame the control plane would send on a
/// QUIC session (a refusal is an `error` message, not an HTTP error); HTTP errors are for
/// requests that are not a frame or not this worker's.
#[utoipa::path(
    post, path = "/api/workers/{id}/messages", tag = "workers",
    params(
        ("id" = String, Path, description = "The worker, as registered"),
        ("X-Nexa-Worker-Session" = String, Header, description = "The session the worker's registration answered"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "One frame of the worker protocol"),
    responses(
        (status = 200, description = "The answer, one frame", content_type = "application/octet-stream"),
        Unauthorized, NotThisWorker, TooLarge,
        (status = 400, description = "Not one whole frame of this protocol version", body = ErrorBody),
        (status = 415, description = "Not application/octet-stream", body = ErrorBody),
    )
)]
pub(crate) async fn messages(
    WorkerCaller(caller): WorkerCaller,
    req: HttpRequest,
    state: web::Data<State>,
    id: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    use nexa_runtime::wire::{self, FrameDecoder};
    let worker = worker_id("id", &id).map_err(|e| ApiError::bad_param("id", e.message))?;
    let framed = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(FRAME_TYPE));
    if !framed {
        return Err(ApiError::from_status(
            actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send one frame of the worker protocol, with `Content-Type: {FRAME_TYPE}`"),
        ));
    }
    state
        .worker_sessions
        .check(&req, &worker, caller.credential)?;
    let mut decoder = FrameDecoder::new(super::MAX_BODY);
    decoder.extend(&body);
    let envelope = match decoder.next_envelope() {
        Ok(Some(envelope)) if decoder.buffered() == 0 => envelope,
        Ok(Some(_)) => return Err(ApiError::bad_request("the body holds more than one frame")),
        Ok(None) => {
            return Err(ApiError::bad_request(format!(
                "the body is not one whole frame ({} bytes)",
                body.len()
            )));
        }
        Err(e) => return Err(ApiError::bad_request(format!("not a frame: {e}"))),
    };
    let name = envelope.message.name();
    let answer = state.plane.worker_request(&worker, envelope.message).await;
    if matches!(name, "complete" | "fail" | "goodbye") {
        tracing::info!(target: "nexa::audit", caller = %caller.name, action = name, %worker, "{name} from worker {worker} by {}", caller.name);
    }
    let frame = wire::encode(envelope.id, &answer, super::MAX_BODY)
        .map_err(|e| ApiError::unavailable(format!("cannot encode the answer: {e}")))?;
    Ok(HttpResponse::Ok().content_type(FRAME_TYPE).body(frame))
}
