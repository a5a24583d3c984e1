//! A full disk: writes fail with an error that says so, nothing unacknowledged is stored,
//! nothing acknowledged is lost, and the store works again once there is space.

use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nexa_runtime::*;
use nexa_storage::RedbStore;
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// A file whose size may not grow past `limit` bytes, as on a disk with that much space.
#[derive(Debug)]
struct LimitedDisk {
    file: FileBackend,
    limit: Arc<AtomicU64>,
}

impl LimitedDisk {
    fn open(path: &PathBuf, limit: &Arc<AtomicU64>) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Self {
            file: FileBackend::new(file).map_err(io::Error::other)?,
            limit: Arc::clone(limit),
        })
    }

    fn check(&self, end: u64) -> io::Result<()> {
        if end > self.limit.load(Ordering::SeqCst) {
            // ENOSPC, as the kernel reports it.
            Err(io::Error::from_raw_os_error(28))
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for LimitedDisk {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check(len)?;
        self.file.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check(offset + data.len() as u64)?;
        self.file.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.file.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(s, e)
    }
    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(s, e)
    }
}

fn spec(n: u64) -> JobSpec {
    let mut spec = JobSpec::new(JobParams::Generate(GenerateParams {
        seed: Some(n),
        ..GenerateParams::new(
            "a domain long enough to make each record take some room ".repeat(4),
            n + 1,
        )
    }));
    spec.idempotency_key = Some(format!("submit-{n}"));
    spec
}

#[test]
fn a_full_disk_fails_writes_clearly_and_the_store_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nexa_forge.db");
    let limit = Arc::new(AtomicU64::new(u64::MAX));
    let store = {
        let (path, limit) = (path.clone(), Arc::clone(&limit));
        RedbStore::open_with_backend(
            move || LimitedDisk::open(&path, &limit),
            "limited disk",
            StoreConfig::default(),
            Timestamp(0),
        )
        .unwrap()
    };
    store.submit(spec(0), Timestamp(0)).unwrap();
    // Leave a little room, then fill it.
    let size = std::fs::metadata(&path).unwrap().len();
    limit.store(size + 256 * 1024, Ordering::SeqCst);

    let mut acknowledged = vec![];
    let mut full = None;
    for n in 1..100_000 {
        match store.submit(spec(n), Timestamp(n)) {
            Ok(s) => acknowledged.push((n, s.id)),
            Err(e) => {
                full = Some((n, e));
                break;
            }
        }
    }
    let (refused, err) = full.expect("the disk never filled");
    assert!(
        acknowledged.len() > 10,
        "only {} submits fit",
        acknowledged.len()
    );
    match &err {
        StoreError::Storage(f) => assert_eq!(f.kind, FaultKind::DiskFull, "{err}"),
        other => panic!("expected a storage error, got {other:?}"),
    }
    assert!(err.to_string().contains("free disk space"), "{err}");

    // Still full: writes keep failing clearly, reads keep working.
    let again = store.submit(spec(refused), Timestamp(1));
    assert!(again.is_err());
    let (n, id) = acknowledged[acknowledged.len() / 2];
    assert_eq!(store.get(id).unwrap().spec, spec(n));

    // Space again: the refused submission can be made, once.
    limit.store(u64::MAX, Ordering::SeqCst);
    // The first write after the failure may find the store reopening (redb refuses all work
    // after an I/O error until reopened); the error says to retry, and a retry succeeds.
    let mut retried = store.submit(spec(refused), Timestamp(2));
    for _ in 0..3 {
        match &retried {
            Err(StoreError::Storage(f)) if f.kind == FaultKind::Unavailable => {
                retried = store.submit(spec(refused), Timestamp(2));
            }
            _ => break,
        }
    }
    let retried = retried.unwrap();
    assert!(retried.created);
    let twice = store.submit(spec(refused), Timestamp(3)).unwrap();
    assert_eq!((twice.id, twice.created), (retried.id, false));
    drop(store);

    // Reopened from the file: everything acknowledged is there, and it is consistent.
    let store = RedbStore::open_at(&path, StoreConfig::default(), Timestamp(10)).unwrap();
    for &(n, id) in &acknowledged {
        assert_eq!(store.get(id).unwrap().spec, spec(n));
    }
    assert_eq!(store.get(retried.id).unwrap().spec, spec(refused));
    let mut listed = 0;
    let mut before = None;
    loop {
        let page = store
            .list(ListQuery {
                state: Some(JobState::Queued),
                before,
                limit: 1000,
                ..Default::default()
            })
            .unwrap();
        listed += page.jobs.len();
        match page.next_before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    // Job 0, the acknowledged ones and the retried one; nothing half-written.
    assert_eq!(listed, acknowledged.len() + 2);
}
