//! [`IoCounts`]: what a redb store asks of its file (syncs, writes, bytes), counted exactly
//! by a backend between redb and the file, for benchmarks that report the cost of a job.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nexa_runtime::{StoreConfig, Timestamp};
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// What the file calls fail with (without redb's `experimental-api-5`).
type BackendIoError = std::io::Error;

use crate::redb_store::{OpenError, RedbStore};

/// What a store asked of its file since it was opened.
#[derive(Debug, Default)]
pub struct IoCounts {
    syncs: AtomicU64,
    writes: AtomicU64,
    bytes: AtomicU64,
}

/// [`IoCounts`] read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoSnapshot {
    /// `fsync`s (`sync_data`) of the file.
    pub syncs: u64,
    /// Writes to the file.
    pub writes: u64,
    /// Bytes written to the file.
    pub bytes: u64,
}

impl IoCounts {
    /// The counts now.
    pub fn snapshot(&self) -> IoSnapshot {
        IoSnapshot {
            syncs: self.syncs.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

impl IoSnapshot {
    /// What happened between `earlier` and this.
    pub fn since(self, earlier: IoSnapshot) -> IoSnapshot {
        IoSnapshot {
            syncs: self.syncs.saturating_sub(earlier.syncs),
            writes: self.writes.saturating_sub(earlier.writes),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }
}

/// The file backend, counting.
#[derive(Debug)]
struct Counted {
    file: FileBackend,
    counts: Arc<IoCounts>,
}

impl StorageBackend for Counted {
    fn len(&self) -> Result<u64, BackendIoError> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), BackendIoError> {
        self.counts.syncs.fetch_add(1, Ordering::Relaxed);
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        self.counts.writes.fetch_add(1, Ordering::Relaxed);
        self.counts
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.file.write(offset, data)
    }

    fn close(&self) -> Result<(), BackendIoError> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

impl RedbStore {
    /// [`RedbStore::open`], counting what the store asks of its file in `counts` (exactly:
    /// the backend between redb and the file counts each call).
    pub fn open_counted(
        path: impl AsRef<Path>,
        config: StoreConfig,
        now: Timestamp,
        counts: Arc<IoCounts>,
    ) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        crate::redb_store::make_folder(&path)?;
        let location = path.display().to_string();
        let make = move || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            let file = FileBackend::new(file).map_err(std::io::Error::other)?;
            Ok(Counted {
                file,
                counts: counts.clone(),
            })
        };
        Self::open_with_backend(make, location, config, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexa_runtime::{GenerateParams, JobParams, JobSpec, Store};

    #[test]
    fn a_counted_store_counts_its_syncs_and_writes() {
        let dir = tempfile::tempdir().unwrap();
        let counts = Arc::new(IoCounts::default());
        let store = RedbStore::open_counted(
            dir.path().join("s.db"),
            StoreConfig::default(),
            Timestamp(0),
            counts.clone(),
        )
        .unwrap();
        let before = counts.snapshot();
        let spec = JobSpec::new(JobParams::Generate(GenerateParams::new("physics", 10)));
        store.submit(spec, Timestamp(1)).unwrap();
        let one = counts.snapshot().since(before);
        assert!(one.syncs >= 1, "a durable submit syncs: {one:?}");
        assert!(one.writes >= 1 && one.bytes >= 1, "{one:?}");
        drop(store);
        // Opened again, the file holds the job.
        let store = RedbStore::open_counted(
            dir.path().join("s.db"),
            StoreConfig::default(),
            Timestamp(0),
            counts,
        )
        .unwrap();
        assert_eq!(
            store.counts().unwrap().iter().map(|(_, n)| n).sum::<u64>(),
            1
        );
    }
}
