//! The worker's end: connects, says hello, sends requests, receives pushes, and reconnects.
//!
//! [`Client::connect`] makes the first connection and reports why it failed (a wrong
//! fingerprint, a refused token) instead of retrying: those need a person. Once connected, a
//! background task watches the connection; when it is lost, the application gets
//! [`ClientEvent::Disconnected`], the task reconnects with exponential backoff and jitter, and
//! the application gets [`ClientEvent::Reconnected`]. Requests made meanwhile wait for the new
//! connection, up to the request timeout.
//!
//! Every request of a connection goes over the stream its hello opened, tagged with an even
//! request id (see the `link` module): [`Client::request`] writes its frame and waits for the
//! answer with its id, reading the stream itself while it waits and handing on what else it
//! finds there; a background task reads when no request does. Any number of requests are in
//! flight at once and answered in any order. The server's pushes arrive on the same stream
//! with odd ids and are answered there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nexa_runtime::wire::{DEFAULT_MAX_FRAME, Envelope, ErrorCode, Hello, Message, Welcome};
use nexa_runtime::{JobId, RetryPolicy};
use quinn::{ConnectionError, Endpoint, SendStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::ALPN;
use crate::error::{ConnectError, RequestError, close};
use crate::frame_io::{FrameReader, write_frame};
use crate::identity::{FingerprintVerifier, Trust, provider};
use crate::link::{Flush, HELLO_ID, Inbound, Link, Side, read_loop, write_loop};

/// Settings of a client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server's address.
    pub server: SocketAddr,
    /// Other addresses of the control plane (its standbys, which serve once they lead): a
    /// connection is tried at each address in turn, `server` first.
    pub also: Vec<SocketAddr>,
    /// The name to check the certificate against when trusting a CA.
    pub server_name: String,
    /// How to trust the server.
    pub trust: Trust,
    /// What to say on every (re)connection.
    pub hello: Hello,
    /// The largest frame sent or accepted.
    pub max_frame: usize,
    /// A request gets an answer within this, or fails (time spent reconnecting included).
    pub request_timeout: Duration,
    /// Send a keep-alive this often when the connection is quiet.
    pub keep_alive: Duration,
    /// A connection with no traffic this long is lost.
    pub idle_timeout: Duration,
    /// Waits between reconnection attempts: `base` doubling up to `max`, with jitter.
    pub reconnect: RetryPolicy,
}

impl ClientConfig {
    /// Settings with defaults for everything but the server, the trust and the hello.
    pub fn new(server: SocketAddr, trust: Trust, hello: Hello) -> Self {
        Self {
            server,
            also: Vec::new(),
            server_name: crate::identity::CERT_NAMES[0].to_owned(),
            trust,
            hello,
            max_frame: DEFAULT_MAX_FRAME,
            request_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_millis(500),
            // Six keep-alives missed: a peer that died without a word (SIGKILL, a lost
            // machine) is found out within 3 s.
            idle_timeout: Duration::from_secs(3),
            reconnect: RetryPolicy {
                base: Duration::from_millis(100),
                max: Duration::from_secs(10),
                jitter: 0.5,
                ..RetryPolicy::default()
            },
        }
    }
}

/// Something the application should know about.
#[derive(Debug)]
pub enum ClientEvent {
    /// The connection was lost; reconnecting.
    Disconnected {
        /// Why it was lost.
        reason: String,
    },
    /// Connected again, as a new session.
    Reconnected {
        /// The new session's settings.
        welcome: Welcome,
    },
    /// The server sent a message (an assignment, a cancel); answer it with [`Pushed::reply`].
    Pushed(Pushed),
}

/// A message the server pushed, waiting for its answer. Dropping it unanswered answers the
/// server with an `Unavailable` error, so that its push does not wait out its timeout.
#[derive(Debug)]
pub struct Pushed {
    /// The message.
    pub message: Message,
    /// The connection it came on and its request id; taken by the answer.
    origin: Option<(Arc<Link>, u64)>,
}

impl Pushed {
    pub(crate) fn new(message: Message, link: Arc<Link>, id: u64) -> Self {
        Self {
            message,
            origin: Some((link, id)),
        }
    }

    /// Answers the server, on the connection the push came on. If that connection is gone
    /// meanwhile, the answer is lost with it, and the server's push fails.
    pub fn reply(mut self, answer: Message) {
        if let Some((link, id)) = self.origin.take() {
            link.answer(id, &answer, Flush::Now);
        }
    }
}

impl Drop for Pushed {
    fn drop(&mut self) {
        if let Some((link, id)) = self.origin.take() {
            let refusal = Message::Error {
                code: ErrorCode::Unavailable,
                message: format!("the worker dropped the {} unanswered", self.message.name()),
            };
            link.answer(id, &refusal, Flush::Now);
        }
    }
}

/// A connection to the control plane that survives reconnects.
#[derive(Debug)]
pub struct Client {
    config: Arc<ClientConfig>,
    link: watch::Receiver<Option<Arc<Link>>>,
    supervisor: JoinHandle<()>,
    endpoint: Endpoint,
}

impl ClientConfig {
    /// The QUIC settings this configuration connects with, for tools and tests that speak
    /// the protocol by hand.
    pub fn quic(&self) -> Result<quinn::ClientConfig, ConnectError> {
        quic_config(self).map(|(quic, _)| quic)
    }
}

/// The TLS and QUIC settings for connecting with `config.trust`. The fingerprint verifier is
/// returned so that a mismatch can be explained.
fn quic_config(
    config: &ClientConfig,
) -> Result<(quinn::ClientConfig, Option<Arc<FingerprintVerifier>>), ConnectError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConnectError::Config(e.to_string()))?;
    let (mut tls, verifier) = match &config.trust {
        Trust::Fingerprint(fp) => {
            let verifier = Arc::new(FingerprintVerifier::new(*fp));
            let tls = builder
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth();
            (tls, Some(verifier))
        }
        Trust::CaFile(path) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| ConnectError::Config(format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| ConnectError::Config(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| ConnectError::Config(format!("{}: {e}", path.display())))?;
            }
            (
                builder.with_root_certificates(roots).with_no_client_auth(),
                None,
            )
        }
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ConnectError::Config(e.to_string()))?;
    let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
    quic.transport_config(Arc::new(crate::transport_config(
        config.keep_alive,
        config.idle_timeout,
        0,
    )));
    Ok((quic, verifier))
}

/// A client endpoint on an ephemeral port of the server's address family. Many clients may
/// share one.
pub fn client_endpoint(server: SocketAddr) -> Result<Endpoint, ConnectError> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    crate::endpoint(local, None, None).map_err(|e| ConnectError::Failed {
        addr: server.to_string(),
        reason: format!("cannot open a UDP socket: {e}"),
    })
}

/// A connection that has been welcomed, before its link starts.
struct Welcomed {
    connection: quinn::Connection,
    send: SendStream,
    reader: FrameReader,
    welcome: Welcome,
}

/// Connects to the control plane at every one of its addresses at once, and keeps the first
/// that answers and says hello (a standby serves nothing, so only the leader answers); the
/// error is one of theirs when none does.
async fn connect_any(endpoint: &Endpoint, config: &ClientConfig) -> Result<Welcomed, ConnectError> {
    if config.also.is_empty() {
        return connect_once(endpoint, config, config.server).await;
    }
    let attempts = std::iter::once(config.server)
        .chain(config.also.iter().copied())
        .map(|addr| Box::pin(connect_once(endpoint, config, addr)));
    futures_util::future::select_ok(attempts)
        .await
        .map(|(welcomed, _others)| welcomed)
}

/// Connects once to `addr` and says hello.
async fn connect_once(
    endpoint: &Endpoint,
    config: &ClientConfig,
    addr: SocketAddr,
) -> Result<Welcomed, ConnectError> {
    let failed = |reason: String| ConnectError::Failed {
        addr: addr.to_string(),
        reason,
    };
    let (quic, verifier) = quic_config(config)?;
    let connecting = endpoint
        .connect_with(quic, addr, &config.server_name)
        .map_err(|e| failed(e.to_string()))?;
    let connection = match tokio::time::timeout(config.request_timeout, connecting).await {
        Err(_) => {
            return Err(failed(format!(
                "no answer within {:?}",
                config.request_timeout
            )));
        }
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            if let Some(v) = &verifier
                && let Some(seen) = v.seen().filter(|s| *s != v.expected())
            {
                return Err(ConnectError::FingerprintMismatch {
                    expected: v.expected(),
                    seen,
                });
            }
            return Err(failed(e.to_string()));
        }
    };
    let handshake = async {
        let (mut send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        let hello = Message::Hello(config.hello.clone());
        write_frame(&mut send, HELLO_ID, &hello, config.max_frame)
            .await
            .map_err(|e| e.to_string())?;
        let mut reader = FrameReader::new(recv, config.max_frame);
        let answer = reader.next().await.map_err(|e| e.describe())?;
        Ok::<_, String>((send, reader, answer))
    };
    let answer = tokio::time::timeout(config.request_timeout, handshake).await;
    // A refusal closes the connection with a code and a reason: report those.
    if let Some(ConnectionError::ApplicationClosed(close)) = connection.close_reason() {
        return Err(ConnectError::Refused {
            code: close.error_code.into_inner(),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        });
    }
    match answer {
        Ok(Ok((
            send,
            reader,
            Envelope {
                id: HELLO_ID,
                message: Message::Welcome(welcome),
            },
        ))) => Ok(Welcomed {
            connection,
            send,
            reader,
            welcome,
        }),
        Ok(Ok((_, _, other))) => Err(failed(format!(
            "expected the welcome as the answer to the hello, got {} for request {}",
            other.message.name(),
            other.id
        ))),
        Ok(Err(e)) => Err(failed(e)),
        Err(_) => Err(failed(format!(
            "no welcome within {:?}",
            config.request_timeout
        ))),
    }
}

impl Client {
    /// Connects on an endpoint of its own. Returns the client, the server's welcome and the
    /// stream of events (disconnects, reconnects, pushed messages).
    pub async fn connect(
        config: ClientConfig,
    ) -> Result<(Self, Welcome, mpsc::Receiver<ClientEvent>), ConnectError> {
        let endpoint = client_endpoint(config.server)?;
        Self::connect_on(endpoint, config).await
    }

    /// Connects on `endpoint`, which other clients may share.
    pub async fn connect_on(
        endpoint: Endpoint,
        config: ClientConfig,
    ) -> Result<(Self, Welcome, mpsc::Receiver<ClientEvent>), ConnectError> {
        let welcomed = connect_any(&endpoint, &config).await?;
        let welcome = welcomed.welcome.clone();
        let config = Arc::new(config);
        let (events_tx, events) = mpsc::channel(256);
        let (link, tasks) = LinkTasks::start(welcomed, config.max_frame, events_tx.clone());
        let (link_tx, link_rx) = watch::channel(Some(link.clone()));
        let supervisor = tokio::spawn(supervise(
            endpoint.clone(),
            config.clone(),
            (link, tasks),
            link_tx,
            events_tx,
        ));
        Ok((
            Self {
                config,
                link: link_rx,
                supervisor,
                endpoint,
            },
            welcome,
            events,
        ))
    }

    /// Sends `message` and waits for the answer, waiting out a reconnect if need be, all
    /// within the request timeout.
    ///
    /// A request that times out takes nothing with it: its answer, if it comes later, is
    /// dropped, and the connection carries on. Requests waiting when the connection is lost
    /// fail at once with [`RequestError::Disconnected`].
    pub async fn request(&self, message: &Message) -> Result<Message, RequestError> {
        let timeout = self.config.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let current = self.link.borrow().clone();
        let link = match current {
            Some(link) => link,
            None => {
                let mut watch = self.link.clone();
                match tokio::time::timeout_at(deadline, watch.wait_for(Option::is_some)).await {
                    Ok(Ok(link)) => link.clone().ok_or(RequestError::Closed)?,
                    Ok(Err(_)) => return Err(RequestError::Closed),
                    Err(_) => {
                        return Err(RequestError::Disconnected(format!(
                            "not reconnected within {timeout:?}"
                        )));
                    }
                }
            }
        };
        link.call(message, deadline, timeout).await
    }

    /// Whether a connection is up now.
    pub fn is_connected(&self) -> bool {
        self.link.borrow().is_some()
    }

    /// Requests of the current connection waiting for their answer now.
    pub fn requests_in_flight(&self) -> usize {
        self.link
            .borrow()
            .as_ref()
            .map_or(0, |link| link.in_flight())
    }

    /// Closes the connection now and stops reconnecting, even while requests are in flight
    /// (they fail with [`RequestError::Closed`]); the control plane sees the worker leave at
    /// once.
    pub fn shutdown(&self) {
        self.supervisor.abort();
        if let Some(link) = self.link.borrow().as_ref() {
            link.close(close::NORMAL, "client closed");
            link.fail_all(RequestError::Closed);
        }
    }

    /// Closes the connection and stops reconnecting.
    pub async fn close(self) {
        self.shutdown();
        self.endpoint.wait_idle().await;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

/// The background reader and the writer task of one connection, stopped when dropped (a new
/// connection, or the client going away).
struct LinkTasks {
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl LinkTasks {
    fn start(
        welcomed: Welcomed,
        max_frame: usize,
        events: mpsc::Sender<ClientEvent>,
    ) -> (Arc<Link>, Self) {
        let Welcomed {
            connection,
            send,
            reader,
            ..
        } = welcomed;
        let inbound = Inbound::new(reader, events);
        let link = Link::new(connection, Side::Worker, max_frame, Some(inbound));
        let tasks = Self {
            reader: tokio::spawn(read_loop(link.clone())),
            writer: tokio::spawn(write_loop(link.clone(), send)),
        };
        (link, tasks)
    }
}

impl Drop for LinkTasks {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// Watches the connection and reconnects when it is lost.
async fn supervise(
    endpoint: Endpoint,
    config: Arc<ClientConfig>,
    mut started: (Arc<Link>, LinkTasks),
    current: watch::Sender<Option<Arc<Link>>>,
    events: mpsc::Sender<ClientEvent>,
) {
    // A seed per client so that clients cut off together do not reconnect in step.
    let seed = JobId(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos().into())
            ^ u64::from(endpoint.local_addr().map_or(0, |a| a.port())),
    );
    loop {
        let (link, tasks) = started;
        let reason = link.connection().closed().await.to_string();
        // The reader fails the waiting requests when it sees the loss; it may not have yet.
        link.fail_all(RequestError::Disconnected(reason.clone()));
        drop(tasks);
        current.send_replace(None);
        info!(reason, "disconnected from the control plane");
        if events
            .send(ClientEvent::Disconnected { reason })
            .await
            .is_err()
        {
            debug!("nobody listens for client events");
        }
        let mut attempt = 1;
        started = loop {
            tokio::time::sleep(config.reconnect.delay(seed, attempt)).await;
            match connect_any(&endpoint, &config).await {
                Ok(welcomed) => {
                    let welcome = welcomed.welcome.clone();
                    info!(
                        session = welcome.session,
                        "reconnected to the control plane"
                    );
                    let (link, tasks) =
                        LinkTasks::start(welcomed, config.max_frame, events.clone());
                    current.send_replace(Some(link.clone()));
                    let _ = events.send(ClientEvent::Reconnected { welcome }).await;
                    break (link, tasks);
                }
                Err(e) => {
                    debug!(attempt, "reconnect failed: {e}");
                    attempt = attempt.saturating_add(1);
                }
            }
        };
    }
}
