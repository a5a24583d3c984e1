//! What a worker and the control plane say to each other, and how it is framed.
//!
//! A frame is a length prefix and an envelope:
//!
//! ```text
//! ┌─────────────┬─────────────┬─────────────┬──────────────────┬──────────────────────────┐
//! │ length: u32 │ magic "NXFG"│ version: u16│ request id: u64  │ message: bincode 2       │
//! │ big-endian, │             │ big-endian  │ big-endian       │ (standard config, serde) │
//! │ bytes after │             │             │                  │                          │
//! └─────────────┴─────────────┴─────────────┴──────────────────┴──────────────────────────┘
//!   4 bytes       4 bytes       2 bytes       8 bytes            the rest
//! ```
//!
//! The magic and version come first, outside bincode, so a peer speaking another protocol
//! version is recognised as such even when everything after them changed (version 1 had no
//! request id). The request id pairs an answer with its request, so that many requests can
//! share one stream and be answered in any order: an answer carries the id of the request it
//! answers. Which ids a side may pick is the transport's business; this module only carries
//! them. Decoding never panics and allocates at most a fixed multiple of the frame's size: a
//! frame too large, a wrong magic, an unknown version or bytes that do not decode give a
//! [`DecodeError`].
//!
//! This module is the only place messages are encoded; the codec can change here alone.
//! Golden tests pin the bytes of every message.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bincode::config::{Configuration, LittleEndian, Varint};
use serde::{Deserialize, Serialize};

use crate::artifact::{ArtifactKind, ArtifactMeta, Digest};
use crate::id::{Epoch, JobId, LeaseToken, WorkerId};
use crate::job::{JobError, JobOutput};
use crate::registry::ModelVersion;
use crate::spec::{JobSpec, JobType};
use crate::time::Timestamp;
use crate::worker::Gpu;

/// The first bytes of every envelope.
pub const MAGIC: [u8; 4] = *b"NXFG";

/// The protocol version this build speaks.
///
/// - 1: the envelope without a request id; one request per QUIC stream.
/// - 2: a request id in every envelope; requests share a long-lived stream.
/// - 3: artifacts (stat, upload in chunks, commit, read), training checkpoints and model
///   lookups.
/// - 4: job params with the new fields of every type (generate task, classes and noise;
///   distill alpha, hyperparameters and prompt template; evaluate split and suite; deploy
///   region; options for handlers), and a lease token in every assignment and report.
pub const PROTOCOL_VERSION: u16 = 5;

/// The default limit on a frame's length (the bytes after the length prefix).
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;

/// Bytes of the magic and version: the part of the header every version shares.
const VERSIONED_BYTES: usize = MAGIC.len() + 2;

/// Bytes of the whole header: magic, version and request id.
const HEADER_BYTES: usize = VERSIONED_BYTES + 8;

/// A message and the request it belongs to: what one frame carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// Pairs an answer with its request: an answer carries its request's id.
    pub id: u64,
    /// The message.
    pub message: Message,
}

/// A worker introduces itself: the first message on every connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The worker's name.
    pub worker: WorkerId,
    /// The cluster's join token; compared in constant time.
    pub token: String,
    /// CPU cores.
    pub cpus: u32,
    /// Main memory in MiB.
    pub memory_mb: u64,
    /// Its GPUs.
    pub gpus: Vec<Gpu>,
    /// Labels jobs can ask for.
    pub labels: BTreeMap<String, String>,
    /// The job types it runs.
    pub job_types: BTreeSet<JobType>,
}

/// The control plane accepts a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// This connection's session number.
    pub session: u64,
    /// A lease lasts this long (ms) without a heartbeat.
    pub lease_ttl_ms: u64,
    /// Send a heartbeat this often (ms).
    pub heartbeat_ms: u64,
    /// The longest a request for work is held open (ms).
    pub long_poll_ms: u64,
}

/// A worker with free capacity asks for a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AskForWork {
    /// Memory in MiB of each free GPU.
    pub free_gpus: Vec<u64>,
    /// Hold the request open up to this long (ms) for a job to arrive; 0 answers at once.
    pub wait_ms: u64,
}

/// A job leased to the worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The job.
    pub job: JobId,
    /// What to run.
    pub spec: JobSpec,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The fencing token to quote in every report.
    pub epoch: Epoch,
    /// The proof of holding the lease, to quote in every report with the epoch.
    pub lease_token: LeaseToken,
    /// Renew before this.
    pub lease_expires_at: Timestamp,
    /// The attempt times out here.
    pub deadline: Timestamp,
}

/// A job the worker is running, as reported in a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunningJob {
    /// The job.
    pub job: JobId,
    /// Its lease.
    pub epoch: Epoch,
    /// The lease's token.
    pub lease_token: LeaseToken,
    /// Progress from 0.0 to 1.0.
    pub progress: Option<f64>,
    /// Where the job serves requests, once it is ready to (a `deploy` job's replica): the
    /// URL of its inference server, said in every heartbeat while it holds.
    pub serving: Option<String>,
}

/// Whether `url` can be a replica's serving URL: `http://` or `https://`, a host, at most 2,048
/// bytes, no spaces or control characters. Peers send it; the control plane routes to it.
pub fn check_serving_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        _ if url.len() > 2048 => Err("is longer than 2,048 bytes".into()),
        _ if url.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            Err("holds spaces or control characters".into())
        }
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(()),
        _ => Err(format!(
            "{url:?} is not an http:// or https:// URL with a host"
        )),
    }
}

/// The worker is alive, and so are its jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Every job it runs.
    pub jobs: Vec<RunningJob>,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Stop these jobs: they are being cancelled.
    pub cancel: Vec<JobId>,
    /// These leases are gone (expired or replaced): drop the jobs without reporting.
    pub lost: Vec<JobId>,
}

/// Log lines of a running job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    /// The job.
    pub job: JobId,
    /// Its lease.
    pub epoch: Epoch,
    /// The lease's token.
    pub lease_token: LeaseToken,
    /// The number of the first line; lines are numbered per attempt from 0.
    pub first_seq: u64,
    /// The lines, without line endings.
    pub lines: Vec<String>,
}

/// What kind of request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed or not allowed now.
    BadRequest,
    /// It names a lease that is no longer live: drop the job.
    Stale,
    /// It names something that does not exist.
    NotFound,
    /// The control plane failed; try again later.
    Unavailable,
}

/// A message of the protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Worker → control plane, first: who it is and what it has.
    Hello(Hello),
    /// Control plane → worker: accepted.
    Welcome(Welcome),
    /// Worker → control plane: give me a job.
    AskForWork(AskForWork),
    /// Control plane → worker: run this.
    Assignment(Assignment),
    /// Control plane → worker: no job fits now.
    NoWork,
    /// Worker → control plane: the job's stage started.
    Started {
        /// The job.
        job: JobId,
        /// Its lease.
        epoch: Epoch,
        /// The lease's token.
        lease_token: LeaseToken,
    },
    /// Worker → control plane: alive, with its jobs.
    Heartbeat(Heartbeat),
    /// Control plane → worker: the answer to a heartbeat.
    HeartbeatAck(HeartbeatAck),
    /// Worker → control plane: log lines.
    LogBatch(LogBatch),
    /// Control plane → worker: every line before `next_seq` is stored.
    LogAck {
        /// The job.
        job: JobId,
        /// Send from this line next.
        next_seq: u64,
    },
    /// Worker → control plane: the job succeeded.
    Complete {
        /// The job.
        job: JobId,
        /// Its lease.
        epoch: Epoch,
        /// The lease's token.
        lease_token: LeaseToken,
        /// What it produced.
        output: JobOutput,
    },
    /// Worker → control plane: the attempt failed.
    Fail {
        /// The job.
        job: JobId,
        /// Its lease.
        epoch: Epoch,
        /// The lease's token.
        lease_token: LeaseToken,
        /// What went wrong, and whose fault it was.
        error: JobError,
    },
    /// Control plane → worker: stop this job.
    Cancel {
        /// The job.
        job: JobId,
        /// Its lease.
        epoch: Epoch,
        /// Why.
        reason: String,
    },
    /// Worker → control plane: leaving. With `drain`, it finishes its jobs first and asks for
    /// no more.
    Goodbye {
        /// Finish running jobs before leaving.
        drain: bool,
    },
    /// Either way: done, nothing to say.
    Ack,
    /// Either way: the request was refused.
    Error {
        /// What kind of refusal.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
    /// Worker → control plane: is this artifact stored? Answered with `ArtifactInfo`.
    ArtifactStat {
        /// The artifact.
        digest: Digest,
    },
    /// Control plane → worker: what is known of an artifact; `None` when it is not stored.
    ArtifactInfo(Option<ArtifactMeta>),
    /// Worker → control plane: the bytes of upload `upload` of `digest` from `offset` (at most
    /// [`ARTIFACT_CHUNK`] of them). Answered `Ack`, or an error that names the offset to
    /// resend from.
    ArtifactChunk {
        /// What the whole upload will hash to.
        digest: Digest,
        /// The uploader's id for this upload, so two uploads of the same bytes keep apart.
        upload: u64,
        /// Where these bytes go.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Worker → control plane: the upload is whole; keep it as an artifact the job made.
    /// Answered `ArtifactInfo(Some(..))`, or refused when the bytes hash to something else or
    /// the lease is not live.
    ArtifactCommit {
        /// What the bytes must hash to.
        digest: Digest,
        /// The upload.
        upload: u64,
        /// The file name it goes by.
        name: String,
        /// What it holds.
        kind: ArtifactKind,
        /// The job that made it.
        job: JobId,
        /// That job's lease.
        epoch: Epoch,
        /// The lease's token.
        lease_token: LeaseToken,
    },
    /// Worker → control plane: up to `len` bytes of an artifact from `offset`. Answered
    /// `ArtifactData`.
    ArtifactRead {
        /// The artifact.
        digest: Digest,
        /// The first byte wanted.
        offset: u64,
        /// How many, at most [`ARTIFACT_CHUNK`].
        len: u32,
    },
    /// Control plane → worker: bytes of an artifact (fewer than asked at its end).
    ArtifactData {
        /// The bytes.
        data: Vec<u8>,
        /// The artifact's whole size.
        size: u64,
    },
    /// Worker → control plane: the job's latest complete checkpoint is the stored artifact
    /// `digest`, after `step` steps. Answered `Ack`.
    CheckpointSaved {
        /// The job.
        job: JobId,
        /// Its lease.
        epoch: Epoch,
        /// The lease's token.
        lease_token: LeaseToken,
        /// Optimizer steps done.
        step: u64,
        /// The checkpoint artifact.
        digest: Digest,
    },
    /// Worker → control plane: where did earlier attempts of this job get to? Answered
    /// `CheckpointAt`.
    CheckpointQuery {
        /// The job.
        job: JobId,
        /// Its lease.
        epoch: Epoch,
        /// The lease's token.
        lease_token: LeaseToken,
    },
    /// Control plane → worker: the job's latest checkpoint (steps, artifact), if any.
    CheckpointAt(Option<(u64, Digest)>),
    /// Worker → control plane: which registered model version does `reference` (`name` or
    /// `name:N`) name? Answered `ModelFound`, or `NotFound` with the registered names.
    ResolveModel {
        /// The reference as the job gave it.
        reference: String,
    },
    /// Control plane → worker: the model version asked for.
    ModelFound(ModelVersion),
}

/// The most bytes one `ArtifactChunk` or `ArtifactData` carries: well inside
/// [`DEFAULT_MAX_FRAME`].
pub const ARTIFACT_CHUNK: usize = 1 << 20;

impl Message {
    /// The message's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::AskForWork(_) => "ask_for_work",
            Message::Assignment(_) => "assignment",
            Message::NoWork => "no_work",
            Message::Started { .. } => "started",
            Message::Heartbeat(_) => "heartbeat",
            Message::HeartbeatAck(_) => "heartbeat_ack",
            Message::LogBatch(_) => "log_batch",
            Message::LogAck { .. } => "log_ack",
            Message::Complete { .. } => "complete",
            Message::Fail { .. } => "fail",
            Message::Cancel { .. } => "cancel",
            Message::Goodbye { .. } => "goodbye",
            Message::Ack => "ack",
            Message::Error { .. } => "error",
            Message::ArtifactStat { .. } => "artifact_stat",
            Message::ArtifactInfo(_) => "artifact_info",
            Message::ArtifactChunk { .. } => "artifact_chunk",
            Message::ArtifactCommit { .. } => "artifact_commit",
            Message::ArtifactRead { .. } => "artifact_read",
            Message::ArtifactData { .. } => "artifact_data",
            Message::CheckpointSaved { .. } => "checkpoint_saved",
            Message::CheckpointQuery { .. } => "checkpoint_query",
            Message::CheckpointAt(_) => "checkpoint_at",
            Message::ResolveModel { .. } => "resolve_model",
            Message::ModelFound(_) => "model_found",
        }
    }
}

/// Bytes that are not a frame of this protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix announces more than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame is too short to hold an envelope.
    #[error("frame of {0} bytes is too short for an envelope")]
    TooShort(usize),
    /// The envelope does not start with [`MAGIC`].
    #[error("not a Nexa Forge frame (magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// The peer speaks another protocol version.
    #[error("protocol version {got} is not supported (this build speaks version {supported})")]
    UnsupportedVersion {
        /// The peer's version.
        got: u16,
        /// Ours.
        supported: u16,
    },
    /// The message does not decode.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// A message that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded frame would exceed the limit.
    #[error("{message} message of {len} bytes exceeds the frame limit of {max} bytes")]
    TooLarge {
        /// The message's name.
        message: &'static str,
        /// Its encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The serializer refused the value.
    #[error("cannot encode {message}: {reason}")]
    Unencodable {
        /// The message's name.
        message: &'static str,
        /// Why.
        reason: String,
    },
}

/// bincode's standard configuration: little-endian, variable-length integers.
fn config() -> Configuration<LittleEndian, Varint> {
    bincode::config::standard()
}

/// Decodes `payload` under a bincode limit proportional to its size.
///
/// bincode allocates a string for the length a message announces before it reads the bytes,
/// and counts what sequences and maps will take in memory; its limit, checked first, is what
/// keeps a 21-byte frame announcing a terabyte-long string from aborting the process. The
/// limit is the payload's size times [`MEMORY_PER_BYTE`] (in-memory values are larger than
/// their varint encoding: a map entry of two one-byte strings takes 48 bytes), at least
/// 64 KiB, rounded up to a power of two because bincode takes it as a const generic.
fn decode_limited(payload: &[u8]) -> Result<(Message, usize), bincode::error::DecodeError> {
    let budget = payload.len().saturating_mul(MEMORY_PER_BYTE);
    macro_rules! ladder {
        ($($bits:literal),*) => {
            $(if budget <= 1 << $bits {
                let config = config().with_limit::<{ 1 << $bits }>();
                return bincode::serde::decode_from_slice(payload, config);
            })*
        };
    }
    ladder!(16, 18, 20, 22, 24, 26, 28, 30, 32);
    Err(bincode::error::DecodeError::LimitExceeded)
}

/// How much memory a decoded message may take per byte of its encoding.
const MEMORY_PER_BYTE: usize = 64;

/// Appends `message`, as request `id` or its answer, as one frame (length prefix included)
/// to `out`. On an error `out` is left as it was.
pub fn encode_into(
    id: u64,
    message: &Message,
    out: &mut Vec<u8>,
    max_frame: usize,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    if let Err(e) = bincode::serde::encode_into_std_write(message, out, config()) {
        out.truncate(start);
        return Err(EncodeError::Unencodable {
            message: message.name(),
            reason: e.to_string(),
        });
    }
    let len = out.len() - start - LENGTH_BYTES;
    if len > max_frame || u32::try_from(len).is_err() {
        out.truncate(start);
        return Err(EncodeError::TooLarge {
            message: message.name(),
            len,
            max: max_frame,
        });
    }
    out[start..start + LENGTH_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// `message`, as request `id` or its answer, as one frame, length prefix included.
pub fn encode(id: u64, message: &Message, max_frame: usize) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    encode_into(id, message, &mut out, max_frame)?;
    Ok(out)
}

/// Checks the magic and the version at the start of an envelope, as far as `header` holds
/// them: a stream that is not this protocol is refused as soon as that shows.
fn check_versioned(header: &[u8]) -> Result<(), DecodeError> {
    if let [a, b, c, d, ..] = *header
        && [a, b, c, d] != MAGIC
    {
        return Err(DecodeError::BadMagic([a, b, c, d]));
    }
    if let [_, _, _, _, hi, lo, ..] = *header {
        let version = u16::from_be_bytes([hi, lo]);
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                got: version,
                supported: PROTOCOL_VERSION,
            });
        }
    }
    Ok(())
}

/// Decodes one envelope (the bytes after the length prefix).
pub fn decode_body(body: &[u8]) -> Result<Envelope, DecodeError> {
    // The magic and version are judged before the length of the rest, so that a frame of
    // another version is refused as such whatever its layout.
    if body.len() < VERSIONED_BYTES {
        return Err(DecodeError::TooShort(body.len()));
    }
    check_versioned(body)?;
    let Some((header, payload)) = body.split_first_chunk::<HEADER_BYTES>() else {
        return Err(DecodeError::TooShort(body.len()));
    };
    let mut id = [0; 8];
    id.copy_from_slice(&header[VERSIONED_BYTES..]);
    let id = u64::from_be_bytes(id);
    let (message, used) =
        decode_limited(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(DecodeError::Malformed(format!(
            "{} bytes left over after the message",
            payload.len() - used
        )));
    }
    Ok(Envelope { id, message })
}

/// Reads frames out of a byte stream that arrives in pieces: feed it what was read with
/// [`FrameDecoder::extend`], take whole envelopes out with [`FrameDecoder::next_envelope`].
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max_frame,
        }
    }

    /// Adds bytes read from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole envelope, `Ok(None)` when more bytes are needed. After an error the
    /// stream is out of step and must be closed.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, DecodeError> {
        let pending = &self.buf[self.start..];
        if pending.len() < LENGTH_BYTES {
            return Ok(None);
        }
        let len = u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        if len > self.max_frame {
            return Err(DecodeError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if pending.len() < LENGTH_BYTES + len {
            // Refuse garbage and other versions as soon as their header shows, rather than
            // waiting for a length of bytes that will never make sense.
            check_versioned(&pending[LENGTH_BYTES..])?;
            return Ok(None);
        }
        let body = &pending[LENGTH_BYTES..LENGTH_BYTES + len];
        let envelope = decode_body(body)?;
        self.start += LENGTH_BYTES + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.len() / 2 && self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(envelope))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorCode::BadRequest => "bad request",
            ErrorCode::Stale => "stale lease",
            ErrorCode::NotFound => "not found",
            ErrorCode::Unavailable => "unavailable",
        })
    }
}

#[cfg(test)]
mod tests;
