//! The durable Nexa Forge stores: every job, attempt, event, log line and worker in one redb
//! file (by default [`DEFAULT_PATH`]), or in a PostgreSQL database ([`PgStore`]).
//!
//! [`RedbStore`] (and [`PgStore`], over PostgreSQL) implements the [`Engine`](nexa_runtime::Engine) of `nexa-runtime`, and so its
//! [`Store`](nexa_runtime::Store) trait with exactly the semantics of the in-memory reference
//! store; the same test suite runs against both. What this crate adds:
//!
//! - **Durability.** An operation returns only after the transaction holding it committed
//!   with `Durability::Immediate`.
//! - **Group commit.** Concurrent operations share one transaction and one fsync, so
//!   throughput grows with the number of callers.
//! - **Recovery.** Opening the store ends the leases that ran out while it was closed, as
//!   worker loss.
//! - **A versioned format.** The file records [`FORMAT_VERSION`]; a file of a newer format,
//!   a file that is not a redb database, or a damaged one is refused with an [`OpenError`]
//!   that says which, never a panic.
//!
//! It deliberately does not replicate: one control plane owns one file.

mod artifacts;
mod counted;
mod fault;
mod group;
mod postgres;
mod record;
mod redb_store;
mod remote;
mod tables;

pub use artifacts::{ArtifactError, ArtifactStore, CheckpointPointer, hash_file};
pub use counted::{IoCounts, IoSnapshot};
pub use postgres::{PgCredentials, PgStore, SCHEMA_VERSION, StoredSession, StoredToken, in_schema};
pub use redb_store::{DEFAULT_PATH, FORMAT_VERSION, OpenError, RedbStore};
pub use remote::{ByteStream, REMOTE_SCHEMES, RemoteBlobs, RemoteError, fetch_remote, is_remote};
