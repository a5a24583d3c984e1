//! Opening files: new, reopened, recovered, and every kind of file that must be refused with a
//! clear error instead of a panic.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};

use nexa_runtime::*;
use nexa_storage::{FORMAT_VERSION, OpenError, RedbStore};
use redb::{Database, ReadableDatabase, TableDefinition};

const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

fn spec(n: u64) -> JobSpec {
    JobSpec::new(JobParams::Generate(GenerateParams::new("chemistry", n)))
}

fn worker(store: &RedbStore, name: &str, now: Timestamp) -> WorkerId {
    let id = WorkerId::new(name).unwrap();
    store
        .register_worker(
            WorkerInfo {
                id: id.clone(),
                cpus: 4,
                memory_mb: 8192,
                gpus: vec![],
                labels: BTreeMap::new(),
                job_types: JobType::ALL.into_iter().collect(),
            },
            now,
        )
        .unwrap();
    id
}

#[test]
fn a_store_keeps_its_jobs_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/folder/nexa_forge.db");
    let ids: Vec<JobId> = {
        let store = RedbStore::open_at(&path, StoreConfig::default(), Timestamp(0)).unwrap();
        (1..=20)
            .map(|n| store.submit(spec(n), Timestamp(n)).unwrap().id)
            .collect()
    };
    let store = RedbStore::open_at(&path, StoreConfig::default(), Timestamp(100)).unwrap();
    for (n, id) in (1..=20).zip(&ids) {
        assert_eq!(store.get(*id).unwrap().spec, spec(n));
    }
    let next = store.submit(spec(1), Timestamp(200)).unwrap().id;
    assert!(ids.iter().all(|&id| id < next));
}

#[test]
fn leases_get_their_whole_time_again_when_the_store_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nexa_forge.db");
    let config = StoreConfig::default();
    let (job, epoch) = {
        let store = RedbStore::open_at(&path, config.clone(), Timestamp(0)).unwrap();
        let job = store.submit(spec(5), Timestamp(0)).unwrap().id;
        let w = worker(&store, "w1", Timestamp(0));
        let lease = store
            .lease_next(
                LeaseRequest {
                    worker: w,
                    free_gpus: vec![],
                },
                Timestamp(0),
            )
            .unwrap()
            .unwrap();
        store.start(job, lease.epoch, Timestamp(1)).unwrap();
        (job, lease.epoch)
    };
    // Still within the lease: nothing to recover.
    {
        let store = RedbStore::open_at(&path, config.clone(), Timestamp(1000)).unwrap();
        assert!(store.recovered().is_empty());
        assert_eq!(store.get(job).unwrap().state, JobState::Running);
    }
    // Closed for longer than the lease: the time closed is held against no worker, so the
    // lease runs its whole time from the open.
    let later = Timestamp(config.lease_ttl.as_millis() as u64 + 5_000);
    let store = RedbStore::open_at(&path, config.clone(), later).unwrap();
    assert!(store.recovered().is_empty());
    let j = store.get(job).unwrap();
    assert_eq!(j.state, JobState::Running);
    assert_eq!(
        j.live_attempt().unwrap().lease_expires_at,
        later.saturating_add(config.lease_ttl)
    );
    // A worker that does not come back loses it then.
    let expired = store
        .expire(later.saturating_add(config.lease_ttl))
        .unwrap();
    assert_eq!(
        expired,
        [Expired {
            job,
            state: JobState::Queued,
            timed_out: false,
        }]
    );
    let j = store.get(job).unwrap();
    let Some(AttemptOutcome::Failed(err)) = &j.attempts[0].outcome else {
        panic!("attempt not ended: {j:?}");
    };
    assert_eq!(err.class, FailureClass::WorkerLost);
    // The presumed-dead worker's completion is refused.
    let late = store.complete(job, epoch, JobOutput::default(), Timestamp(later.0 + 1));
    assert!(late.unwrap_err().is_stale());
}

#[test]
fn a_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    std::fs::write(&path, "these are my notes, not a database\n".repeat(500)).unwrap();
    let err = RedbStore::open(&path, StoreConfig::default()).unwrap_err();
    assert!(matches!(err, OpenError::NotAStore { .. }), "{err:?}");
    assert!(
        err.to_string().contains("is not a Nexa Forge store"),
        "{err}"
    );
    // The file was not touched.
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "these are my notes, not a database\n".repeat(500)
    );
}

#[test]
fn another_programs_redb_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.redb");
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let def: TableDefinition<'_, u64, u64> = TableDefinition::new("inventory");
        txn.open_table(def).unwrap().insert(1, 2).unwrap();
        txn.commit().unwrap();
    }
    let err = RedbStore::open(&path, StoreConfig::default()).unwrap_err();
    assert!(matches!(err, OpenError::NotAStore { .. }), "{err:?}");
    assert!(err.to_string().contains("another program"), "{err}");
}

#[test]
fn a_newer_format_is_refused_with_a_message_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nexa_forge.db");
    drop(RedbStore::open(&path, StoreConfig::default()).unwrap());
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("format_version", FORMAT_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = RedbStore::open(&path, StoreConfig::default()).unwrap_err();
    match &err {
        OpenError::NewerFormat {
            found, supported, ..
        } => {
            assert_eq!((*found, *supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
    assert!(
        err.to_string().contains("written by a newer Nexa Forge"),
        "{err}"
    );
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nexa_forge.db");
    let _first = RedbStore::open(&path, StoreConfig::default()).unwrap();
    let err = RedbStore::open(&path, StoreConfig::default()).unwrap_err();
    assert!(matches!(err, OpenError::AlreadyOpen { .. }), "{err:?}");
}

#[test]
fn a_folder_that_cannot_be_created_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("var");
    std::fs::write(&blocker, "a file where the folder should be").unwrap();
    let err = RedbStore::open(blocker.join("nexa_forge.db"), StoreConfig::default()).unwrap_err();
    match &err {
        OpenError::Folder { path, .. } => assert_eq!(path, &blocker),
        other => panic!("expected Folder, got {other:?}"),
    }
    assert!(
        err.to_string().starts_with("cannot create the data folder"),
        "{err}"
    );
}

/// A way to damage a file.
type Damage = Box<dyn Fn(&mut std::fs::File)>;

/// Damaged files: truncated, or with bytes overwritten. Whatever redb makes of them, opening
/// and reading give an error or the data, and never take the process down.
#[test]
fn damaged_files_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original.db");
    {
        let store = RedbStore::open_at(&original, StoreConfig::default(), Timestamp(0)).unwrap();
        let specs = (1..=300).map(spec).collect();
        store.submit_batch(specs, Timestamp(0)).unwrap();
    }
    let bytes = std::fs::read(&original).unwrap();
    let len = bytes.len() as u64;
    let mut damages: Vec<(String, Damage)> = Vec::new();
    for cut in [len / 2, 4096, 100] {
        damages.push((
            format!("truncated to {cut} bytes"),
            Box::new(move |f: &mut std::fs::File| f.set_len(cut).unwrap()),
        ));
    }
    for offset in [0u64, 64, 512, len / 3, len / 2, len - 4096] {
        damages.push((
            format!("overwritten at {offset}"),
            Box::new(move |f: &mut std::fs::File| {
                f.seek(SeekFrom::Start(offset)).unwrap();
                f.write_all(&[0xA5; 256]).unwrap();
            }),
        ));
    }
    for (what, damage) in damages {
        let path = dir.path().join("damaged.db");
        std::fs::write(&path, &bytes).unwrap();
        damage(&mut std::fs::OpenOptions::new().write(true).open(&path).unwrap());
        let outcome = std::panic::catch_unwind(|| {
            match RedbStore::open_at(&path, StoreConfig::default(), Timestamp(0)) {
                Err(e) => format!("refused: {e}"),
                Ok(store) => {
                    let page = store.list(ListQuery {
                        limit: 1000,
                        ..Default::default()
                    });
                    let submit = store.submit(spec(1), Timestamp(1));
                    format!(
                        "opened: list {:?}, submit {:?}",
                        page.map(|p| p.jobs.len()),
                        submit.map(|s| s.id)
                    )
                }
            }
        });
        assert!(outcome.is_ok(), "{what}: the store panicked");
        eprintln!("{what}: {}", outcome.unwrap());
    }
}

/// The queue's class index as format 3 keeps it.
const CLASS_QUEUE: TableDefinition<'_, (&[u8], u32, u64), Option<u64>> =
    TableDefinition::new("class_queue");

#[test]
fn a_format_2_store_gains_the_queue_index_by_class() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nexa_forge.db");
    let queued = {
        let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
        worker(&store, "w1", Timestamp(0));
        [1, 2].map(|n| store.submit(spec(n), Timestamp(0)).unwrap().id)
    };
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(txn.delete_table(CLASS_QUEUE).unwrap());
        txn.open_table(META)
            .unwrap()
            .insert("format_version", 2)
            .unwrap();
        txn.commit().unwrap();
    }
    let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
    for (at, job) in queued.into_iter().enumerate() {
        let request = LeaseRequest {
            worker: WorkerId::new("w1").unwrap(),
            free_gpus: vec![],
        };
        let lease = store.lease_next(request, Timestamp(1 + at as u64)).unwrap();
        assert_eq!(lease.map(|l| l.job.id), Some(job), "in queue order");
    }
}

#[test]
fn a_format_1_store_gains_the_index_of_each_workers_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nexa_forge.db");
    let (leased, queued) = {
        let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
        let w = worker(&store, "w1", Timestamp(0));
        let leased = store.submit(spec(1), Timestamp(0)).unwrap().id;
        let queued = store.submit(spec(2), Timestamp(0)).unwrap().id;
        let request = LeaseRequest {
            worker: w,
            free_gpus: vec![],
        };
        let lease = store.lease_next(request, Timestamp(1)).unwrap().unwrap();
        assert_eq!(lease.job.id, leased);
        (leased, queued)
    };
    // As format 1 left it: no index of workers' jobs, nor of the queue by class.
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let index: TableDefinition<'_, (&str, u64), ()> = TableDefinition::new("worker_jobs");
        assert!(txn.delete_table(index).unwrap());
        assert!(txn.delete_table(CLASS_QUEUE).unwrap());
        txn.open_table(META)
            .unwrap()
            .insert("format_version", 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
    let on_w1 = store
        .list(ListQuery {
            worker: Some(WorkerId::new("w1").unwrap()),
            ..ListQuery::default()
        })
        .unwrap();
    assert_eq!(
        on_w1.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [leased]
    );
    assert!(store.get(queued).is_ok());
    // The queued job is found through the class index built from the queue.
    let request = LeaseRequest {
        worker: WorkerId::new("w1").unwrap(),
        free_gpus: vec![],
    };
    let lease = store.lease_next(request, Timestamp(2)).unwrap().unwrap();
    assert_eq!(lease.job.id, queued);
    drop(store);
    let db = Database::create(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let version = txn.open_table(META).unwrap().get("format_version").unwrap();
    assert_eq!(version.map(|v| v.value()), Some(FORMAT_VERSION));
}
