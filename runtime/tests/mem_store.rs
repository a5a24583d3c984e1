//! The shared store suite, run against [`MemStore`].

use nexa_runtime::testkit::Harness;
use nexa_runtime::{MemStore, StoreConfig};

/// Opens in-memory stores; a restart keeps the same object, since nothing is on disk.
struct MemHarness;

impl Harness for MemHarness {
    type Store = MemStore;

    fn open(&mut self, config: StoreConfig) -> MemStore {
        MemStore::new(config)
    }

    fn restart(&mut self, store: MemStore, _config: StoreConfig) -> MemStore {
        store
    }
}

nexa_runtime::store_suite!(MemHarness);

/// The in-memory store is cheap: run many more random histories than the shared suite does.
#[test]
fn random_histories_many() {
    nexa_runtime::testkit::random_histories(&mut MemHarness, 1000);
}
