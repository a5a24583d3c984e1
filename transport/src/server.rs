//! The control plane's end: accepts workers, checks who they are, serves their requests and
//! pushes messages to them.
//!
//! A connection starts with the worker's hello, request 0 on the one stream the worker opens.
//! The server checks the protocol version and the join token (in constant time) and asks the
//! [`Handler`] whether to accept the worker; any refusal closes the connection with a
//! [`close`] code and a reason the worker can print. A worker that says nothing within the
//! handshake timeout is closed as well. After the welcome, that stream carries everything
//! (see the `link` module): the server reads frames in a loop and polls each request's handler
//! once there; a handler that has to wait goes on on a task of its own (up to [`MAX_IN_FLIGHT`]
//! per connection), so a long poll holds up nothing else. Answers go out as they are ready, in
//! any order. A push is a request the
//! server makes on the same stream, with an odd id.
//!
//! A misbehaving peer (garbage, an oversized frame, a wrong token, an answer to a push it was
//! never sent) only ever loses its own connection; the server carries on.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use nexa_runtime::WorkerId;
use nexa_runtime::wire::{DEFAULT_MAX_FRAME, Envelope, Hello, Message, Welcome};
use quinn::{Connection, Endpoint, VarInt};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::ALPN;
use crate::error::{RequestError, ServerError, close};
use crate::frame_io::{FrameReader, ReadFailure, write_frame};
use crate::identity::{Fingerprint, ServerIdentity, provider};
use crate::link::{Flush, Link, Side, write_loop};

/// Requests of one connection whose handlers run at once; beyond, the server stops reading
/// the connection until one is answered, and QUIC's flow control holds the worker back.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

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
            keep_alive: Duration::from_millis(500),
            // Six keep-alives missed: a peer that died without a word (SIGKILL, a lost
            // machine) is found out within 3 s.
            idle_timeout: Duration::from_secs(3),
            push_timeout: Duration::from_secs(10),
        }
    }
}

/// A connected, authenticated worker.
#[derive(Clone, Debug)]
pub struct Session {
    id: u64,
    worker: WorkerId,
    link: Arc<Link>,
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
        self.link.connection().remote_address()
    }

    /// Sends `message` to the worker (an assignment, a cancel) and waits for its answer, up
    /// to the push timeout. A push made while the handler's `connected` runs goes out right
    /// after the welcome.
    pub async fn push(&self, message: &Message) -> Result<Message, RequestError> {
        let deadline = tokio::time::Instant::now() + self.push_timeout;
        self.link.call(message, deadline, self.push_timeout).await
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.link.connection().close_reason().is_some()
    }

    /// Closes the connection with a [`close`] code and a reason.
    pub fn close(&self, code: u32, reason: &str) {
        self.link.close(code, reason);
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

    /// A request from a connected worker; the answer goes back with the request's id. It is
    /// polled first on the task that reads the connection and, if it has to wait, goes on on
    /// a task of its own: it may take its time (a long poll) while the worker's other
    /// requests are served, but should not block the thread.
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
            .with_single_cert(identity.certs, identity.key.clone_key())
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        let mut quic = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        quic.transport_config(Arc::new(crate::transport_config(
            config.keep_alive,
            config.idle_timeout,
            1,
        )));
        // The key of its stateless resets comes from its identity, so a restarted server
        // makes the workers of its earlier run reconnect at once.
        let secret = identity.key.secret_der().to_vec();
        let endpoint =
            crate::endpoint(config.listen, Some(quic), Some(&secret)).map_err(|reason| {
                ServerError::Bind {
                    addr: config.listen,
                    reason,
                }
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

fn close_with(connection: &Connection, code: u32, reason: &str) {
    debug!(remote = %connection.remote_address(), code, reason, "closing connection");
    connection.close(VarInt::from_u32(code), reason.as_bytes());
}

/// Closes the connection for `failure` if the peer caused it; the reason the connection
/// ended, either way.
fn end_for(connection: &Connection, failure: &ReadFailure) -> String {
    if let Some((code, reason)) = failure.refusal(Side::ControlPlane.name()) {
        close_with(connection, code, &reason);
        return reason;
    }
    match connection.close_reason() {
        Some(e) => e.to_string(),
        None => {
            // The connection is up but its stream failed: the worker reset it.
            let reason = format!("the connection's stream failed: {}", failure.describe());
            close_with(connection, close::PROTOCOL_ERROR, &reason);
            reason
        }
    }
}

async fn serve<H: Handler>(
    connection: Connection,
    config: &ServerConfig,
    handler: &Arc<H>,
    sessions: &AtomicU64,
) {
    let handshake = async {
        let (send, recv) = connection
            .accept_bi()
            .await
            .map_err(|e| ReadFailure::Stream(e.to_string()))?;
        let mut reader = FrameReader::new(recv, config.max_frame);
        let hello = reader.next().await?;
        Ok::<_, ReadFailure>((send, reader, hello))
    };
    let (mut send, mut reader, hello_id, hello) =
        match tokio::time::timeout(config.handshake_timeout, handshake).await {
            Err(_) => {
                let reason = format!("no hello within {:?}", config.handshake_timeout);
                return close_with(&connection, close::HANDSHAKE_TIMEOUT, &reason);
            }
            Ok(Err(failure)) => {
                end_for(&connection, &failure);
                return;
            }
            Ok(Ok((
                send,
                reader,
                Envelope {
                    id,
                    message: Message::Hello(hello),
                },
            ))) => (send, reader, id, hello),
            Ok(Ok((_, _, other))) => {
                let reason = format!(
                    "expected hello as the first message, got {}",
                    other.message.name()
                );
                return close_with(&connection, close::PROTOCOL_ERROR, &reason);
            }
        };
    if !bool::from(hello.token.as_bytes().ct_eq(config.join_token.as_bytes())) {
        warn!(remote = %connection.remote_address(), worker = %hello.worker, "wrong join token");
        return close_with(&connection, close::BAD_TOKEN, "wrong join token");
    }
    let link = Link::new(
        connection.clone(),
        Side::ControlPlane,
        config.max_frame,
        None,
    );
    // Shared by the request tasks without copying the worker's name for each.
    let session = Arc::new(Session {
        id: sessions.fetch_add(1, Ordering::Relaxed),
        worker: hello.worker.clone(),
        link: link.clone(),
        push_timeout: config.push_timeout,
    });
    let welcome = match handler.connected(&session, hello).await {
        Ok(w) => Welcome {
            session: session.id,
            ..w
        },
        Err(reason) => return close_with(&connection, close::REJECTED, &reason),
    };
    let welcome = Message::Welcome(welcome);
    if let Err(e) = write_frame(&mut send, hello_id, &welcome, config.max_frame).await {
        link.fail_all(RequestError::Disconnected(e.to_string()));
        handler.disconnected(&session, e.to_string()).await;
        return;
    }
    // From here on frames go through the link; pushes queued by `connected` go out first.
    let writer = tokio::spawn(write_loop(link.clone(), send));
    debug!(session = session.id, worker = %session.worker, "worker connected");
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let reason = loop {
        // The answers of the frames read so far go out together, as the reader runs dry.
        let next = poll_fn(|cx| {
            let next = reader.poll_next(cx);
            if next.is_pending() {
                link.flush_now();
            }
            next
        });
        let Envelope { id, message } = match next.await {
            Ok(envelope) => envelope,
            Err(failure) => {
                if let ReadFailure::Decode(e) = &failure {
                    warn!(session = session.id, worker = %session.worker, "bad frame: {e}");
                }
                break end_for(&connection, &failure);
            }
        };
        if !link.is_request(id) {
            match link.settle(id, message) {
                Ok(()) => continue,
                Err(reason) => {
                    warn!(session = session.id, worker = %session.worker, reason, "protocol error");
                    close_with(&connection, close::PROTOCOL_ERROR, &reason);
                    break reason;
                }
            }
        }
        // The semaphore is never closed, so this waits only while the worker is at the limit.
        if in_flight.available_permits() == 0 {
            link.flush_now();
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break "request limit closed".to_owned();
        };
        let (handler, session) = (handler.clone(), session.clone());
        let mut answer = Box::pin(async move { handler.request(&session, message).await });
        // A handler that answers at once is done here, a task hop sooner, and its answer
        // leaves with the others of this read; one that has to wait (a long poll, a store
        // write) goes on on a task of its own and sends its answer when it has it.
        match poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx))).await {
            Poll::Ready(message) => {
                link.answer(id, &message, Flush::Later);
                drop(permit);
            }
            Poll::Pending => {
                let link = link.clone();
                tokio::spawn(async move {
                    let message = answer.await;
                    link.answer(id, &message, Flush::Now);
                    drop(permit);
                });
            }
        }
    };
    writer.abort();
    link.fail_all(RequestError::Disconnected(reason.clone()));
    handler.disconnected(&session, reason).await;
}
