//! The shared store suite, run against [`RedbStore`]: one file per store, and a restart is a
//! real close and reopen of that file.

use nexa_runtime::testkit::Harness;
use nexa_runtime::{StoreConfig, Timestamp};
use nexa_storage::RedbStore;
use tempfile::TempDir;

/// Opens each store in a folder of its own, kept until the test ends.
#[derive(Default)]
struct RedbHarness {
    dirs: Vec<TempDir>,
}

impl Harness for RedbHarness {
    type Store = RedbStore;

    fn open(&mut self, config: StoreConfig) -> RedbStore {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("nexa_forge.db");
        self.dirs.push(dir);
        RedbStore::open_at(path, config, Timestamp(0)).expect("open a new store")
    }

    fn restart(&mut self, store: RedbStore, config: StoreConfig) -> RedbStore {
        let path = store.location().to_owned();
        drop(store);
        // Time 0: recovery of expired leases is the suite's to trigger with `expire(now)`.
        RedbStore::open_at(path, config, Timestamp(0)).expect("reopen the store")
    }
}

nexa_runtime::store_suite!(RedbHarness::default());
