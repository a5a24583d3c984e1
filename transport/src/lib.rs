//! The QUIC transport between Nexa Forge workers and the control plane.
//!
//! - **Who is who.** The server makes a self-signed certificate on first start and keeps it in
//!   its data folder ([`ServerIdentity`]); workers trust it by its SHA-256 [`Fingerprint`] or
//!   by a CA file ([`Trust`]). Workers prove themselves with the cluster's join token in their
//!   first message, compared in constant time.
//! - **What is said.** The messages of [`nexa_runtime::wire`], length-prefixed bincode frames
//!   with a size limit, each tagged with a request id. A connection has one QUIC stream, opened
//!   by the worker's hello and kept for the connection's life: the worker's requests (even
//!   ids) and the server's pushes (odd ids) share it, each answer carries its request's id, and
//!   answers come back in whatever order they are ready, so a long poll holds up nothing else.
//! - **When it breaks.** Bad bytes, oversized frames, wrong tokens and wrong versions close
//!   that one connection with a [`close`] code and a reason; the server carries on. A
//!   [`Client`] reconnects with backoff and jitter and tells the application; a [`LogStream`]
//!   resumes from the last acknowledged line, so no line is lost or doubled.
//!
//! It deliberately knows nothing of jobs beyond the messages: what a request does is the
//! [`Handler`]'s business.

mod client;
mod error;
mod frame_io;
mod identity;
mod link;
mod log_stream;
mod server;
mod uplink;

use std::time::Duration;

pub use client::{Client, ClientConfig, ClientEvent, Pushed, client_endpoint};
pub use error::{ConnectError, IdentityError, RequestError, ServerError, close};
pub use identity::{CERT_NAMES, Fingerprint, ParseFingerprintError, ServerIdentity, Trust};
pub use log_stream::{FlushError, LogStream};
pub use server::{Handler, Server, ServerConfig, Session};
pub use uplink::{Answer, Uplink};

/// The ALPN protocol name both ends require.
pub const ALPN: &[u8] = b"nexa/1";

/// UDP socket buffers: large enough that a burst of datagrams from many connections (a
/// thousand workers heartbeating, a hundred with requests in flight) is not dropped by the
/// kernel before quinn reads it. The kernel caps them at its `rmem_max`/`wmem_max`.
const SOCKET_BUFFER: usize = 4 << 20;

/// A UDP socket bound to `addr` with [`SOCKET_BUFFER`]-sized buffers.
fn udp_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer still works, it only drops sooner under bursts.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// An endpoint on `addr`, serving when `server` is given. With `reset_secret`, its stateless
/// resets are keyed by it rather than by a key of this process: a server started again with
/// the same secret tells the peers of its earlier run, at their next packet, that their
/// connection is gone, so they reconnect at once rather than after the idle timeout.
fn endpoint(
    addr: std::net::SocketAddr,
    server: Option<quinn::ServerConfig>,
    reset_secret: Option<&[u8]>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = udp_socket(addr)?;
    let config = match reset_secret {
        Some(secret) => {
            let key = ResetKey::derive(secret);
            // quinn's default connection ids carry a check keyed per process, and packets
            // whose id fails it are dropped unanswered: ids of an earlier run would get no
            // reset. These ids carry no check, so every unknown one is answered.
            let seed = key.0;
            let mut config = quinn::EndpointConfig::new(std::sync::Arc::new(key));
            config.cid_generator(move || Box::new(CidGenerator::new(&seed)));
            config
        }
        None => quinn::EndpointConfig::default(),
    };
    quinn::Endpoint::new(
        config,
        server,
        socket,
        std::sync::Arc::new(quinn::TokioRuntime),
    )
}

/// Connection ids of 8 bytes: SHA-256 of a secret, the process, the time and counters, so
/// they are unpredictable and unique without a random number generator of their own.
struct CidGenerator {
    seed: [u8; 32],
    next: u64,
}

impl CidGenerator {
    const LEN: usize = 8;

    fn new(secret: &[u8]) -> Self {
        use sha2::Digest;
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut hash = sha2::Sha256::new();
        hash.update(b"nexa connection ids\0");
        hash.update(secret);
        hash.update(std::process::id().to_le_bytes());
        hash.update(
            MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_le_bytes(),
        );
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        hash.update(since.as_nanos().to_le_bytes());
        Self {
            seed: hash.finalize().into(),
            next: 0,
        }
    }
}

impl quinn::ConnectionIdGenerator for CidGenerator {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use sha2::Digest;
        self.next += 1;
        let mut hash = sha2::Sha256::new();
        hash.update(self.seed);
        hash.update(self.next.to_le_bytes());
        quinn::ConnectionId::new(&hash.finalize()[..Self::LEN])
    }

    fn cid_len(&self) -> usize {
        Self::LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The HMAC-SHA256 key of an endpoint's stateless reset tokens.
struct ResetKey([u8; 32]);

impl ResetKey {
    /// The key for `secret` (the server's private key): stable across restarts, and telling
    /// nothing of the secret.
    fn derive(secret: &[u8]) -> Self {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update(b"nexa stateless reset key\0");
        hash.update(secret);
        Self(hash.finalize().into())
    }

    fn mac(&self, data: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        use hmac::{KeyInit, Mac};
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("HMAC takes any key size");
        mac.update(data);
        mac
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        use hmac::Mac;
        let tag = self.mac(data).finalize().into_bytes();
        let n = signature_out.len().min(tag.len());
        signature_out[..n].copy_from_slice(&tag[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        use hmac::Mac;
        self.mac(data)
            .verify_slice(signature)
            .map_err(|_| quinn::crypto::CryptoError)
    }
}

/// QUIC settings shared by both ends. `peer_streams` is how many bidirectional streams the
/// peer may open: one for the server (the worker's stream), none for the worker.
fn transport_config(
    keep_alive: Duration,
    idle_timeout: Duration,
    peer_streams: u32,
) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keep_alive));
    // An idle timeout too large for QUIC's encoding falls back to the default.
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    // A peer that opens more streams than the protocol has breaks QUIC's stream limit, and
    // quinn closes its connection.
    t.max_concurrent_bidi_streams(peer_streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    t
}
