//! What can go wrong, per boundary: identity files, connecting, requests.

use std::path::PathBuf;

use nexa_runtime::wire::{DecodeError, EncodeError};

use crate::identity::Fingerprint;

/// Application close codes: why a connection was closed. Sent with a reason the peer can print.
pub mod close {
    /// Closed normally (goodbye, or the server shutting down cleanly).
    pub const NORMAL: u32 = 0;
    /// The join token was wrong.
    pub const BAD_TOKEN: u32 = 1;
    /// The peer speaks another protocol version.
    pub const VERSION_MISMATCH: u32 = 2;
    /// The worker did not say hello in time.
    pub const HANDSHAKE_TIMEOUT: u32 = 3;
    /// The peer sent bytes that are not a valid frame, or a message out of place.
    pub const PROTOCOL_ERROR: u32 = 4;
    /// The peer sent a frame over the size limit.
    pub const FRAME_TOO_LARGE: u32 = 5;
    /// The server refused the worker (for example, an invalid worker id).
    pub const REJECTED: u32 = 6;
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 7;

    /// A short name for a close code.
    pub fn name(code: u64) -> &'static str {
        match code {
            0 => "closed",
            1 => "wrong join token",
            2 => "protocol version mismatch",
            3 => "handshake timeout",
            4 => "protocol error",
            5 => "frame too large",
            6 => "rejected",
            7 => "server shutting down",
            _ => "unknown close code",
        }
    }
}

/// The server's certificate or key cannot be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Making a certificate failed.
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    /// A file cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why a connection could not be made or was lost.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The server's certificate is not the one the client trusts.
    #[error(
        "the server's certificate fingerprint is {seen}, but {expected} was expected; check the fingerprint `nexa server` printed"
    )]
    FingerprintMismatch {
        /// What the client was told to trust.
        expected: Fingerprint,
        /// What the server presented.
        seen: Fingerprint,
    },
    /// The server closed the connection with a reason.
    #[error("the server refused the connection ({}): {reason}", close::name(*code))]
    Refused {
        /// A [`close`] code.
        code: u64,
        /// The server's reason.
        reason: String,
    },
    /// TLS or QUIC failed (no server there, a CA that does not match, a timeout).
    #[error("cannot connect to {addr}: {reason}")]
    Failed {
        /// The server's address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The trust settings cannot be used (for example, an unreadable CA file).
    #[error("invalid TLS settings: {0}")]
    Config(String),
}

/// Why a request got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    /// Not connected, and not reconnected within the timeout.
    #[error("not connected to the server: {0}")]
    Disconnected(String),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The message is too large to send.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The answer is not a valid frame.
    #[error("bad answer: {0}")]
    Decode(#[from] DecodeError),
    /// The stream failed mid-way (the connection was lost).
    #[error("the request was cut off: {0}")]
    Stream(String),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The certificate or key.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// TLS configuration.
    #[error("invalid TLS settings: {0}")]
    Tls(String),
    /// The socket cannot be bound.
    #[error("cannot listen on {addr} (UDP): {reason}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the OS said (in the message: not repeated as a source).
        reason: std::io::Error,
    },
}
