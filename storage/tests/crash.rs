//! Crash consistency: a child process submits, leases, logs and completes jobs, printing each
//! acknowledgement; the parent kills it with SIGKILL at arbitrary moments, reopens the store
//! and checks that every acknowledged operation is there and every job is consistent.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nexa_runtime::*;
use nexa_storage::RedbStore;

const CHILD_PATH: &str = "NEXA_CRASH_STORE";
const CHILD_FIRST: &str = "NEXA_CRASH_FIRST";

fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    )
}

fn spec(n: u64) -> JobSpec {
    let mut spec = JobSpec::new(JobParams::Train(TrainParams {
        epochs: 1 + (n % 7) as u32,
        ..TrainParams::new(format!("model-{n}"), format!("file:///data/{n}.csv"))
    }));
    spec.priority = (n % 3) as i32;
    spec.idempotency_key = Some(format!("crash-{n}"));
    spec
}

/// The child's work loop. Run only by `killed_processes_lose_nothing_acknowledged`, which
/// starts this test binary again with the environment set.
#[test]
#[ignore = "the crash test's child process; it runs until killed"]
fn crash_child() {
    let path = std::env::var(CHILD_PATH).expect("run by the crash test");
    let first: u64 = std::env::var(CHILD_FIRST).unwrap().parse().unwrap();
    let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
    let worker = WorkerId::new("crash-worker").unwrap();
    store
        .register_worker(
            WorkerInfo {
                id: worker.clone(),
                cpus: 2,
                memory_mb: 1024,
                gpus: vec![],
                labels: BTreeMap::new(),
                job_types: JobType::ALL.into_iter().collect(),
            },
            now(),
        )
        .unwrap();
    println!("READY");
    for n in first.. {
        let s = store.submit(spec(n), now()).unwrap();
        println!("SUBMIT {n} {}", s.id.0);
        let request = LeaseRequest {
            worker: worker.clone(),
            free_gpus: vec![],
        };
        let Some(lease) = store.lease_next(request, now()).unwrap() else {
            continue;
        };
        let id = lease.job.id;
        println!("LEASE {} {}", id.0, lease.epoch.0);
        store.start(id, lease.epoch, now()).unwrap();
        let lines = (0..3).map(|i| format!("job {} line {i}", id.0)).collect();
        store.append_logs(id, lease.epoch, 0, lines, now()).unwrap();
        println!("LOGS {} 3", id.0);
        if n % 4 == 0 {
            // Leave some leased: the parent checks those stay consistent too.
            continue;
        }
        let mut output = JobOutput::default();
        output.metrics.insert("n".into(), n as f64);
        store.complete(id, lease.epoch, output, now()).unwrap();
        println!("COMPLETE {}", id.0);
    }
}

#[derive(Default)]
struct Acks {
    submitted: BTreeMap<u64, JobId>,
    leased: BTreeMap<JobId, u64>,
    logged: BTreeSet<JobId>,
    completed: BTreeSet<JobId>,
}

fn parse(acks: &mut Acks, line: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| words[i].parse::<u64>().unwrap();
    match words.first().copied() {
        Some("SUBMIT") => {
            acks.submitted.insert(num(1), JobId(num(2)));
        }
        Some("LEASE") => {
            acks.leased.insert(JobId(num(1)), num(2));
        }
        Some("LOGS") => {
            acks.logged.insert(JobId(num(1)));
        }
        Some("COMPLETE") => {
            acks.completed.insert(JobId(num(1)));
        }
        _ => {}
    }
}

fn all_jobs(store: &RedbStore) -> Vec<Job> {
    let mut jobs = vec![];
    let mut before = None;
    loop {
        let page = store
            .list(ListQuery {
                before,
                limit: 1000,
                ..Default::default()
            })
            .unwrap();
        jobs.extend(page.jobs);
        match page.next_before {
            Some(b) => before = Some(b),
            None => return jobs,
        }
    }
}

fn ids_in_state(store: &RedbStore, state: JobState) -> BTreeSet<JobId> {
    let mut ids = BTreeSet::new();
    let mut before = None;
    loop {
        let q = ListQuery {
            state: Some(state),
            before,
            limit: 1000,
            ..Default::default()
        };
        let page = store.list(q).unwrap();
        ids.extend(page.jobs.iter().map(|j| j.id));
        match page.next_before {
            Some(b) => before = Some(b),
            None => return ids,
        }
    }
}

fn check(store: &RedbStore, acks: &Acks) {
    for (&n, &id) in &acks.submitted {
        let job = store
            .get(id)
            .unwrap_or_else(|e| panic!("acknowledged {id} lost: {e}"));
        assert_eq!(job.spec, spec(n), "{id} holds another spec");
    }
    for (&id, &epoch) in &acks.leased {
        let job = store.get(id).unwrap();
        assert!(
            job.attempts.iter().any(|a| a.epoch == Epoch(epoch)),
            "{id}: acknowledged lease with epoch {epoch} lost"
        );
    }
    for &id in &acks.logged {
        let page = store
            .read_logs(
                id,
                LogQuery {
                    attempt: Some(1),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(page.lines.len(), 3, "{id}: acknowledged log lines lost");
    }
    for &id in &acks.completed {
        assert_eq!(
            store.get(id).unwrap().state,
            JobState::Succeeded,
            "{id}: completion lost"
        );
    }
    // Every job consistent, and the state index agrees with the jobs.
    let jobs = all_jobs(store);
    let mut epochs = BTreeSet::new();
    for job in &jobs {
        let live = job.attempts.iter().filter(|a| a.is_live()).count();
        assert_eq!(
            live,
            usize::from(job.state.is_leased()),
            "{}: {:?}",
            job.id,
            job.state
        );
        assert_eq!(
            job.events.last().map(|e| e.to),
            Some(job.state),
            "{}",
            job.id
        );
        for a in &job.attempts {
            assert!(
                epochs.insert(a.epoch),
                "{}: epoch {} used twice",
                job.id,
                a.epoch
            );
        }
    }
    for state in JobState::ALL {
        let expected: BTreeSet<JobId> = jobs
            .iter()
            .filter(|j| j.state == state)
            .map(|j| j.id)
            .collect();
        assert_eq!(
            ids_in_state(store, state),
            expected,
            "state index for {state}"
        );
    }
}

#[test]
fn killed_processes_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nexa_forge.db");
    let mut acks = Acks::default();
    let mut seed: u64 = 0x5eed_1234;
    let mut next = 1;
    for round in 0..6 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let run_for = Duration::from_millis(50 + (seed >> 33) % 400);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_PATH, &path)
            .env(CHILD_FIRST, next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        std::thread::sleep(run_for);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let before = acks.submitted.len();
        for line in &lines {
            parse(&mut acks, line);
        }
        next = acks.submitted.keys().next_back().map_or(1, |n| n + 1);
        eprintln!(
            "round {round}: killed after {run_for:?}, {} new submissions acknowledged",
            acks.submitted.len() - before
        );
        let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
        check(&store, &acks);
    }
    assert!(
        acks.submitted.len() >= 6 && !acks.completed.is_empty(),
        "the child acknowledged too little to test anything: {} submissions",
        acks.submitted.len()
    );
}
