//! The worker's end: connects, says hello, sends requests, receives pushes, and reconnects.
//!
//! [`Client::connect`] makes the first connection and reports why it failed (a wrong
//! fingerprint, a refused token) instead of retrying: those need a person. Once connected, a
//! background task watches the connection; when it is lost, the application gets
//! [`ClientEvent::Disconnected`], the task reconnects with exponential backoff and jitter, and
//! the application gets [`ClientEvent::Reconnected`]. Requests made meanwhile wait for the new
//! connection, up to the request timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nexa_runtime::wire::{DEFAULT_MAX_FRAME, Hello, Message, Welcome};
use nexa_runtime::{JobId, RetryPolicy};
use quinn::{Connection, ConnectionError, Endpoint, VarInt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::ALPN;
use crate::error::{ConnectError, RequestError, close};
use crate::frame_io::{read_frame, write_frame};
use crate::identity::{FingerprintVerifier, Trust, provider};

/// Settings of a client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server's address.
    pub server: SocketAddr,
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
            server_name: crate::identity::CERT_NAMES[0].to_owned(),
            trust,
            hello,
            max_frame: DEFAULT_MAX_FRAME,
            request_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            reconnect: RetryPolicy {
                base: Duration::from_millis(100),
                max: Duration::from_secs(10),
                jitter: 0.5,
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

/// A message the server pushed, waiting for its answer.
#[derive(Debug)]
pub struct Pushed {
    /// The message.
    pub message: Message,
    reply: oneshot::Sender<Message>,
}

impl Pushed {
    /// Answers the server.
    pub fn reply(self, answer: Message) {
        let _ = self.reply.send(answer);
    }
}

/// A connection to the control plane that survives reconnects.
#[derive(Debug)]
pub struct Client {
    config: Arc<ClientConfig>,
    connection: watch::Receiver<Option<Connection>>,
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
    crate::endpoint(local, None).map_err(|e| ConnectError::Failed {
        addr: server.to_string(),
        reason: format!("cannot open a UDP socket: {e}"),
    })
}

/// Connects once and says hello.
async fn connect_once(
    endpoint: &Endpoint,
    config: &ClientConfig,
) -> Result<(Connection, Welcome), ConnectError> {
    let failed = |reason: String| ConnectError::Failed {
        addr: config.server.to_string(),
        reason,
    };
    let (quic, verifier) = quic_config(config)?;
    let connecting = endpoint
        .connect_with(quic, config.server, &config.server_name)
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
            if let Some(v) = &verifier {
                if let Some(seen) = v.seen().filter(|s| *s != v.expected()) {
                    return Err(ConnectError::FingerprintMismatch {
                        expected: v.expected(),
                        seen,
                    });
                }
            }
            return Err(failed(e.to_string()));
        }
    };
    let handshake = async {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        let hello = Message::Hello(config.hello.clone());
        write_frame(&mut send, &hello, config.max_frame)
            .await
            .map_err(|e| e.to_string())?;
        read_frame(&mut recv, config.max_frame)
            .await
            .map_err(|e| format!("{e:?}"))
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
        Ok(Ok(Message::Welcome(welcome))) => Ok((connection, welcome)),
        Ok(Ok(other)) => Err(failed(format!("expected welcome, got {}", other.name()))),
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
        let (connection, welcome) = connect_once(&endpoint, &config).await?;
        let config = Arc::new(config);
        let (events_tx, events) = mpsc::channel(256);
        let (conn_tx, conn_rx) = watch::channel(Some(connection.clone()));
        let supervisor = tokio::spawn(supervise(
            endpoint.clone(),
            config.clone(),
            connection,
            conn_tx,
            events_tx,
        ));
        Ok((
            Self {
                config,
                connection: conn_rx,
                supervisor,
                endpoint,
            },
            welcome,
            events,
        ))
    }

    /// Sends `message` and waits for the answer, waiting out a reconnect if need be, all
    /// within the request timeout.
    pub async fn request(&self, message: &Message) -> Result<Message, RequestError> {
        let timeout = self.config.request_timeout;
        let deadline = Instant::now() + timeout;
        let mut watch = self.connection.clone();
        let connection =
            match tokio::time::timeout_at(deadline.into(), watch.wait_for(Option::is_some)).await {
                Ok(Ok(c)) => c.clone().ok_or(RequestError::Closed)?,
                Ok(Err(_)) => return Err(RequestError::Closed),
                Err(_) => {
                    return Err(RequestError::Disconnected(format!(
                        "not reconnected within {timeout:?}"
                    )));
                }
            };
        let max_frame = self.config.max_frame;
        let exchange = async {
            let (mut send, mut recv) = connection
                .open_bi()
                .await
                .map_err(|e| RequestError::Disconnected(e.to_string()))?;
            write_frame(&mut send, message, max_frame).await?;
            Ok(read_frame(&mut recv, max_frame).await?)
        };
        tokio::time::timeout_at(deadline.into(), exchange)
            .await
            .map_err(|_| RequestError::Timeout(timeout))?
    }

    /// Whether a connection is up now.
    pub fn is_connected(&self) -> bool {
        self.connection.borrow().is_some()
    }

    /// Closes the connection now and stops reconnecting, even while requests are in flight
    /// (they fail); the control plane sees the worker leave at once.
    pub fn shutdown(&self) {
        self.supervisor.abort();
        if let Some(c) = self.connection.borrow().as_ref() {
            c.close(VarInt::from_u32(close::NORMAL), b"client closed");
        }
    }

    /// Closes the connection and stops reconnecting.
    pub async fn close(self) {
        self.supervisor.abort();
        if let Some(c) = self.connection.borrow().as_ref() {
            c.close(VarInt::from_u32(close::NORMAL), b"client closed");
        }
        self.endpoint.wait_idle().await;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

/// Watches the connection, forwards pushes, and reconnects when it is lost.
async fn supervise(
    endpoint: Endpoint,
    config: Arc<ClientConfig>,
    mut connection: Connection,
    current: watch::Sender<Option<Connection>>,
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
        let pushes = tokio::spawn(forward_pushes(
            connection.clone(),
            config.max_frame,
            events.clone(),
        ));
        let reason = connection.closed().await.to_string();
        pushes.abort();
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
        connection = loop {
            tokio::time::sleep(config.reconnect.delay(seed, attempt)).await;
            match connect_once(&endpoint, &config).await {
                Ok((c, welcome)) => {
                    info!(
                        session = welcome.session,
                        "reconnected to the control plane"
                    );
                    current.send_replace(Some(c.clone()));
                    let _ = events.send(ClientEvent::Reconnected { welcome }).await;
                    break c;
                }
                Err(e) => {
                    debug!(attempt, "reconnect failed: {e}");
                    attempt = attempt.saturating_add(1);
                }
            }
        };
    }
}

/// Hands each message the server pushes to the application and sends back its answer.
async fn forward_pushes(
    connection: Connection,
    max_frame: usize,
    events: mpsc::Sender<ClientEvent>,
) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let events = events.clone();
        tokio::spawn(async move {
            let Ok(message) = read_frame(&mut recv, max_frame).await else {
                return;
            };
            let (reply, answer) = oneshot::channel();
            if events
                .send(ClientEvent::Pushed(Pushed { message, reply }))
                .await
                .is_err()
            {
                return;
            }
            if let Ok(answer) = answer.await {
                let _ = write_frame(&mut send, &answer, max_frame).await;
            }
        });
    }
}
