//! `/api/jobs`: submit, list, inspect, cancel, logs and events; and the reports an HTTP
//! worker makes under its lease.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes, Json};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::{Stream, StreamExt};
use nexa_actors::{FollowFrom, LogEvent, PlaneError};
use nexa_runtime::{Job, JobId, JobState, JobType, ListQuery, LogQuery, StoreError, WorkerId};

use super::api::{
    self, BatchBody, BatchRequest, CancelRequest, CompleteRequest, EpochRequest, EventParams,
    EventsBody, FailRequest, JobBody, JobPage, JobTypesBody, ListParams, LogAckBody,
    LogBatchRequest, LogParams, LogsBody, ProgressAnswer, ProgressRequest, StartedAnswer,
    SubmitRequest, SubmittedBody, WaitManyBody, WaitManyRequest, WaitParams, job_types_body,
};
use super::auth::{Caller, Reader, WorkerCaller, Writer};
use super::error::{ApiError, ErrorBody};
use super::responses::{
    BadQuery, Invalid, Malformed, NoSuchJob, ReadErrors, TooLarge, Unauthorized, WriteErrors,
};
use super::{State, read_json};

/// The job as shown, with why it waits when it does.
pub(crate) async fn show(state: &State, job: &Job, with_events: bool) -> JobBody {
    let reason = if matches!(job.state, JobState::Waiting | JobState::Queued) {
        state
            .plane
            .pending_reason(job.id)
            .await
            .ok()
            .flatten()
            .map(|r| r.to_string())
    } else {
        None
    };
    let mut body = api::job_body(job, reason, with_events);
    body.pipeline = pipeline_link(state, job).await;
    body
}

/// The pipeline run and step that made `job`, if one did.
pub(crate) async fn pipeline_link(state: &State, job: &Job) -> Option<api::PipelineLinkBody> {
    let (pipeline_id, step) = state.plane.made_by_pipeline(job).await?;
    Some(api::PipelineLinkBody { pipeline_id, step })
}

async fn load(state: &State, id: JobId) -> Result<Job, ApiError> {
    Ok(state.plane.get(id).await?)
}

/// Submit a job.
/// Every job type with the params it takes: names, which are required, limits and defaults.
#[utoipa::path(
    get, path = "/api/job_types", tag = "jobs",
    responses(
        (status = 200, description = "The job types", body = JobTypesBody),
        Unauthorized,
    )
)]
pub(crate) async fn job_types(_: Reader) -> Json<JobTypesBody> {
    Json(job_types_body())
}

#[utoipa::path(
    post, path = "/api/jobs", tag = "jobs",
    request_body = SubmitRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Submitting twice with the same key makes one job")),
    responses(
        (status = 201, description = "Created", body = JobBody),
        (status = 200, description = "The job made earlier with the same idempotency key", body = JobBody),
        WriteErrors,
        (status = 409, description = "Idempotency key used for another spec", body = ErrorBody),
    )
)]
pub(crate) async fn submit(
    Writer(caller): Writer,
    state: web::Data<State>,
    req: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: SubmitRequest = read_json(&body)?;
    let key = match req.headers().get("Idempotency-Key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("the Idempotency-Key header must be text"))?
                .to_owned(),
        ),
    };
    let spec = request.into_spec(key)?;
    let all = state.plane.submit_all(spec).await?;
    for submitted in all.iter().filter(|s| s.created) {
        audit(&caller, "submit", submitted.id);
    }
    let submitted = &all[0];
    let job = load(&state, submitted.id).await?;
    let status = if submitted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut body = show(&state, &job, false).await;
    if all.len() > 1 {
        body.replica_job_ids = Some(all.iter().map(|s| s.id.to_string()).collect());
    }
    Ok(HttpResponse::build(status).json(body))
}

/// The most jobs one batch submits.
const MAX_BATCH: usize = 1000;

/// Submit several jobs at once: all of them, or none.
#[utoipa::path(
    post, path = "/api/jobs/batch", tag = "jobs",
    request_body = BatchRequest,
    responses(
        (status = 201, description = "Created (some or all of them; the others were made earlier with the same idempotency keys)", body = BatchBody),
        (status = 200, description = "Every job was made earlier, with the same idempotency keys", body = BatchBody),
        WriteErrors,
        (status = 409, description = "An idempotency key used for another spec", body = ErrorBody),
    )
)]
pub(crate) async fn submit_batch(
    Writer(caller): Writer,
    state: web::Data<State>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: BatchRequest = read_json(&body)?;
    if !(1..=MAX_BATCH).contains(&request.jobs.len()) {
        return Err(ApiError::invalid(
            "jobs",
            format!(
                "a batch has 1 to {MAX_BATCH} jobs, not {}",
                request.jobs.len()
            ),
        ));
    }
    let specs = request
        .jobs
        .into_iter()
        .enumerate()
        .map(|(i, job)| {
            job.into_spec(None)
                .map_err(|e| e.within(&format!("jobs[{i}]")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let submitted = state.plane.submit_batch(specs).await.map_err(|e| {
        let index = match &e {
            PlaneError::Invalid(StoreError::Batch { index, .. })
            | PlaneError::Conflict(StoreError::Batch { index, .. }) => Some(*index),
            _ => None,
        };
        let e = ApiError::from(e);
        match index {
            Some(i) => e.within(&format!("jobs[{i}]")),
            None => e,
        }
    })?;
    for s in submitted.iter().filter(|s| s.created) {
        audit(&caller, "submit", s.id);
    }
    let status = if submitted.iter().any(|s| s.created) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let jobs = submitted
        .iter()
        .map(|s| SubmittedBody {
            job_id: s.id.to_string(),
            status: s.state.as_str().to_owned(),
            created: s.created,
        })
        .collect();
    Ok(HttpResponse::build(status).json(BatchBody { jobs }))
}

/// One line of the audit log (target `nexa::audit`): who changed which job, and how.
pub(crate) fn audit(caller: &Caller, action: &str, job: JobId) {
    tracing::info!(target: "nexa::audit", caller = %caller.name, action, %job, "{action} {job} by {}", caller.name);
}

/// List jobs, newest first.
#[utoipa::path(
    get, path = "/api/jobs", tag = "jobs",
    params(ListParams),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        ReadErrors, BadQuery,
    )
)]
pub(crate) async fn list(
    _: Reader,
    state: web::Data<State>,
    query: web::Query<ListParams>,
) -> Result<Json<JobPage>, ApiError> {
    let q = query.into_inner();
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_param("limit", "must be between 1 and 500"));
    }
    let status = q
        .status
        .as_deref()
        .map(|s| api::state(s).map_err(|e| ApiError::bad_param("status", e)))
        .transpose()?;
    let job_type = q
        .job_type
        .as_deref()
        .map(|t| {
            t.parse::<JobType>().map_err(|_| {
                ApiError::bad_param(
                    "type",
                    format!("{t:?} is not a job type (one of: {})", api::job_type_list()),
                )
            })
        })
        .transpose()?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<JobId>()
                .map_err(|_| ApiError::bad_param("cursor", "is not a cursor from a previous page"))
        })
        .transpose()?;
    let worker = q
        .worker
        .as_deref()
        .map(|w| WorkerId::new(w).map_err(|e| ApiError::bad_param("worker", e)))
        .transpose()?;
    let page = state
        .plane
        .list(ListQuery {
            state: status,
            job_type,
            worker,
            before,
            limit,
        })
        .await?;
    let (jobs, next) = (page.jobs, page.next_before);
    let mut shown = Vec::with_capacity(jobs.len());
    for job in &jobs {
        shown.push(show(&state, job, false).await);
    }
    Ok(Json(JobPage {
        jobs: shown,
        next_cursor: next.map(|id| id.to_string()),
    }))
}

/// Delete a finished job with its log and history. Kept (409): a job that has not finished
/// (cancel it first), one a job not yet finished depends on, and one that registered a model
/// version. The artifacts it made go too, unless a job still kept made or names them.
#[utoipa::path(
    delete, path = "/api/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id, like job-7")),
    responses(
        (status = 204, description = "Deleted"),
        ReadErrors, NoSuchJob,
        (status = 403, description = "Not a user's full token", body = ErrorBody),
        (status = 409, description = "The job is kept, and why", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    Writer(caller): Writer,
    state: web::Data<State>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = api::path_job(&id)?;
    state.plane.delete(id).await?;
    audit(&caller, "delete", id);
    Ok(HttpResponse::NoContent().finish())
}

/// One job, with its events.
#[utoipa::path(
    get, path = "/api/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id, like job-7")),
    responses(
        (status = 200, description = "The job", body = JobBody),
        ReadErrors, NoSuchJob,
    )
)]
pub(crate) async fn get(
    _: Reader,
    state: web::Data<State>,
    id: web::Path<String>,
) -> Result<Json<JobBody>, ApiError> {
    let job = load(&state, api::path_job(&id)?).await?;
    Ok(Json(show(&state, &job, true).await))
}

/// Cancel a job.
#[utoipa::path(
    post, path = "/api/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "Job id, like job-7")),
    request_body(content = Option<CancelRequest>, description = "Optional reason"),
    responses(
        (status = 200, description = "The job, cancelled or cancelling", body = JobBody),
        WriteErrors, NoSuchJob,
        (status = 409, description = "The job has already finished", body = ErrorBody),
    )
)]
pub(crate) async fn cancel(
    Writer(caller): Writer,
    state: web::Data<State>,
    id: web::Path<String>,
    body: Bytes,
) -> Result<Json<JobBody>, ApiError> {
    let id = api::path_job(&id)?;
    let request: CancelRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CancelRequest::default()
    } else {
        read_json(&body)?
    };
    let reason = request
        .reason
        .unwrap_or_else(|| "cancelled through the API".to_owned());
    if reason.len() > 1024 {
        return Err(ApiError::invalid("reason", "is longer than 1024 bytes"));
    }
    state.plane.cancel(id, reason).await?;
    audit(&caller, "cancel", id);
    let job = load(&state, id).await?;
    Ok(Json(show(&state, &job, false).await))
}

/// Wait for a job to end: answers it once it has succeeded, failed or been cancelled, or
/// after `timeout` seconds as it is then (its `status` says which). The server answers the
/// moment the job's end is stored; ask again to wait longer.
#[utoipa::path(
    get, path = "/api/jobs/{id}/wait", tag = "jobs",
    params(("id" = String, Path, description = "Job id, like job-7"), WaitParams),
    responses(
        (status = 200, description = "The job: ended, or as it is when the wait ran out", body = JobBody),
        BadQuery, ReadErrors, NoSuchJob,
    )
)]
pub(crate) async fn wait(
    _: Reader,
    state: web::Data<State>,
    id: web::Path<String>,
    query: web::Query<WaitParams>,
) -> Result<Json<JobBody>, ApiError> {
    let id = api::path_job(&id)?;
    let seconds = query.timeout.unwrap_or(30.0);
    if !(seconds > 0.0 && seconds <= 60.0) {
        return Err(ApiError::bad_param(
            "timeout",
            "must be above 0 and at most 60 seconds",
        ));
    }
    let job =
        match tokio::time::timeout(Duration::from_secs_f64(seconds), state.plane.wait(id)).await {
            Ok(ended) => ended?,
            Err(_) => load(&state, id).await?,
        };
    Ok(Json(show(&state, &job, false).await))
}

/// The most jobs one wait names.
const MAX_WAIT_MANY: usize = 10_000;

/// Wait for several jobs to end: all of them, or the first.
#[utoipa::path(
    post, path = "/api/jobs/wait", tag = "jobs",
    request_body = WaitManyRequest,
    responses(
        (status = 200, description = "The jobs that have ended and the ids of the others, once all (or one, with `return_when: any`) have ended or the timeout passed", body = WaitManyBody),
        ReadErrors, Malformed, TooLarge, Invalid, NoSuchJob,
    )
)]
pub(crate) async fn wait_many(
    _: Reader,
    state: web::Data<State>,
    body: Bytes,
) -> Result<Json<WaitManyBody>, ApiError> {
    let request: WaitManyRequest = read_json(&body)?;
    if !(1..=MAX_WAIT_MANY).contains(&request.job_ids.len()) {
        return Err(ApiError::invalid(
            "job_ids",
            format!(
                "name 1 to {MAX_WAIT_MANY} jobs, not {}",
                request.job_ids.len()
            ),
        ));
    }
    let ids = request
        .job_ids
        .iter()
        .enumerate()
        .map(|(i, id)| api::job_id(&format!("job_ids[{i}]"), id))
        .collect::<Result<Vec<_>, _>>()?;
    let seconds = request.timeout.unwrap_or(30.0);
    if !(seconds > 0.0 && seconds <= 60.0) {
        return Err(ApiError::invalid(
            "timeout",
            "must be above 0 and at most 60 seconds",
        ));
    }
    let at_least = match request.return_when.as_deref().unwrap_or("all") {
        "all" => ids.len(),
        "any" => 1,
        other => {
            return Err(ApiError::invalid(
                "return_when",
                format!("{other:?} is neither \"all\" nor \"any\""),
            ));
        }
    };
    let waited = tokio::time::timeout(
        Duration::from_secs_f64(seconds),
        state.plane.wait_many(&ids, at_least),
    )
    .await;
    let done = match waited {
        Ok(done) => done?,
        // Out of time: the jobs that have ended by now.
        Err(_) => state.plane.wait_many(&ids, 0).await?,
    };
    let ended: std::collections::HashSet<JobId> = done.iter().map(|j| j.id).collect();
    let mut pending = Vec::new();
    let mut named = std::collections::HashSet::new();
    for id in &ids {
        if !ended.contains(id) && named.insert(*id) {
            pending.push(id.to_string());
        }
    }
    let mut bodies = Vec::with_capacity(done.len());
    for job in &done {
        bodies.push(show(&state, job, false).await);
    }
    Ok(Json(WaitManyBody {
        done: bodies,
        pending,
    }))
}

/// A job's state changes, or (`follow=true`) a stream of them as server-sent events.
#[utoipa::path(
    get, path = "/api/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, description = "Job id, like job-7"), EventParams),
    responses(
        (status = 200, description = "Its events, oldest first; with follow=true, a text/event-stream of `event` events (each with its `index`) as they are stored, then `end`", body = EventsBody),
        ReadErrors, BadQuery, NoSuchJob,
    )
)]
pub(crate) async fn events(
    _: Reader,
    state: web::Data<State>,
    id: web::Path<String>,
    query: web::Query<EventParams>,
) -> Result<HttpResponse, ApiError> {
    let job = load(&state, api::path_job(&id)?).await?;
    if query.follow.unwrap_or(false) {
        // The events sent so far: each change shows the ones after them.
        let mut sent = query.from.unwrap_or(0);
        return Ok(event_stream(state.plane.watch_job(job.id), move |now| {
            let mut text = String::new();
            for (index, event) in now.events.iter().enumerate().skip(sent) {
                let mut data = serde_json::to_value(api::event_body(event)).unwrap_or_default();
                data["index"] = index.into();
                text.push_str(&sse("event", &data));
            }
            sent = sent.max(now.events.len());
            let ended = now.state.is_terminal();
            if ended {
                let end = serde_json::json!({"status": now.state.as_str()});
                text.push_str(&sse("end", &end));
            }
            (Bytes::from(text), ended)
        }));
    }
    Ok(HttpResponse::Ok().json(EventsBody {
        job_id: job.id.to_string(),
        events: job.events.iter().map(api::event_body).collect(),
    }))
}

/// A job's log lines, or (`follow=true`) a stream of them as server-sent events.
#[utoipa::path(
    get, path = "/api/jobs/{id}/logs", tag = "jobs",
    params(("id" = String, Path, description = "Job id, like job-7"), LogParams),
    responses(
        (status = 200, description = "Lines of one attempt; with follow=true, a text/event-stream of `log`, `attempt` and `end` events", body = LogsBody),
        ReadErrors, BadQuery, NoSuchJob,
    )
)]
pub(crate) async fn logs(
    _: Reader,
    state: web::Data<State>,
    id: web::Path<String>,
    query: web::Query<LogParams>,
) -> Result<HttpResponse, ApiError> {
    let id = api::path_job(&id)?;
    let q = query.into_inner();
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_param("limit", "must be between 1 and 10000"));
    }
    let job = load(&state, id).await?;
    let tried = job.attempts.len() as u32;
    if let Some(a) = q.attempt
        && (a == 0 || a > tried)
    {
        return Err(ApiError::bad_param(
            "attempt",
            format!("{id} has {tried} attempts; there is no attempt {a}"),
        ));
    }
    let from = q.from_seq.unwrap_or(0);
    if from > api::MAX_SAFE {
        return Err(ApiError::bad_param("from_seq", "is larger than 2^53 - 1"));
    }
    if q.follow.unwrap_or(false) {
        let from = FollowFrom::new(q.attempt.unwrap_or(1), from);
        return Ok(event_stream(
            state.plane.follow_logs(id, from),
            |event| match event {
                LogEvent::Attempt(attempt) => (
                    sse("attempt", &serde_json::json!({"attempt": attempt})).into(),
                    false,
                ),
                LogEvent::Line { attempt, line } => {
                    let data = serde_json::json!({
                        "attempt": attempt,
                        "seq": line.seq,
                        "at": api::time(line.at),
                        "text": line.text,
                    });
                    (sse("log", &data).into(), false)
                }
                LogEvent::End(state) => (
                    sse("end", &serde_json::json!({"status": state.as_str()})).into(),
                    true,
                ),
                _ => (Bytes::new(), false),
            },
        ));
    }
    let page = state
        .plane
        .logs(
            id,
            LogQuery {
                attempt: q.attempt,
                from_seq: from,
                limit,
            },
        )
        .await?;
    let next_seq = page
        .next_seq
        .or_else(|| page.lines.last().map(|l| l.seq + 1))
        .unwrap_or(from);
    Ok(HttpResponse::Ok().json(LogsBody {
        job_id: id.to_string(),
        attempt: page.attempt,
        lines: page.lines.iter().map(api::line_body).collect(),
        next_seq,
        dropped: page.dropped,
    }))
}

/// A comment is sent when a followed log has been quiet this long, so that proxies keep the
/// stream open and a client that went away is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One server-sent event.
fn sse(event: &str, data: &serde_json::Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// `items` as a `text/event-stream` answer: each item as `render` writes it (which also says
/// whether it is the last), an `error` event that ends the stream when the plane fails, and a
/// keep-alive comment when it is quiet.
fn event_stream<T: 'static>(
    items: impl Stream<Item = Result<T, PlaneError>> + Send + 'static,
    render: impl FnMut(T) -> (Bytes, bool) + Send + 'static,
) -> HttpResponse {
    let stream = futures_util::stream::unfold(Some((Box::pin(items), render)), |open| async move {
        let (mut items, mut render) = open?;
        let (chunk, last) = match tokio::time::timeout(KEEP_ALIVE, items.next()).await {
            Err(_) => (Bytes::from_static(b": keep-alive\n\n"), false),
            Ok(None) => return None,
            Ok(Some(Ok(item))) => render(item),
            Ok(Some(Err(e))) => (
                sse("error", &serde_json::json!({"message": e.to_string()})).into(),
                true,
            ),
        };
        let next = (!last).then_some((items, render));
        Some((Ok::<_, std::convert::Infallible>(chunk), next))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}

// ---------------------------------------------------------------------------------------------
// Reports under a lease

/// The worker's stage started.
#[utoipa::path(
    post, path = "/api/jobs/{id}/started", tag = "worker reports",
    params(("id" = String, Path, description = "Job id, like job-7")),
    request_body = EpochRequest,
    responses(
        (status = 200, description = "Recorded", body = StartedAnswer),
        WriteErrors, NoSuchJob,
        (status = 409, description = "Stale lease or illegal transition", body = ErrorBody),
    )
)]
pub(crate) async fn started(
    _: WorkerCaller,
    state: web::Data<State>,
    id: web::Path<String>,
    body: Bytes,
) -> Result<Json<StartedAnswer>, ApiError> {
    let id = api::path_job(&id)?;
    let request: EpochRequest = read_json(&body)?;
    let token = api::lease_token("lease_token", &request.lease_token)?;
    state
        .plane
        .started(id, api::epoch(request.epoch), &token)
        .await?;
    Ok(Json(StartedAnswer {
        status: JobState::Running.as_str().to_owned(),
    }))
}

/// Log lines of the worker's attempt.
#[utoipa::path(
    post, path = "/api/jobs/{id}/logs", tag = "worker reports",
    params(("id" = String, Path, description = "Job id, like job-7")),
    request_body = LogBatchRequest,
    responses(
        (status = 200, description = "Stored", body = LogAckBody),
        WriteErrors, NoSuchJob,
        (status = 409, description = "Stale lease, or lines skipped (resend from the line named)", body = ErrorBody),
    )
)]
pub(crate) async fn append_logs(
    _: WorkerCaller,
    state: web::Data<State>,
    id: web::Path<String>,
    body: Bytes,
) -> Result<Json<LogAckBody>, ApiError> {
    let id = api::path_job(&id)?;
    let request: LogBatchRequest = read_json(&body)?;
    if request.lines.len() > 10_000 {
        return Err(ApiError::invalid("lines", "at most 10000 lines a batch"));
    }
    let token = api::lease_token("lease_token", &request.lease_token)?;
    let ack = state
        .plane
        .append_logs(
            id,
            api::epoch(request.epoch),
            &token,
            request.first_seq,
            request.lines,
        )
        .await?;
    Ok(Json(LogAckBody {
        next_seq: ack.next_seq,
    }))
}

/// Progress of the worker's attempt; renews its lease.
#[utoipa::path(
    post, path = "/api/jobs/{id}/progress", tag = "worker reports",
    params(("id" = String, Path, description = "Job id, like job-7")),
    request_body = ProgressRequest,
    responses(
        (status = 200, description = "Recorded; says whether to stop", body = ProgressAnswer),
        WriteErrors, NoSuchJob,
        (status = 409, description = "Stale lease", body = ErrorBody),
    )
)]
pub(crate) async fn progress(
    _: WorkerCaller,
    state: web::Data<State>,
    id: web::Path<String>,
    body: Bytes,
) -> Result<Json<ProgressAnswer>, ApiError> {
    let id = api::path_job(&id)?;
    let request: ProgressRequest = read_json(&body)?;
    if let Some(p) = request.progress.filter(|p| !(0.0..=1.0).contains(p)) {
        return Err(ApiError::invalid(
            "progress",
            format!("{p} is outside 0.0 to 1.0"),
        ));
    }
    let token = api::lease_token("lease_token", &request.lease_token)?;
    if let Some(p) = request.progress
        && !(0.0..=1.0).contains(&p)
    {
        return Err(ApiError::invalid("progress", "must be between 0.0 and 1.0"));
    }
    let status = state
        .plane
        .job_heartbeat(id, api::epoch(request.epoch), &token, request.progress)
        .await?;
    Ok(Json(ProgressAnswer {
        cancel_requested: status.cancel_requested,
    }))
}

/// The worker's attempt succeeded.
#[utoipa::path(
    post, path = "/api/jobs/{id}/complete", tag = "worker reports",
    params(("id" = String, Path, description = "Job id, like job-7")),
    request_body = CompleteRequest,
    responses(
        (status = 200, description = "The job, succeeded", body = JobBody),
        WriteErrors, NoSuchJob,
        (status = 409, description = "Stale lease or illegal transition", body = ErrorBody),
    )
)]
pub(crate) async fn complete(
    WorkerCaller(caller): WorkerCaller,
    state: web::Data<State>,
    id: web::Path<String>,
    body: Bytes,
) -> Result<Json<JobBody>, ApiError> {
    let id = api::path_job(&id)?;
    let request: CompleteRequest = read_json(&body)?;
    let token = api::lease_token("lease_token", &request.lease_token)?;
    let output = match request.result {
        Some(r) => r.into_output()?,
        None => nexa_runtime::JobOutput::default(),
    };
    state
        .plane
        .complete(id, api::epoch(request.epoch), &token, output)
        .await?;
    audit(&caller, "complete", id);
    let job = load(&state, id).await?;
    Ok(Json(show(&state, &job, false).await))
}

/// The worker's attempt failed.
#[utoipa::path(
    post, path = "/api/jobs/{id}/fail", tag = "worker reports",
    params(("id" = String, Path, description = "Job id, like job-7")),
    request_body = FailRequest,
    responses(
        (status = 200, description = "The job: queued again for a retry, or failed", body = JobBody),
        WriteErrors, NoSuchJob,
        (status = 409, description = "Stale lease or illegal transition", body = ErrorBody),
    )
)]
pub(crate) async fn fail(
    WorkerCaller(caller): WorkerCaller,
    state: web::Data<State>,
    id: web::Path<String>,
    body: Bytes,
) -> Result<Json<JobBody>, ApiError> {
    let id = api::path_job(&id)?;
    let request: FailRequest = read_json(&body)?;
    let token = api::lease_token("lease_token", &request.lease_token)?;
    let error = request.error.into_job_error()?;
    state
        .plane
        .fail(id, api::epoch(request.epoch), &token, error)
        .await?;
    audit(&caller, "fail", id);
    let job = load(&state, id).await?;
    Ok(Json(show(&state, &job, false).await))
}
