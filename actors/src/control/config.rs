//! A control plane's settings ([`ControlPlaneConfig`], which is also its builder) and why one
//! did not start ([`StartError`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nexa_runtime::{Store, StoreConfig, StoreError};
use nexa_storage::{ArtifactError, RemoteError};

use super::ControlPlane;

/// Settings of a control plane, and the builder that starts one.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// use nexa_actors::ControlPlane;
///
/// let plane = ControlPlane::builder("127.0.0.1:7443".parse()?, "var", "a-long-join-token")
///     .lease_ttl(Duration::from_secs(10))
///     .job_retention(Some(Duration::from_secs(7 * 24 * 3600)))
///     .start()
///     .await?;
/// assert_eq!(plane.config().store.lease_ttl, Duration::from_secs(10));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ControlPlaneConfig {
    /// Where workers connect (QUIC/UDP); port 0 picks a free one.
    pub listen: SocketAddr,
    /// The data folder: the store (`nexa_forge.db`, unless `database_url` names another),
    /// the certificate (`tls/`) and the artifacts (`artifacts/`).
    pub data_dir: PathBuf,
    /// Keep the jobs in this PostgreSQL database (`postgres://user:password@host/db`)
    /// instead of the data folder's redb file.
    pub database_url: Option<String>,
    /// The secret workers must present.
    pub join_token: String,
    /// Leases, retries and logs.
    pub store: StoreConfig,
    /// How often workers are asked to heartbeat.
    pub heartbeat: Duration,
    /// The longest a worker's request for work is held open.
    pub long_poll: Duration,
    /// Where artifacts' bytes go, e.g. `s3://bucket/prefix` (credentials and endpoint from the
    /// usual variables); `None` keeps them in the data folder. Their metadata stays there.
    pub artifacts_remote: Option<String>,
    /// A worker not heard from for this long is forgotten (it can register again).
    pub worker_retention: Duration,
    /// Finished jobs are deleted (with their logs) this long after they finished; `None`
    /// keeps them. Jobs that registered a model version, and jobs that a job not yet
    /// finished depends on, are kept.
    pub job_retention: Option<Duration>,
}

impl ControlPlaneConfig {
    /// Defaults for everything but the address, folder and token.
    pub fn new(
        listen: SocketAddr,
        data_dir: impl Into<PathBuf>,
        join_token: impl Into<String>,
    ) -> Self {
        Self {
            listen,
            data_dir: data_dir.into(),
            database_url: None,
            join_token: join_token.into(),
            store: StoreConfig {
                // Four heartbeats: a worker missing that many is not leased a job, so the
                // request for work a dead worker left parked is not answered with one.
                worker_liveness: Some(Duration::from_secs(2)),
                ..StoreConfig::default()
            },
            heartbeat: Duration::from_millis(500),
            long_poll: Duration::from_secs(10),
            artifacts_remote: None,
            worker_retention: Duration::from_secs(24 * 3600),
            job_retention: None,
        }
    }

    /// Keeps the jobs in the PostgreSQL database at `url` rather than the data folder.
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// Leases, retries and logs (see [`StoreConfig`]).
    pub fn store(mut self, store: StoreConfig) -> Self {
        self.store = store;
        self
    }

    /// How long a lease lasts without a heartbeat ([`StoreConfig::lease_ttl`]).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.store.lease_ttl = ttl;
        self
    }

    /// How often workers are asked to heartbeat.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// The longest a worker's request for work is held open.
    pub fn long_poll(mut self, wait: Duration) -> Self {
        self.long_poll = wait;
        self
    }

    /// Keeps artifacts' bytes in object storage at `uri` (`s3://bucket/prefix`, `gs://`,
    /// `az://`, `http(s)://`).
    pub fn artifacts_remote(mut self, uri: impl Into<String>) -> Self {
        self.artifacts_remote = Some(uri.into());
        self
    }

    /// Forgets workers not heard from for this long.
    pub fn worker_retention(mut self, retention: Duration) -> Self {
        self.worker_retention = retention;
        self
    }

    /// Deletes finished jobs this long after they finished; `None` keeps them.
    pub fn job_retention(mut self, retention: Option<Duration>) -> Self {
        self.job_retention = retention;
        self
    }

    /// Opens (or creates) the store in the data folder, or in the database of
    /// `database_url`, and starts the control plane.
    pub async fn start(self) -> Result<ControlPlane, StartError> {
        ControlPlane::start(self).await
    }

    /// Starts the control plane over a store of the caller's choice (an in-memory one, for
    /// example).
    pub async fn start_with_store(self, store: Arc<dyn Store>) -> Result<ControlPlane, StartError> {
        ControlPlane::start_with_store(self, store).await
    }
}

/// Why a control plane did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] nexa_storage::OpenError),
    /// The store failed while the control plane rebuilt its view.
    #[error("cannot read the store: {0}")]
    Recover(#[from] StoreError),
    /// The QUIC server did not start.
    #[error(transparent)]
    Server(#[from] nexa_transport::ServerError),
    /// The artifact folder cannot be made.
    #[error(transparent)]
    Artifacts(#[from] ArtifactError),
    /// The object storage for artifacts cannot be used.
    #[error(transparent)]
    RemoteArtifacts(#[from] RemoteError),
    /// An actor did not start.
    #[error("cannot start the {0} actor: {1}")]
    Actor(&'static str, String),
    /// The key of lease tokens cannot be read or made.
    #[error("the lease key: {0}")]
    LeaseKey(std::io::Error),
}
