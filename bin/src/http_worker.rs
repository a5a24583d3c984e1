//! A worker that joins over HTTP (`nexa worker --api URL`): the same agent, stages and
//! reports as over QUIC, for networks where UDP does not pass.
//!
//! The worker registers with `POST /api/workers/register` (a worker credential, when the
//! server has tokens), which answers a session id; every later request is one frame of the
//! worker protocol, sent to `POST /api/workers/{id}/messages` with that session, and answered
//! with the frame a QUIC session would have answered. A server that forgot the session (it
//! restarted) refuses it; the link then registers again and resends, as a QUIC client
//! reconnects. The control plane cannot push over HTTP: a cancel reaches the worker in the
//! answer to its next heartbeat.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nexa_runtime::wire::{self, ErrorCode, FrameDecoder, Message, Welcome};
use nexa_runtime::{JobType, WorkerId};
use nexa_transport::{Answer, ClientEvent, RequestError, Uplink};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::http::{FRAME_TYPE, MAX_BODY, SESSION_HEADER};

/// The longest a request for work is held open: well within the server's limit, so that a
/// proxy's idle timeout does not cut it.
const LONG_POLL: Duration = Duration::from_secs(20);

/// How long any other request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The least time between two registrations after the server forgot the session.
const REREGISTER_EVERY: Duration = Duration::from_secs(2);

/// What a worker registers as.
#[derive(Clone, Debug)]
pub(crate) struct Registration {
    pub(crate) worker: WorkerId,
    pub(crate) cpus: u32,
    pub(crate) memory_mb: u64,
    pub(crate) gpus: Vec<nexa_runtime::Gpu>,
    pub(crate) labels: std::collections::BTreeMap<String, String>,
    pub(crate) job_types: Vec<JobType>,
}

impl Registration {
    fn body(&self) -> Value {
        json!({
            "worker_id": self.worker.as_str(),
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
            "gpus": self.gpus.iter().map(|g| json!({"model": g.model, "memory_mb": g.memory_mb})).collect::<Vec<_>>(),
            "labels": self.labels,
            "job_types": self.job_types.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        })
    }
}

/// The link of a worker to the control plane's HTTP API.
#[derive(Debug, Clone)]
pub(crate) struct HttpUplink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The API's base URL, like `http://host:8000/api`.
    api: String,
    /// The worker credential, when the server has tokens.
    credential: Option<String>,
    registration: Registration,
    /// For requests for work (held open up to [`LONG_POLL`]).
    polling: ureq::Agent,
    /// For every other request.
    agent: ureq::Agent,
    /// The session the latest registration answered.
    session: Mutex<String>,
    /// Request ids, as a QUIC worker numbers them (even).
    next_id: AtomicU64,
    /// When the link last registered again (at most every [`REREGISTER_EVERY`]).
    last_registration: Mutex<Option<Instant>>,
    /// Whether the last request reached the server, to tell the agent when that changes.
    reachable: AtomicBool,
    closed: AtomicBool,
    events: mpsc::Sender<ClientEvent>,
}

/// What a registration answered.
struct Registered {
    session: String,
    welcome: Welcome,
}

impl HttpUplink {
    /// Registers with the API at `api` and returns the link, the settings to keep to and the
    /// channel on which the link tells of lost and regained contact.
    pub(crate) async fn join(
        api: &str,
        credential: Option<String>,
        registration: Registration,
    ) -> Result<(Self, Welcome, mpsc::Receiver<ClientEvent>)> {
        let config = |timeout: Duration| {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(Duration::from_secs(5)))
                .timeout_global(Some(timeout))
                .build()
                .new_agent()
        };
        let (events, events_rx) = mpsc::channel(16);
        let inner = Arc::new(Inner {
            api: api.trim_end_matches('/').to_owned(),
            credential: credential.filter(|c| !c.is_empty()),
            registration,
            polling: config(LONG_POLL + REQUEST_TIMEOUT),
            agent: config(REQUEST_TIMEOUT),
            session: Mutex::new(String::new()),
            last_registration: Mutex::new(None),
            next_id: AtomicU64::new(0),
            reachable: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            events,
        });
        let registering = inner.clone();
        let registered = tokio::task::spawn_blocking(move || registering.register())
            .await
            .context("the registration stopped unexpectedly")??;
        *inner.lock_session() = registered.session;
        Ok((Self { inner }, registered.welcome, events_rx))
    }
}

impl Inner {
    fn lock_session(&self) -> std::sync::MutexGuard<'_, String> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn authorized<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.credential {
            Some(c) => req.header("Authorization", &format!("Bearer {c}")),
            None => req,
        }
    }

    /// `POST /workers/register`.
    fn register(&self) -> Result<Registered> {
        let url = format!("{}/workers/register", self.api);
        let body = serde_json::to_vec(&self.registration.body())?;
        let mut res = self
            .authorized(self.agent.post(&url))
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(|e| anyhow!("cannot reach the Nexa Forge API at {}: {e}", self.api))?;
        let status = res.status().as_u16();
        let text = res
            .body_mut()
            .read_to_string()
            .context("cannot read the registration's answer")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status != 200 {
            let why = value["error"]["message"]
                .as_str()
                .map_or_else(|| text.trim().to_owned(), str::to_owned);
            let hint = if status == 404 && !self.api.ends_with("/api") {
                " (--api is the API's URL, ending in /api, like http://host:8000/api)"
            } else {
                ""
            };
            bail!(
                "the API at {} refused the registration (HTTP {status}): {why}{hint}",
                self.api
            );
        }
        let session = value["session"]
            .as_str()
            .context("the registration's answer has no session")?
            .to_owned();
        let seconds = |field: &str, default: f64| {
            let s = value[field].as_f64().unwrap_or(default);
            (s.clamp(0.1, 3600.0) * 1000.0) as u64
        };
        let welcome = Welcome {
            session: 0,
            lease_ttl_ms: seconds("lease_ttl_seconds", 30.0),
            heartbeat_ms: seconds("heartbeat_interval_seconds", 5.0),
            long_poll_ms: LONG_POLL.as_millis() as u64,
        };
        Ok(Registered { session, welcome })
    }

    /// Sends `frame` (request `id`) once; `Ok(None)` when the server does not know the
    /// session (it restarted, or another registration replaced it).
    fn send(&self, id: u64, frame: &[u8], long: bool) -> Result<Option<Message>, RequestError> {
        let url = format!("{}/workers/{}/messages", self.api, self.registration.worker);
        let agent = if long { &self.polling } else { &self.agent };
        let session = self.lock_session().clone();
        let sent = self
            .authorized(agent.post(&url))
            .header("Content-Type", FRAME_TYPE)
            .header(SESSION_HEADER, &session)
            .send(frame);
        let mut res = match sent {
            Ok(res) => res,
            Err(ureq::Error::Timeout(_)) => {
                return Err(RequestError::Timeout(if long {
                    LONG_POLL + REQUEST_TIMEOUT
                } else {
                    REQUEST_TIMEOUT
                }));
            }
            Err(e) => return Err(RequestError::Disconnected(e.to_string())),
        };
        let status = res.status().as_u16();
        let body = res
            .body_mut()
            .with_config()
            .limit(MAX_BODY as u64 + 64)
            .read_to_vec()
            .map_err(|e| RequestError::Stream(e.to_string()))?;
        match status {
            200 => {
                let mut decoder = FrameDecoder::new(MAX_BODY);
                decoder.extend(&body);
                match decoder.next_envelope()? {
                    Some(envelope) if envelope.id == id => Ok(Some(envelope.message)),
                    Some(envelope) => Err(RequestError::Stream(format!(
                        "the answer is to request {}, not {id}",
                        envelope.id
                    ))),
                    None => Err(RequestError::Stream(format!(
                        "the answer is not one whole frame ({} bytes)",
                        body.len()
                    ))),
                }
            }
            403 if error_text(&body).contains(SESSION_HEADER) => Ok(None),
            // A proxy or a server on its way down or up: contact is lost for now.
            502..=504 => Err(RequestError::Disconnected(format!(
                "HTTP {status}: {}",
                error_text(&body)
            ))),
            _ => Ok(Some(Message::Error {
                code: if status >= 500 {
                    ErrorCode::Unavailable
                } else {
                    ErrorCode::BadRequest
                },
                message: format!("HTTP {status}: {}", error_text(&body)),
            })),
        }
    }

    /// Sends `frame` (request `id`) and waits for the answer, registering again once if the
    /// server forgot this worker's session.
    fn call(&self, id: u64, frame: &[u8], long: bool) -> Result<Message, RequestError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(RequestError::Closed);
        }
        let answered = match self.send(id, frame, long) {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => {
                let mut last = self
                    .last_registration
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if last.is_some_and(|at| at.elapsed() < REREGISTER_EVERY) {
                    return Err(RequestError::Disconnected(
                        "the control plane does not know this worker's session".into(),
                    ));
                }
                *last = Some(Instant::now());
                drop(last);
                warn!("the control plane does not know this worker's session; registering again");
                match self.register().inspect_err(|e| warn!("{e:#}")) {
                    Ok(registered) => {
                        *self.lock_session() = registered.session;
                        let _ = self.events.try_send(ClientEvent::Reconnected {
                            welcome: registered.welcome,
                        });
                        match self.send(id, frame, long) {
                            Ok(Some(answer)) => Ok(answer),
                            Ok(None) => Err(RequestError::Disconnected(
                                "the control plane refused the new session".into(),
                            )),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(RequestError::Disconnected(format!("{e:#}"))),
                }
            }
            Err(e) => Err(e),
        };
        let reachable = !matches!(
            answered,
            Err(RequestError::Disconnected(_) | RequestError::Stream(_))
        );
        if self.reachable.swap(reachable, Ordering::SeqCst) != reachable {
            if let Err(e) = &answered
                && !reachable
            {
                let _ = self.events.try_send(ClientEvent::Disconnected {
                    reason: e.to_string(),
                });
            } else {
                info!("the control plane answers again");
            }
        }
        answered
    }
}

/// The message of an API error body, or the body itself.
fn error_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.trim().chars().take(500).collect())
}

impl Uplink for HttpUplink {
    fn request<'a>(&'a self, message: &'a Message) -> Answer<'a> {
        let inner = self.inner.clone();
        let id = inner.next_id.fetch_add(2, Ordering::Relaxed);
        let frame = wire::encode(id, message, MAX_BODY);
        let long = matches!(message, Message::AskForWork(_));
        Box::pin(async move {
            let frame = frame?;
            tokio::task::spawn_blocking(move || inner.call(id, &frame, long))
                .await
                .unwrap_or_else(|e| Err(RequestError::Stream(format!("the request stopped: {e}"))))
        })
    }

    fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
    }
}
