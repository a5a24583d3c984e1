//! The control plane's end: accepts workers, checks who they are, serves their requests and
//! pushes messages to them.
//!
//! A connection starts with the worker's hello on its first stream. The server checks the
//! protocol version and the join token (in constant time) and asks the [`Handler`] whether to
//! accept the worker; any refusal closes the connection with a [`close`] code and a reason the
//! worker can print. A worker that says nothing within the handshake timeout is closed as
//! well. After that, every request is one bidirectional stream (one frame each way), so
//! requests never wait on each other; server pushes are streams the server opens.
//!
//! A misbehaving peer (garbage, an oversized frame, a wrong token) only ever loses its own
//! connection; the server carries on.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nexa_runtime::WorkerId;
use nexa_runtime::wire::{DEFAULT_MAX_FRAME, DecodeError, Hello, Message, Welcome};
use quinn::{Connection, Endpoint, VarInt};
use subtle::ConstantTimeEq;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::ALPN;
use crate::error::{RequestError, ServerError, close};
use crate::frame_io::{ReadFailure, read_frame, write_frame};
use crate::identity::{Fingerprint, ServerIdentity, provider};

/// Settings of a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The data folder; the certificate is kept in its `tls/` folder.
    pub data_dir: PathBuf,
    /// The secret workers must present.
    pub join_token: String,
    /// The largest frame accepted.
    pub max_frame: usize,
    /// A worker must say hello within this.
    pub handshake_timeout: Duration,
    /// Send a keep-alive this often when the connection is quiet.
    pub keep_alive: Duration,
    /// A connection with no traffic this long is closed.
    pub idle_timeout: Duration,
    /// How long a push waits for the worker's answer.
    pub push_timeout: Duration,
}

impl ServerConfig {
    /// Settings with defaults for everything but the address, folder and token.
    pub fn new(
        listen: SocketAddr,
        data_dir: impl Into<PathBuf>,
        join_token: impl Into<String>,
    ) -> Self {
        Self {
            listen,
            data_dir: data_dir.into(),
            join_token: join_token.into(),
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            push_timeout: Duration::from_secs(10),
        }
    }
}

/// A connected, authenticated worker.
#[derive(Clone, Debug)]
pub struct Session {
    id: u64,
    worker: WorkerId,
    connection: Connection,
    max_frame: usize,
    push_timeout: Duration,
}

impl Session {
    /// This connection's number, unique within the server's life.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The worker's name, from its hello.
    pub fn worker(&self) -> &WorkerId {
        &self.worker
    }

    /// The worker's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// Sends `message` to the worker (an assignment, a cancel) and waits for its answer.
    pub async fn push(&self, message: &Message) -> Result<Message, RequestError> {
        let exchange = async {
            let (mut send, mut recv) = self
                .connection
                .open_bi()
                .await
                .map_err(|e| RequestError::Disconnected(e.to_string()))?;
            write_frame(&mut send, message, self.max_frame).await?;
            Ok(read_frame(&mut recv, self.max_frame).await?)
        };
        tokio::time::timeout(self.push_timeout, exchange)
            .await
            .map_err(|_| RequestError::Timeout(self.push_timeout))?
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.connection.close_reason().is_some()
    }

    /// Closes the connection with a [`close`] code and a reason.
    pub fn close(&self, code: u32, reason: &str) {
        self.connection
            .close(VarInt::from_u32(code), reason.as_bytes());
    }
}

/// What the control plane does with workers. The transport calls it; it never blocks the
/// transport's other connections.
pub trait Handler: Send + Sync + 'static {
    /// A worker with the right token said hello. Return the settings to welcome it with (the
    /// transport fills in the session number), or a reason to refuse it.
    fn connected(
        &self,
        session: &Session,
        hello: Hello,
    ) -> impl Future<Output = Result<Welcome, String>> + Send;

    /// A request from a connected worker; the answer is sent back on the same stream.
    fn request(&self, session: &Session, message: Message) -> impl Future<Output = Message> + Send;

    /// The worker's connection ended (closed, timed out, or lost).
    fn disconnected(&self, session: &Session, reason: String) -> impl Future<Output = ()> + Send;
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    endpoint: Endpoint,
    fingerprint: Fingerprint,
    accept: JoinHandle<()>,
}

impl Server {
    /// Loads (or, on first start, makes) the certificate, binds and starts accepting workers.
    pub async fn start<H: Handler>(
        config: ServerConfig,
        handler: Arc<H>,
    ) -> Result<Self, ServerError> {
        let identity = ServerIdentity::load_or_create(&config.data_dir)?;
        if identity.created {
            info!(fingerprint = %identity.fingerprint, "made a self-signed certificate");
        }
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ServerError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(identity.certs, identity.key)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        let mut quic = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        quic.transport_config(Arc::new(crate::transport_config(
            config.keep_alive,
            config.idle_timeout,
        )));
        let endpoint =
            crate::endpoint(config.listen, Some(quic)).map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let accept = tokio::spawn(accept_loop(endpoint.clone(), Arc::new(config), handler));
        Ok(Self {
            endpoint,
            fingerprint: identity.fingerprint,
            accept,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The certificate fingerprint workers trust.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Closes every connection (workers see "server shutting down") and stops listening.
    pub async fn shutdown(self) {
        self.endpoint
            .close(VarInt::from_u32(close::SHUTDOWN), b"server shutting down");
        self.accept.abort();
        self.endpoint.wait_idle().await;
    }
}

async fn accept_loop<H: Handler>(endpoint: Endpoint, config: Arc<ServerConfig>, handler: Arc<H>) {
    let sessions = Arc::new(AtomicU64::new(1));
    while let Some(incoming) = endpoint.accept().await {
        let (config, handler, sessions) = (config.clone(), handler.clone(), sessions.clone());
        tokio::spawn(async move {
            match incoming.await {
                Ok(connection) => serve(connection, &config, &handler, &sessions).await,
                Err(e) => debug!("a connection attempt failed: {e}"),
            }
        });
    }
}

/// The close code and reason for a frame that could not be read during the handshake or a
/// request; `None` when the stream just failed.
fn refusal(failure: &ReadFailure) -> Option<(u32, String)> {
    match failure {
        ReadFailure::Decode(DecodeError::UnsupportedVersion { got, supported }) => Some((
            close::VERSION_MISMATCH,
            format!(
                "protocol version {got} is not supported; this server speaks version {supported}"
            ),
        )),
        ReadFailure::Decode(e @ DecodeError::TooLarge { .. }) => {
            Some((close::FRAME_TOO_LARGE, e.to_string()))
        }
        ReadFailure::Decode(e) => Some((close::PROTOCOL_ERROR, e.to_string())),
        ReadFailure::Stream(_) => None,
    }
}

fn close_with(connection: &Connection, code: u32, reason: &str) {
    debug!(remote = %connection.remote_address(), code, reason, "closing connection");
    connection.close(VarInt::from_u32(code), reason.as_bytes());
}

async fn serve<H: Handler>(
    connection: Connection,
    config: &ServerConfig,
    handler: &Arc<H>,
    sessions: &AtomicU64,
) {
    let handshake = async {
        let (send, mut recv) = connection
            .accept_bi()
            .await
            .map_err(|e| ReadFailure::Stream(e.to_string()))?;
        Ok::<_, ReadFailure>((send, read_frame(&mut recv, config.max_frame).await?))
    };
    let (mut send, hello) = match tokio::time::timeout(config.handshake_timeout, handshake).await {
        Err(_) => {
            let reason = format!("no hello within {:?}", config.handshake_timeout);
            return close_with(&connection, close::HANDSHAKE_TIMEOUT, &reason);
        }
        Ok(Err(failure)) => {
            if let Some((code, reason)) = refusal(&failure) {
                close_with(&connection, code, &reason);
            }
            return;
        }
        Ok(Ok((send, Message::Hello(hello)))) => (send, hello),
        Ok(Ok((_, other))) => {
            let reason = format!("expected hello as the first message, got {}", other.name());
            return close_with(&connection, close::PROTOCOL_ERROR, &reason);
        }
    };
    if !bool::from(hello.token.as_bytes().ct_eq(config.join_token.as_bytes())) {
        warn!(remote = %connection.remote_address(), worker = %hello.worker, "wrong join token");
        return close_with(&connection, close::BAD_TOKEN, "wrong join token");
    }
    let session = Session {
        id: sessions.fetch_add(1, Ordering::Relaxed),
        worker: hello.worker.clone(),
        connection: connection.clone(),
        max_frame: config.max_frame,
        push_timeout: config.push_timeout,
    };
    let welcome = match handler.connected(&session, hello).await {
        Ok(w) => Welcome {
            session: session.id,
            ..w
        },
        Err(reason) => return close_with(&connection, close::REJECTED, &reason),
    };
    if let Err(e) = write_frame(&mut send, &Message::Welcome(welcome), config.max_frame).await {
        handler.disconnected(&session, e.to_string()).await;
        return;
    }
    debug!(session = session.id, worker = %session.worker, "worker connected");
    let reason = loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                let (handler, session) = (handler.clone(), session.clone());
                let max_frame = config.max_frame;
                tokio::spawn(
                    async move { answer(send, recv, &handler, &session, max_frame).await },
                );
            }
            Err(e) => break e.to_string(),
        }
    };
    handler.disconnected(&session, reason).await;
}

async fn answer<H: Handler>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    handler: &Arc<H>,
    session: &Session,
    max_frame: usize,
) {
    let request = match read_frame(&mut recv, max_frame).await {
        Ok(m) => m,
        Err(failure) => {
            if let Some((code, reason)) = refusal(&failure) {
                warn!(session = session.id, worker = %session.worker, reason, "bad frame");
                session.close(code, &reason);
            }
            return;
        }
    };
    let response = handler.request(session, request).await;
    if let Err(e) = write_frame(&mut send, &response, max_frame).await {
        debug!(session = session.id, "answer not delivered: {e}");
    }
}
