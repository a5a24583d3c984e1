//! The shared store suite and the random histories, run against [`PgStore`] on a real
//! PostgreSQL server: each test in a schema of its own, and a restart is a real close and
//! reopen.
//!
//! Compiled with the `postgres-tests` feature (`scripts/check` turns every feature on) and
//! run against the server at `NEXA_TEST_DATABASE_URL`: `scripts/with-postgres` starts one and
//! sets it, e.g. `scripts/with-postgres cargo test -p nexa-storage --features postgres-tests`.
#![cfg(feature = "postgres-tests")]

use std::sync::atomic::{AtomicU64, Ordering};

use nexa_runtime::testkit::Harness;
use nexa_runtime::{
    GenerateParams, JobParams, JobSpec, JobState, ListQuery, Store, StoreConfig, StoreError,
    Timestamp,
};
use nexa_storage::{OpenError, PgCredentials, PgStore, SCHEMA_VERSION, StoredSession, StoredToken};

/// The server the tests use.
fn database_url() -> String {
    std::env::var("NEXA_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "NEXA_TEST_DATABASE_URL is not set: run the PostgreSQL tests under \
             scripts/with-postgres, which starts a server and sets it"
        )
    })
}

/// A fresh schema on the test server, and the URL of a store kept in it.
fn fresh_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = database_url();
    let schema = format!(
        "nexa_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = postgres::Client::connect(&base, postgres::NoTls).expect("connect");
    admin
        .batch_execute(&format!("create schema {schema}"))
        .expect("create schema");
    nexa_storage::in_schema(&base, &schema)
}

/// Opens each store in a schema of its own.
#[derive(Default)]
struct PgHarness {
    url: Option<String>,
}

impl Harness for PgHarness {
    type Store = PgStore;

    fn open(&mut self, config: StoreConfig) -> PgStore {
        let url = fresh_schema();
        self.url = Some(url.clone());
        PgStore::open_at(&url, config, Timestamp(0)).expect("open a new store")
    }

    fn restart(&mut self, store: PgStore, config: StoreConfig) -> PgStore {
        drop(store);
        let url = self.url.as_deref().expect("a store was opened");
        // Time 0: recovery of expired leases is the suite's to trigger with `expire(now)`.
        PgStore::open_at(url, config, Timestamp(0)).expect("reopen the store")
    }
}

nexa_runtime::store_suite!(PgHarness::default());

#[test]
fn jobs_read_as_rows_in_psql_terms() {
    let url = fresh_schema();
    let store = PgStore::open(&url, StoreConfig::default()).unwrap();
    let spec = JobSpec::new(JobParams::Generate(GenerateParams::new("physics", 10)));
    let id = store.submit(spec, Timestamp(1_700_000_000_000)).unwrap().id;
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let row = client
        .query_one(
            "select id, state, job_type, priority, extract(epoch from created_at)::bigint \
             from nexa_jobs",
            &[],
        )
        .unwrap();
    let (rid, state, job_type, priority, created): (i64, String, String, i32, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(
        (
            rid as u64,
            state.as_str(),
            job_type.as_str(),
            priority,
            created
        ),
        (id.0, "queued", "generate", 0, 1_700_000_000)
    );
    let version: i64 = client
        .query_one(
            "select value from nexa_meta where key = 'schema_version'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version as u64, SCHEMA_VERSION);
}

#[test]
fn tokens_and_sessions_are_kept_by_hash_and_an_emptied_token_table_stays_armed() {
    let url = fresh_schema();
    let keep = PgCredentials::open(&url).unwrap();
    assert_eq!(keep.tokens().unwrap(), (vec![], false), "no token made yet");
    let token = |n: u8, scope: &str, name: &str| StoredToken {
        hash: [n; 32],
        scope: scope.into(),
        name: name.into(),
    };
    keep.add_token(&token(1, "full", "ci")).unwrap();
    keep.add_token(&token(2, "worker", "node")).unwrap();
    keep.add_token(&token(3, "read", "ci")).unwrap();
    assert!(
        keep.add_token(&token(1, "read", "again")).is_err(),
        "one row a hash"
    );
    assert!(
        keep.add_token(&token(4, "root", "x")).is_err(),
        "no such scope"
    );
    // Another process (another control plane) sees them.
    let other = PgCredentials::open(&url).unwrap();
    let (tokens, armed) = other.tokens().unwrap();
    assert!(armed);
    let mut names: Vec<_> = tokens
        .iter()
        .map(|t| (t.name.as_str(), t.hash[0]))
        .collect();
    names.sort_unstable();
    assert_eq!(names, [("ci", 1), ("ci", 3), ("node", 2)]);
    assert_eq!(keep.revoke_tokens("ci").unwrap(), 2);
    assert_eq!(keep.revoke_tokens("ci").unwrap(), 0);
    assert_eq!(keep.revoke_tokens("node").unwrap(), 1);
    assert_eq!(other.tokens().unwrap(), (vec![], true), "still armed");

    let session = |worker: &str, n: u8, credential| StoredSession {
        worker: worker.into(),
        session: [n; 32],
        credential,
    };
    keep.put_session(&session("w1", 1, None), &[]).unwrap();
    keep.put_session(&session("w2", 2, Some([9; 32])), &[])
        .unwrap();
    // A new session replaces the worker's old one; forgotten workers go.
    keep.put_session(&session("w2", 3, Some([9; 32])), &["w1".into()])
        .unwrap();
    assert_eq!(other.sessions().unwrap(), [session("w2", 3, Some([9; 32]))]);
}

#[test]
fn a_schema_3_database_gains_the_queue_index_by_class() {
    let url = fresh_schema();
    let queued = {
        let store = PgStore::open_at(&url, StoreConfig::default(), Timestamp(0)).unwrap();
        let info = nexa_runtime::WorkerInfo {
            id: nexa_runtime::WorkerId::new("w1").unwrap(),
            cpus: 1,
            memory_mb: 1024,
            gpus: vec![],
            labels: Default::default(),
            job_types: nexa_runtime::JobType::ALL.into_iter().collect(),
        };
        store.register_worker(info, Timestamp(0)).unwrap();
        [1, 2].map(|n| {
            let spec = JobSpec::new(JobParams::Generate(GenerateParams::new("physics", n)));
            store.submit(spec, Timestamp(0)).unwrap().id
        })
    };
    // As schema 3 left it: no index of the queue by class.
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .batch_execute(
            "drop table nexa_class_queue; \
             update nexa_meta set value = 3 where key = 'schema_version'",
        )
        .unwrap();
    let store = PgStore::open_at(&url, StoreConfig::default(), Timestamp(0)).unwrap();
    for (at, job) in queued.into_iter().enumerate() {
        let request = nexa_runtime::LeaseRequest {
            worker: nexa_runtime::WorkerId::new("w1").unwrap(),
            free_gpus: vec![],
        };
        let lease = store.lease_next(request, Timestamp(1 + at as u64)).unwrap();
        assert_eq!(lease.map(|l| l.job.id), Some(job), "in queue order");
    }
}

#[test]
fn a_newer_schema_is_refused_with_a_message_that_says_so() {
    let url = fresh_schema();
    drop(PgStore::open(&url, StoreConfig::default()).unwrap());
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .execute(
            "update nexa_meta set value = $1 where key = 'schema_version'",
            &[&(SCHEMA_VERSION as i64 + 1)],
        )
        .unwrap();
    let err = PgStore::open(&url, StoreConfig::default()).unwrap_err();
    assert!(
        matches!(err, OpenError::NewerFormat { found, supported, .. }
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer Nexa Forge"), "{err}");
}

#[test]
fn an_unreachable_database_or_a_wrong_password_is_a_clear_error() {
    // Nothing listens on port 1.
    let err = PgStore::open(
        "postgres://nexa@127.0.0.1:1/nexa?connect_timeout=2",
        StoreConfig::default(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(
            "cannot use the database postgres://nexa@127.0.0.1:1/nexa: cannot connect"
        ),
        "{text}"
    );
    // A database that does not exist: PostgreSQL's own words.
    let base = database_url();
    let (head, _) = base.rsplit_once('/').unwrap();
    let err = PgStore::open(&format!("{head}/no_such_db"), StoreConfig::default()).unwrap_err();
    assert!(
        err.to_string().contains("\"no_such_db\" does not exist"),
        "{err}"
    );
    // Not a connection string at all.
    let err = PgStore::open("postgres://[::1", StoreConfig::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("not a PostgreSQL connection string"),
        "{err}"
    );
    // The password never shows.
    let err = PgStore::open(
        "postgres://nexa:hunter2@127.0.0.1:1/nexa?connect_timeout=2",
        StoreConfig::default(),
    )
    .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn a_connection_killed_under_the_store_is_replaced_and_nothing_acknowledged_is_lost() {
    // A name of its own, so that only this store's sessions are ended (the other tests run
    // on the same server meanwhile).
    let name = format!("nexa_killed_{}", std::process::id());
    let url = format!("{}&application_name={name}", fresh_schema());
    let store = PgStore::open(&url, StoreConfig::default()).unwrap();
    let spec = || JobSpec::new(JobParams::Generate(GenerateParams::new("physics", 10)));
    let mut acknowledged = vec![store.submit(spec(), Timestamp(1)).unwrap().id];
    // End the store's sessions: its writer and its readers.
    let mut admin = postgres::Client::connect(&database_url(), postgres::NoTls).unwrap();
    let ended = admin
        .query(
            "select pg_terminate_backend(pid) from pg_stat_activity where application_name = $1",
            &[&name],
        )
        .unwrap();
    assert!(!ended.is_empty());
    // The first write or read after may fail (its connection was cut); later ones reconnect.
    for n in 0..5 {
        if let Ok(s) = store.submit(spec(), Timestamp(2 + n)) {
            acknowledged.push(s.id);
        }
    }
    assert!(acknowledged.len() >= 4, "{acknowledged:?}");
    let query = ListQuery {
        limit: 100,
        ..ListQuery::default()
    };
    let listed = (0..3)
        .find_map(|_| store.list(query.clone()).ok())
        .expect("a read after the connection was replaced")
        .jobs;
    let mut ids: Vec<_> = listed.iter().map(|j| j.id).collect();
    ids.sort();
    assert_eq!(ids, acknowledged);
    assert!(listed.iter().all(|j| j.state == JobState::Queued));
}

#[test]
fn one_contending_store_leads_and_a_leader_that_lost_it_can_never_write() {
    use std::time::Duration;

    let url = fresh_schema();
    // The schema exists (as a first plane's open makes it), then two planes contend.
    drop(PgStore::open(&url, StoreConfig::default()).unwrap());
    let a = PgStore::open_contending(&url, StoreConfig::default(), "plane-a").unwrap();
    let b = PgStore::open_contending(&url, StoreConfig::default(), "plane-b").unwrap();
    let spec = || JobSpec::new(JobParams::Generate(GenerateParams::new("physics", 10)));
    let not_leader =
        |e: StoreError| assert!(e.to_string().contains("does not lead the database"), "{e}");
    // Before anyone leads, nobody writes.
    not_leader(a.submit(spec(), Timestamp(1)).unwrap_err());

    let ttl = Duration::from_millis(800);
    assert!(a.lead(ttl).unwrap());
    assert!(!b.lead(ttl).unwrap(), "one leader at a time");
    assert_eq!(b.leader().unwrap().as_deref(), Some("plane-a"));
    let first = a.submit(spec(), Timestamp(2)).unwrap().id;
    not_leader(b.submit(spec(), Timestamp(2)).unwrap_err());
    // Renewing keeps it.
    assert!(a.lead(ttl).unwrap());

    // `a` stops renewing (paused, cut off): once its lease ran out, `b` takes over.
    std::thread::sleep(ttl + Duration::from_millis(200));
    assert!(b.lead(ttl).unwrap());
    assert_eq!(a.leader().unwrap().as_deref(), Some("plane-b"));
    b.recover(Timestamp(3)).unwrap();
    let second = b.submit(spec(), Timestamp(3)).unwrap().id;
    // `a` wakes up believing it leads: its writes are refused, and it cannot take back a
    // leadership that is held.
    not_leader(a.submit(spec(), Timestamp(4)).unwrap_err());
    assert!(!a.lead(ttl).unwrap());
    let ids: Vec<_> = b
        .list(ListQuery::default())
        .unwrap()
        .jobs
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(
        ids,
        [second, first],
        "every acknowledged job, and only those"
    );
}

/// More random histories than the suite's 64, for a change to the store: `scripts/with-postgres
/// cargo test -p nexa-storage --features postgres-tests --test postgres -- --ignored`.
#[test]
#[ignore = "long: 512 random histories"]
fn many_random_histories() {
    nexa_runtime::testkit::random_histories(&mut PgHarness::default(), 512);
}
