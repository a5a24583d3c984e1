//! [`RedbStore`]: the store in one redb file, with group commit.
//!
//! Writes go to one committer thread. It takes every write waiting in its queue, runs them one
//! after another inside one write transaction, commits that transaction with
//! `Durability::Immediate` (one fsync for the whole group) and only then answers each caller.
//! So a caller is acknowledged only once its write is on disk, and N concurrent callers share
//! one fsync instead of paying one each. Reads run on the caller's thread against a snapshot.
//!
//! If a group fails (a full disk, an I/O error), every write in it is answered with the error
//! and none of it is stored. redb refuses all work after an I/O error, so the committer then
//! closes and reopens the database; the store stays usable once the cause is gone.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use nexa_runtime::{
    Call, Engine, Expired, FaultKind, ReadTables, StorageFault, Store, StoreConfig, StoreError,
    Timestamp, WriteOp,
};
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, StorageBackend, TableHandle,
    WriteTransaction,
};

use crate::fault::{fault, io_kind};
use crate::group::{self, Reply, Request, unavailable};
use crate::tables::{
    JOBS, META, ReadSnapshot, WriteTables, index_queue_classes, index_worker_jobs,
};

/// The layout version this build writes, kept in the file's `meta` table. Format 2 added the
/// index of each worker's jobs, format 3 the queue's index by class; an older file gains
/// them (built from the jobs and the queue) when opened.
pub const FORMAT_VERSION: u64 = 3;

/// Creates the folder the store's file at `path` goes in.
pub(crate) fn make_folder(path: &Path) -> Result<(), OpenError> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(folder) => std::fs::create_dir_all(folder).map_err(|source| OpenError::Folder {
            path: folder.to_path_buf(),
            source,
        }),
        None => Ok(()),
    }
}

/// Where `nexa` keeps its store unless told otherwise.
pub const DEFAULT_PATH: &str = "var/nexa_forge.db";

const FORMAT_KEY: &str = "format_version";

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The folder that should hold the file cannot be created.
    #[error("cannot create the data folder {path}: {source}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Another process has the file open.
    #[error(
        "{location} is already open in another process; stop that process or use another data folder"
    )]
    AlreadyOpen {
        /// The file.
        location: String,
    },
    /// The file or its folder cannot be written.
    #[error(
        "{location} cannot be written: {source}; check permissions or choose another data folder"
    )]
    ReadOnly {
        /// The file.
        location: String,
        /// What failed.
        source: StorageFault,
    },
    /// The file is not a redb database, is not a Nexa Forge store, or is damaged.
    #[error("{location} is not a Nexa Forge store, or it is damaged: {detail}")]
    NotAStore {
        /// The file.
        location: String,
        /// What was found.
        detail: String,
    },
    /// The file was written by a newer version of Nexa Forge.
    #[error(
        "{location} was written by a newer Nexa Forge (store format {found}; this build reads format {supported}); upgrade nexa to open it"
    )]
    NewerFormat {
        /// The file.
        location: String,
        /// The format version in the file.
        found: u64,
        /// The newest format this build reads.
        supported: u64,
    },
    /// The database cannot be used: it cannot be reached, refused the credentials, or its
    /// schema cannot be made or migrated.
    #[error("cannot use the database {location}: {detail}")]
    Database {
        /// The database, without its password.
        location: String,
        /// What went wrong.
        detail: String,
    },
    /// Another storage failure.
    #[error("cannot open {location}: {source}")]
    Storage {
        /// The file.
        location: String,
        /// What failed.
        source: StorageFault,
    },
}

type Opener = Box<dyn Fn() -> Result<Database, DatabaseError> + Send + Sync>;

struct Shared {
    /// `None` only while the committer reopens the file after an I/O error, or when that
    /// reopening failed (it is tried again before the next group).
    db: RwLock<Option<Database>>,
    open: Opener,
    location: String,
}

impl Shared {
    fn db(&self) -> RwLockReadGuard<'_, Option<Database>> {
        self.db.read().unwrap_or_else(|e| e.into_inner())
    }

    fn db_mut(&self) -> RwLockWriteGuard<'_, Option<Database>> {
        self.db.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The durable job store: every table in one redb file.
///
/// ```
/// use nexa_runtime::{AuditParams, JobParams, JobSpec, Store, StoreConfig, Timestamp};
/// use nexa_storage::RedbStore;
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("nexa_forge.db");
/// let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
/// let spec = JobSpec::new(JobParams::Audit(AuditParams {
///     label_column: Some("label".into()),
///     ..AuditParams::new("file:///data/train.csv")
/// }));
/// let job = store.submit(spec, Timestamp(0)).unwrap(); // on disk once this returns
/// drop(store);
///
/// let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
/// assert_eq!(store.get(job.id).unwrap().id, job.id);
/// ```
pub struct RedbStore {
    config: StoreConfig,
    shared: Arc<Shared>,
    requests: Option<Sender<Request>>,
    committer: Option<JoinHandle<()>>,
    recovered: Vec<Expired>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("location", &self.shared.location)
            .finish_non_exhaustive()
    }
}

/// The wall clock, for callers that do not pass a time.
fn wall_clock() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(ms)
}

impl RedbStore {
    /// Opens the store at `path`, creating it (and its folder) when missing, and recovers
    /// using the wall clock: leases get their whole time from now (the store being closed is
    /// no sign that a worker died), and attempts past their timeout end.
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<Self, OpenError> {
        Self::open_at(path, config, wall_clock())
    }

    /// [`RedbStore::open`] with the time passed in.
    pub fn open_at(
        path: impl AsRef<Path>,
        config: StoreConfig,
        now: Timestamp,
    ) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        make_folder(&path)?;
        let location = path.display().to_string();
        let open: Opener = Box::new(move || Database::builder().create(&path));
        Self::start(open, location, config, now)
    }

    /// Opens a store kept in a custom redb backend. `make` is called again to reopen the
    /// store after an I/O error, so it must return a backend over the same storage.
    pub fn open_with_backend<B: StorageBackend>(
        make: impl Fn() -> std::io::Result<B> + Send + Sync + 'static,
        location: impl Into<String>,
        config: StoreConfig,
        now: Timestamp,
    ) -> Result<Self, OpenError> {
        let open: Opener = Box::new(move || {
            let backend = make().map_err(|e| DatabaseError::Storage(redb::StorageError::Io(e)))?;
            Database::builder().create_with_backend(backend)
        });
        Self::start(open, location.into(), config, now)
    }

    /// The attempts that ran past their timeout while the store was closed, as
    /// [`Store::expire`] ended them on open.
    pub fn recovered(&self) -> &[Expired] {
        &self.recovered
    }

    /// Where the store lives.
    pub fn location(&self) -> &str {
        &self.shared.location
    }

    fn start(
        open: Opener,
        location: String,
        config: StoreConfig,
        now: Timestamp,
    ) -> Result<Self, OpenError> {
        let db = open_checked(&open, &location)?;
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            open,
            location,
        });
        let (tx, rx) = mpsc::channel();
        let committer = {
            let shared = Arc::clone(&shared);
            let location = shared.location.clone();
            std::thread::Builder::new()
                .name("nexa-store-commit".into())
                .spawn(move || run_committer(&shared, &rx))
                .map_err(|e| OpenError::Storage {
                    location,
                    source: StorageFault::new(
                        FaultKind::Io,
                        format!("cannot start the committer thread: {e}"),
                    ),
                })?
        };
        let mut store = Self {
            config,
            shared,
            requests: Some(tx),
            committer: Some(committer),
            recovered: Vec::new(),
        };
        // The time the store was closed is held against no worker: every lease gets its whole
        // time from now, and only attempts past their timeout end.
        let recover = |store: &Self| {
            store.renew_leases(now.saturating_add(store.config.lease_ttl), now)?;
            store.expire(now)
        };
        store.recovered = recover(&store).map_err(|e| OpenError::Storage {
            location: store.shared.location.clone(),
            source: match e {
                StoreError::Storage(f) => f,
                other => StorageFault::new(FaultKind::Corrupt, format!("recovery failed: {other}")),
            },
        })?;
        Ok(store)
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the queue lets the committer finish what is queued and stop.
        drop(self.requests.take());
        if let Some(handle) = self.committer.take() {
            let _ = handle.join();
        }
    }
}

/// Opens the database and checks that it is a Nexa Forge store this build can read, creating
/// the tables in a new file. redb may panic on a file damaged in ways its checksums do not
/// cover; that is reported as a damaged store instead of taking the process down.
fn open_checked(open: &Opener, location: &str) -> Result<Database, OpenError> {
    match catch_unwind(AssertUnwindSafe(|| open_and_check(open, location))) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown failure");
            Err(OpenError::NotAStore {
                location: location.to_owned(),
                detail: format!("its structure is damaged ({what})"),
            })
        }
    }
}

fn open_and_check(open: &Opener, location: &str) -> Result<Database, OpenError> {
    let loc = || location.to_owned();
    let db = open().map_err(|e| match e {
        DatabaseError::DatabaseAlreadyOpen => OpenError::AlreadyOpen { location: loc() },
        DatabaseError::Storage(redb::StorageError::Io(io))
            if io_kind(&io) == FaultKind::ReadOnly =>
        {
            OpenError::ReadOnly {
                location: loc(),
                source: StorageFault::new(FaultKind::ReadOnly, io.to_string()),
            }
        }
        DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => OpenError::NotAStore {
            location: loc(),
            detail,
        },
        // redb reports a wrong magic number or a file too short for its header as I/O errors.
        DatabaseError::Storage(redb::StorageError::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            OpenError::NotAStore {
                location: loc(),
                detail: io.to_string(),
            }
        }
        DatabaseError::UpgradeRequired(v) => OpenError::NotAStore {
            location: loc(),
            detail: format!("it is a redb file of an old format ({v})"),
        },
        other => OpenError::Storage {
            location: loc(),
            source: fault(other),
        },
    })?;
    let storage = |e: StorageFault| OpenError::Storage {
        location: loc(),
        source: e,
    };
    let txn = db.begin_write().map_err(|e| storage(fault(e)))?;
    let found = {
        let names: Vec<String> = txn
            .list_tables()
            .map_err(|e| storage(fault(e)))?
            .map(|t| t.name().to_owned())
            .collect();
        if names.iter().any(|n| n == META.name()) {
            let meta = txn.open_table(META).map_err(|e| storage(fault(e)))?;
            let version = meta.get(FORMAT_KEY).map_err(|e| storage(fault(e)))?;
            version.map(|v| v.value())
        } else if names.is_empty()
            && txn
                .list_multimap_tables()
                .map_err(|e| storage(fault(e)))?
                .next()
                .is_none()
        {
            None
        } else {
            return Err(OpenError::NotAStore {
                location: loc(),
                detail: "it is a redb database of another program (no Nexa Forge format version)"
                    .into(),
            });
        }
    };
    match found {
        Some(FORMAT_VERSION) => {
            txn.abort().map_err(|e| storage(fault(e)))?;
        }
        Some(old @ (1 | 2)) => {
            // Format 1 had no index of each worker's jobs: build it from the jobs' attempts.
            if old == 1 {
                index_worker_jobs(&txn).map_err(storage)?;
            }
            // Formats 1 and 2 had no index of the queue by class: build it from the queue.
            index_queue_classes(&txn).map_err(storage)?;
            let mut meta = txn.open_table(META).map_err(|e| storage(fault(e)))?;
            meta.insert(FORMAT_KEY, FORMAT_VERSION)
                .map_err(|e| storage(fault(e)))?;
            drop(meta);
            txn.commit().map_err(|e| storage(fault(e)))?;
        }
        Some(v) if v > FORMAT_VERSION => {
            return Err(OpenError::NewerFormat {
                location: loc(),
                found: v,
                supported: FORMAT_VERSION,
            });
        }
        Some(v) => {
            return Err(OpenError::NotAStore {
                location: loc(),
                detail: format!("it has store format {v}, which this build cannot read"),
            });
        }
        None => {
            // A new file: create every table and record the format.
            drop(WriteTables::open(&txn).map_err(storage)?);
            let mut meta = txn.open_table(META).map_err(|e| storage(fault(e)))?;
            meta.insert(FORMAT_KEY, FORMAT_VERSION)
                .map_err(|e| storage(fault(e)))?;
            drop(meta);
            debug_assert_eq!(JOBS.name(), "jobs");
            txn.commit().map_err(|e| storage(fault(e)))?;
        }
    }
    Ok(db)
}

fn run_committer(shared: &Shared, requests: &Receiver<Request>) {
    while let Ok(first) = requests.recv() {
        let group = group::next_group(first, requests);
        // A database left unusable by an earlier failure is reopened before the group runs.
        if shared.db().is_none() {
            reopen(shared);
        }
        let (replies, failure) = commit_group(shared, group);
        // Reopened before the callers hear of the failure: what they do next (a read, a
        // retry) finds the store usable again, rather than the handle redb has given up on.
        if failure
            .as_ref()
            .is_some_and(|f| f.kind != FaultKind::Corrupt)
        {
            reopen(shared);
        }
        group::answer(replies, failure);
    }
}

/// Runs `group` in one transaction. Returns the answers to send and the group's failure.
fn commit_group(shared: &Shared, group: Vec<Request>) -> (Vec<Reply>, Option<StorageFault>) {
    let guard = shared.db();
    match guard.as_ref().map(Database::begin_write) {
        None => group::refuse(
            group,
            unavailable("the store is reopening after an I/O error"),
        ),
        Some(Err(e)) => group::refuse(group, fault(e)),
        Some(Ok(txn)) => run_group(txn, group),
    }
}

/// Runs the requests in `txn` and commits it if none failed on storage.
fn run_group(txn: WriteTransaction, group: Vec<Request>) -> (Vec<Reply>, Option<StorageFault>) {
    let mut tables = match WriteTables::open(&txn) {
        Ok(t) => t,
        Err(e) => return group::refuse(group, e),
    };
    let (replies, mut failure) = group::run(&mut tables, group);
    drop(tables);
    if failure.is_none() {
        if let Err(e) = txn.commit() {
            failure = Some(fault(e));
        }
    } else if let Err(e) = txn.abort() {
        failure = failure.or(Some(fault(e)));
    }
    (replies, failure)
}

/// Closes the database and opens it again, clearing redb's failed state after an I/O error.
fn reopen(shared: &Shared) {
    let mut db = shared.db_mut();
    // Close first: the file lock of the old handle would refuse the new one.
    drop(db.take());
    let reopened = catch_unwind(AssertUnwindSafe(|| (shared.open)()))
        .ok()
        .and_then(Result::ok);
    // Opening can itself hit the I/O error (redb repairs after a failed commit), leaving a
    // handle that refuses all work: keep it only if its tables open for writing.
    *db = reopened.filter(|d| {
        catch_unwind(AssertUnwindSafe(|| {
            d.begin_write().ok().is_some_and(|txn| {
                let usable = WriteTables::open(&txn).is_ok();
                let _ = txn.abort();
                usable
            })
        }))
        .unwrap_or(false)
    });
}

impl Engine for RedbStore {
    fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// A read is of a snapshot: it never waits for a commit, and its pages are in redb's
    /// cache or the local file.
    fn quick_reads(&self) -> bool {
        true
    }

    fn write<R: Send + 'static>(&self, _: Call, op: WriteOp<R>) -> Result<R, StoreError> {
        group::write(self.requests.as_ref(), op)
    }

    fn read<R>(
        &self,
        _: Call,
        op: &mut dyn FnMut(&dyn ReadTables) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let guard = self.shared.db();
        let db = guard
            .as_ref()
            .ok_or_else(|| unavailable("the store is reopening after an I/O error"))?;
        // redb may panic on pages damaged in ways its checksums miss; report that as a
        // corrupt store rather than unwinding through the caller.
        catch_unwind(AssertUnwindSafe(|| {
            let txn = db.begin_read().map_err(fault)?;
            let snapshot = ReadSnapshot::open(&txn)?;
            op(&snapshot)
        }))
        .unwrap_or_else(|_| {
            Err(StorageFault::new(
                FaultKind::Corrupt,
                "the store file is damaged: a read failed",
            )
            .into())
        })
    }
}
