//! Real `nexa` processes on loopback: workers (and a server) started, killed and restarted.
//!
//! Most tests embed the control plane in the test process, to submit and inspect jobs through
//! its API, and run the workers as `nexa worker` processes. The server-crash test runs
//! `nexa server` as a process too and checks the store file between runs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexa_actors::{ControlPlane, ControlPlaneConfig};
use nexa_runtime::*;
use nexa_storage::RedbStore;

const TOKEN: &str = "cluster-test-join-token";
mod support;

use support::{NEXA, Proc, pid_alive};

async fn plane(dir: &Path, lease_ttl: Duration) -> ControlPlane {
    let mut config =
        ControlPlaneConfig::new("127.0.0.1:0".parse().unwrap(), dir.join("plane"), TOKEN);
    config.store.lease_ttl = lease_ttl;
    config.store.retry.base = Duration::from_millis(50);
    config.heartbeat = Duration::from_millis(200);
    config.long_poll = Duration::from_secs(2);
    ControlPlane::start(config).await.unwrap()
}

/// A `nexa worker` process; with `handler`, train jobs go to that program, else every job
/// type runs the built-in stages.
fn worker(
    server: SocketAddr,
    fingerprint: &str,
    dir: &Path,
    name: &str,
    handler: Option<&str>,
    extra: &[&str],
) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let token_file = dir.join(format!("{name}.join_token"));
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let handler = handler.map(|h| ["--handler".to_owned(), format!("train={h}")]);
    let child = Command::new(NEXA)
        .args([
            "worker",
            "--server",
            &server.to_string(),
            "--fingerprint",
            fingerprint,
        ])
        .args(["--name", name, "--cancel-grace", "1"])
        // The join token from a file, which wins over the environment's; a join token and
        // an API token in the environment (neither may reach a job's program).
        .arg("--token-file")
        .arg(&token_file)
        .env("NEXA_JOIN_TOKEN", "a-stale-token-in-the-environment")
        .env("NEXA_TOKEN", "nxf_an_api_token")
        .arg("--work-dir")
        .arg(dir.join(name))
        .args(handler.iter().flatten())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc(child)
}

/// A worker process with the built-in stages only.
fn builtin_worker(plane: &ControlPlane, dir: &Path, name: &str) -> Proc {
    let fingerprint = plane.fingerprint().to_string();
    worker(plane.addr(), &fingerprint, dir, name, None, &[])
}

fn plane_worker(
    plane: &ControlPlane,
    dir: &Path,
    name: &str,
    handler: &str,
    extra: &[&str],
) -> Proc {
    worker(
        plane.addr(),
        &plane.fingerprint().to_string(),
        dir,
        name,
        Some(handler),
        extra,
    )
}

fn train(model: &str, gpus: u32) -> JobSpec {
    let mut spec = JobSpec::new(JobParams::Train(TrainParams::new(
        model,
        "file:///data/train.csv",
    )));
    spec.resources.gpus = gpus;
    spec
}

/// Polls `check` until it gives a value, failing after a minute with `what`.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn wait_state(plane: &ControlPlane, id: JobId, state: JobState) -> Job {
    eventually(&format!("{id} to be {state}"), async || {
        plane.get(id).await.ok().filter(|j| j.state == state)
    })
    .await
}

async fn wait_worker(plane: &ControlPlane, name: &str) {
    eventually(&format!("worker {name} to register"), async || {
        let workers = plane.workers().await.ok()?;
        workers
            .iter()
            .any(|w| w.info.id.as_str() == name)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_on_a_worker_process_with_its_logs_and_result_stored() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane(dir.path(), Duration::from_secs(10)).await;
    let handler = r#"echo "join=${NEXA_JOIN_TOKEN:-none} api=${NEXA_TOKEN:-none} job_file=$(stat -c %a "$NEXA_JOB_FILE")"; echo "epoch 1 loss 0.5"; echo "warning: slow disk" >&2; echo NEXA_PROGRESS 1; echo weights > "$NEXA_OUTPUT_DIR/m.bin"; printf '{"metrics":{"loss":0.5},"artifacts":{"model":"m.bin"}}' > "$NEXA_OUTPUT_DIR/result.json""#;
    let _w = plane_worker(&plane, dir.path(), "w1", handler, &[]);
    let id = plane.submit(train("tiny", 0)).await.unwrap().id;
    let job = wait_state(&plane, id, JobState::Succeeded).await;
    let output = job.output.unwrap();
    assert_eq!(output.metrics["loss"], 0.5);
    // The file the program listed was uploaded: it outlives the worker, named by content.
    let uri = &output.artifacts["model"];
    let digest = parse_artifact_uri(uri).expect("a nexa:// URI").unwrap();
    let kept = std::fs::read(plane.artifacts().blob_path(digest)).unwrap();
    assert_eq!(kept, b"weights\n");
    let meta = plane.artifacts().stat(digest).unwrap().unwrap();
    assert_eq!((meta.name.as_str(), meta.job), ("m.bin", Some(id)));
    let logs = plane.logs(id, LogQuery::default()).await.unwrap();
    let text: Vec<&str> = logs.lines.iter().map(|l| l.text.as_str()).collect();
    assert!(
        text.contains(&"epoch 1 loss 0.5") && text.contains(&"warning: slow disk"),
        "{text:?}"
    );
    // The program got neither the worker's join token nor its API token, and the job file
    // (params may hold secrets) is the worker user's only.
    assert!(
        text.contains(&"join=none api=none job_file=600"),
        "{text:?}"
    );
    assert_eq!(job.attempts[0].worker.as_str(), "w1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_runs_again_elsewhere_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane(dir.path(), Duration::from_secs(2)).await;
    let done = dir.path().join("completions");
    // The first attempt hangs; a later one finishes and records that it did.
    let handler = format!(
        r#"if [ "$NEXA_ATTEMPT" = 1 ]; then echo hanging; sleep 60; fi; echo "$NEXA_JOB_ID" >> {}"#,
        done.display()
    );
    let mut doomed = plane_worker(&plane, dir.path(), "doomed", &handler, &[]);
    wait_worker(&plane, "doomed").await;
    let id = plane.submit(train("model", 0)).await.unwrap().id;
    let job = wait_state(&plane, id, JobState::Running).await;
    let first = job.attempts[0].clone();
    assert_eq!(first.worker.as_str(), "doomed");
    let _healthy = plane_worker(&plane, dir.path(), "healthy", &handler, &[]);
    wait_worker(&plane, "healthy").await;
    doomed.sigkill();

    let job = wait_state(&plane, id, JobState::Succeeded).await;
    assert_eq!(job.attempts.len(), 2);
    let Some(AttemptOutcome::Failed(err)) = &job.attempts[0].outcome else {
        panic!("first attempt: {:?}", job.attempts[0]);
    };
    assert_eq!(err.class, FailureClass::WorkerLost);
    assert_eq!(job.attempts[1].worker.as_str(), "healthy");
    assert_eq!(
        std::fs::read_to_string(&done).unwrap(),
        format!("{id}\n"),
        "ran to completion once"
    );
    // The killed worker's late report, under its own lease's token, is refused by its stale
    // epoch.
    let held = Lease {
        job: job.clone(),
        attempt: 1,
        epoch: first.epoch,
        lease_expires_at: first.lease_expires_at,
        deadline: first.deadline,
    };
    let token = plane.lease_token(&held);
    let late = plane
        .complete(id, first.epoch, &token, JobOutput::default())
        .await;
    assert!(late.unwrap_err().is_stale());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_program_is_restarted_up_to_its_budget_then_the_job_fails() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane(dir.path(), Duration::from_secs(10)).await;
    let _w = plane_worker(
        &plane,
        dir.path(),
        "w1",
        "echo 'loading weights'; echo 'Segmentation fault' >&2; exit 139",
        &[],
    );
    let mut spec = train("crashy", 0);
    spec.max_attempts = 1;
    let id = plane.submit(spec).await.unwrap().id;
    let job = wait_state(&plane, id, JobState::Failed).await;
    let error = job.error.unwrap();
    assert_eq!(error.class, FailureClass::StageError);
    assert!(
        error.message.contains("exited with status 139"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("Segmentation fault"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("restart budget used up"),
        "{}",
        error.message
    );
}

/// A program that fails of itself (a non-zero exit) fails its attempt, which the job's policy
/// retries: it runs exactly `max_attempts` times, never restarted within an attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deterministic_failure_runs_at_most_max_attempts_times() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane(dir.path(), Duration::from_secs(10)).await;
    let ledger = dir.path().join("ledger");
    let handler = format!(
        "echo run >> {}; echo 'Traceback: ValueError' >&2; exit 1",
        ledger.display()
    );
    let _w = plane_worker(&plane, dir.path(), "w1", &handler, &[]);
    let mut spec = train("broken", 0);
    spec.max_attempts = 2;
    let id = plane.submit(spec).await.unwrap().id;
    let job = wait_state(&plane, id, JobState::Failed).await;
    let runs = std::fs::read_to_string(&ledger).unwrap().lines().count();
    assert_eq!(runs, 2, "{:#?}", job.events);
    assert_eq!(job.attempts.len(), 2);
    let last = &job.events.last().unwrap().message;
    assert!(last.contains("failure 2 of 2, none left"), "{last}");
    // Each attempt's log has the traceback once.
    for attempt in [1, 2] {
        let logs = plane
            .logs(
                id,
                LogQuery {
                    attempt: Some(attempt),
                    ..LogQuery::default()
                },
            )
            .await
            .unwrap();
        let tracebacks = logs
            .lines
            .iter()
            .filter(|l| l.text.contains("Traceback"))
            .count();
        assert_eq!(tracebacks, 1, "attempt {attempt}: {:?}", logs.lines);
    }
}

/// A worker killed with SIGKILL takes its handler program with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_program_dies_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane(dir.path(), Duration::from_secs(10)).await;
    let pid_file = dir.path().join("pid");
    // As the README writes handlers: a program run by `sh -c`, here one that ignores SIGTERM.
    let handler = format!(
        "sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 60'",
        pid_file.display()
    );
    let mut w = plane_worker(&plane, dir.path(), "w1", &handler, &[]);
    plane.submit(train("orphan", 0)).await.unwrap();
    let pid = eventually("the program to start", async || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
    })
    .await;
    assert!(pid_alive(pid));
    w.sigkill();
    eventually("the program to die with its worker", async || {
        (!pid_alive(pid)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_kills_its_program_and_frees_the_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane(dir.path(), Duration::from_secs(10)).await;
    let handler = r#"echo $$ > "$NEXA_OUTPUT_DIR/pid"; sleep 60"#;
    let _w = plane_worker(
        &plane,
        dir.path(),
        "w1",
        handler,
        &["--gpu", "Test GPU:16384"],
    );
    let first = plane.submit(train("long", 1)).await.unwrap().id;
    wait_state(&plane, first, JobState::Running).await;
    let pid_file: PathBuf = dir
        .path()
        .join("w1/jobs")
        .join(first.to_string())
        .join("attempt-1/pid");
    let pid: u32 = eventually("the program to start", async || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    })
    .await;
    assert!(pid_alive(pid));
    let second = plane.submit(train("next", 1)).await.unwrap().id;
    assert_eq!(
        plane.cancel(first, "superseded").await.unwrap(),
        JobState::Cancelling
    );
    let job = wait_state(&plane, first, JobState::Cancelled).await;
    assert_eq!(job.error.unwrap().message, "superseded");
    assert!(!pid_alive(pid), "the cancelled program is still running");
    wait_state(&plane, second, JobState::Running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_asking_for_8_gpus_stays_queued_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane(dir.path(), Duration::from_secs(10)).await;
    let _w = plane_worker(
        &plane,
        dir.path(),
        "w1",
        "true",
        &["--gpu", "H100:81559", "--gpu", "H100:81559"],
    );
    wait_worker(&plane, "w1").await;
    let id = plane.submit(train("giant", 8)).await.unwrap().id;
    let fits = plane.submit(train("small", 1)).await.unwrap().id;
    wait_state(&plane, fits, JobState::Succeeded).await;
    assert_eq!(plane.get(id).await.unwrap().state, JobState::Queued);
    let reason = plane.pending_reason(id).await.unwrap().unwrap().to_string();
    assert_eq!(
        reason,
        "no connected worker can run it: worker w1 has 2 GPUs with at least 0 MiB, the job needs 8"
    );
}

/// `nexa server` as a process, reading what it prints.
struct ServerProc {
    proc: Proc,
    fingerprint: String,
    /// The HTTP API's base URL (`http://…/api`).
    api: String,
}

fn start_server(data: &Path, port: u16) -> ServerProc {
    std::fs::create_dir_all(data).unwrap();
    let errors = data.with_extension(format!("{port}.stderr"));
    let mut child = Command::new(NEXA)
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--token",
            TOKEN,
            "--lease-ttl",
            "2",
            "--http",
            "127.0.0.1:0",
        ])
        .arg("--data")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&errors).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut fingerprint = None;
    let mut api = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        // The banner says where the join token is, never the token itself.
        assert!(
            !line.contains(TOKEN),
            "the banner shows the join token: {line}"
        );
        if let Some(fp) = line.trim().strip_prefix("fingerprint: ") {
            fingerprint = Some(fp.trim().to_owned());
        }
        if let Some(at) = line.find("API:") {
            api = line[at + 4..].split_whitespace().next().map(str::to_owned);
        }
        if line.contains("nexa worker --server") {
            break;
        }
    }
    // Keep reading, so the server never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let said = || std::fs::read_to_string(&errors).unwrap_or_default();
    ServerProc {
        proc: Proc(child),
        fingerprint: fingerprint
            .unwrap_or_else(|| panic!("the server printed no fingerprint; it said:\n{}", said())),
        api: api
            .unwrap_or_else(|| panic!("the server printed no API address; it said:\n{}", said())),
    }
}

/// `nexa server` on a port of its own and one worker, `w1`, running `handler` for train jobs;
/// the server, its port (to start it again on) and the worker.
fn server_and_worker(data: &Path, dir: &Path, handler: &str) -> (ServerProc, u16, Proc) {
    let port = free_udp_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let server = start_server(data, port);
    let w = worker(addr, &server.fingerprint, dir, "w1", Some(handler), &[]);
    (server, port, w)
}

fn free_udp_port() -> u16 {
    support::free_port(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_restarts_without_losing_jobs_and_workers_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    const JOBS: u64 = 6;
    let ids: BTreeSet<JobId> = {
        let store = RedbStore::open(data.join("nexa_forge.db"), StoreConfig::default()).unwrap();
        (0..JOBS)
            .map(|n| {
                store
                    .submit(train(&format!("m{n}"), 0), nexa_actors::now())
                    .unwrap()
                    .id
            })
            .collect()
    };
    let ran = dir.path().join("ran");
    let handler = format!(r#"echo "$NEXA_JOB_ID" >> {}; sleep 0.3"#, ran.display());
    let (mut server, port, _w) = server_and_worker(&data, dir.path(), &handler);
    let started = |ran: &Path| {
        std::fs::read_to_string(ran)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    eventually("two jobs to start", async || {
        (started(&ran) >= 2).then_some(())
    })
    .await;
    server.proc.sigkill();
    let mut server = start_server(&data, port);

    // Every job runs to the end; the store says so once the server has stopped. A check stops
    // the server, so checks are spaced out to give the worker time to reconnect and report.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut restarted = Instant::now();
    loop {
        let seen: BTreeSet<String> = std::fs::read_to_string(&ran)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if seen.len() as u64 == JOBS && restarted.elapsed() > Duration::from_secs(3) {
            server.proc.sigterm();
            let store =
                RedbStore::open(data.join("nexa_forge.db"), StoreConfig::default()).unwrap();
            let mut all_done = true;
            for id in &ids {
                let job = store.get(*id).expect("an acknowledged job was lost");
                assert!(
                    !matches!(job.state, JobState::Failed | JobState::Cancelled),
                    "{id}: {:?}",
                    job.events
                );
                all_done &= job.state == JobState::Succeeded;
            }
            if all_done {
                break;
            }
            drop(store);
            server = start_server(&data, port);
            restarted = Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "jobs did not all finish: ran {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server killed and started again while a job runs: the job's worker reconnects and its
/// attempt carries on to success, run once, with no attempt lost (the lease waits for the
/// worker, which learns at once that its old connection is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_costs_a_running_job_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let id = {
        let store = RedbStore::open(data.join("nexa_forge.db"), StoreConfig::default()).unwrap();
        store
            .submit(train("steady", 0), nexa_actors::now())
            .unwrap()
            .id
    };
    let ledger = dir.path().join("ledger");
    let handler = format!(
        r#"echo "start $NEXA_JOB_ID" >> {l}; sleep 4; echo "end $NEXA_JOB_ID" >> {l}"#,
        l = ledger.display()
    );
    let (mut server, port, _w) = server_and_worker(&data, dir.path(), &handler);
    let lines = |what: &str| {
        std::fs::read_to_string(&ledger)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(what))
            .count()
    };
    eventually("the job to start", async || {
        (lines("start") == 1).then_some(())
    })
    .await;
    server.proc.sigkill();
    let mut server = start_server(&data, port);
    eventually("the job's program to end", async || {
        (lines("end") == 1).then_some(())
    })
    .await;

    // The store says how it ended once the server has stopped; a check stops the server, so
    // checks are spaced out to give the worker time to report.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        server.proc.sigterm();
        let store = RedbStore::open(data.join("nexa_forge.db"), StoreConfig::default()).unwrap();
        let job = store.get(id).unwrap();
        if job.state == JobState::Succeeded {
            assert_eq!(job.attempts.len(), 1, "{:#?}", job.events);
            break;
        }
        assert!(job.state.is_leased(), "{:#?}", job.events);
        assert!(
            Instant::now() < deadline,
            "{id} never succeeded: {:#?}",
            job.events
        );
        drop(store);
        server = start_server(&data, port);
    }
    assert_eq!(lines("start"), 1, "the program ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_told_to_stop_finishes_its_job_before_it_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane(dir.path(), Duration::from_secs(10)).await;
    let mut w = plane_worker(
        &plane,
        dir.path(),
        "w1",
        "echo working; sleep 1; echo finished",
        &[],
    );
    let id = plane.submit(train("drain-me", 0)).await.unwrap().id;
    wait_state(&plane, id, JobState::Running).await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(w.0.id().to_string())
        .status();
    let job = wait_state(&plane, id, JobState::Succeeded).await;
    assert_eq!(
        job.attempts.len(),
        1,
        "the job was finished, not handed back"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = w.0.wait();
        (w, status)
    })
    .await
    .unwrap()
    .1
    .unwrap();
    assert!(status.success(), "{status}");
    eventually("the worker to leave the registry", async || {
        let workers = plane.workers().await.ok()?;
        workers.is_empty().then_some(())
    })
    .await;
}

/// A worker killed with SIGKILL in the middle of a built-in `train` job: the job's next
/// attempt, on another worker process, resumes from the last checkpoint the first kept with
/// the control plane (not from step 0), and ends with the very model an uninterrupted run
/// makes: the same bytes, so the same artifact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_train_job_killed_with_its_worker_resumes_on_another_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let plane = plane(dir.path(), Duration::from_millis(1500)).await;
    let mut a = builtin_worker(&plane, dir.path(), "a");
    wait_worker(&plane, "a").await;
    let generated = plane
        .submit(JobSpec::new(JobParams::Generate(GenerateParams {
            seed: Some(3),
            ..GenerateParams::new("physics", 6000)
        })))
        .await
        .unwrap()
        .id;
    let dataset = wait_state(&plane, generated, JobState::Succeeded)
        .await
        .output
        .unwrap()
        .artifacts["dataset"]
        .clone();
    let spec = |model: &str| {
        JobSpec::new(JobParams::Train(TrainParams {
            epochs: 3,
            hyperparameters: BTreeMap::from([
                ("batch_size".into(), ParamValue::Int(16)),
                ("checkpoint_every".into(), ParamValue::Int(25)),
            ]),
            ..TrainParams::new(model, dataset.clone())
        }))
    };
    let straight = plane.submit(spec("straight")).await.unwrap().id;
    let straight = wait_state(&plane, straight, JobState::Succeeded)
        .await
        .output
        .unwrap()
        .artifacts[MODEL_ARTIFACT]
        .clone();

    let id = plane.submit(spec("resumed")).await.unwrap().id;
    eventually("a checkpoint kept by worker a", async || {
        let logs = plane.logs(id, LogQuery::default()).await.ok()?;
        logs.lines
            .iter()
            .any(|l| l.text.starts_with("checkpoint at step") && l.text.ends_with("kept"))
            .then_some(())
    })
    .await;
    a.sigkill();
    let _b = builtin_worker(&plane, dir.path(), "b");
    let job = wait_state(&plane, id, JobState::Succeeded).await;
    assert_eq!(job.attempts.len(), 2, "{:#?}", job.attempts);
    assert_eq!(job.attempts[0].worker.as_str(), "a");
    assert_eq!(job.attempts[1].worker.as_str(), "b");
    let output = job.output.unwrap();
    let resumed_from = output.metrics["resumed_from_step"];
    assert!(resumed_from > 0.0, "resumed from step {resumed_from}");
    assert_eq!(output.artifacts[MODEL_ARTIFACT], straight);
}

/// A server killed with SIGKILL while a pipeline's first step runs: once it is back, the run
/// carries on from where it was — the running step's job is the same job, run once, and the
/// step after it starts when it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_run_carries_on_after_its_server_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let ledger = dir.path().join("ledger");
    let handler = format!(
        r#"echo "start $NEXA_JOB_ID" >> {l}; sleep 3; echo "end $NEXA_JOB_ID" >> {l}"#,
        l = ledger.display()
    );
    let (mut server, port, _w) = server_and_worker(&data, dir.path(), &handler);
    let train = |model: &str| serde_json::json!({"job_type": "train", "params": {"model_id": model, "dataset_uri": "/d.csv"}});
    let mut second = train("second");
    second["needs"] = serde_json::json!(["first"]);
    let spec = serde_json::json!({"name": "restart", "steps": {"first": train("first"), "second": second}});
    let (status, run) = http("POST", &format!("{}/pipelines", server.api), Some(spec)).unwrap();
    assert_eq!(status, 201, "{run}");
    let started = |what: &str| {
        std::fs::read_to_string(&ledger)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(what))
            .count()
    };
    eventually("the first step's job to start", async || {
        (started("start") == 1).then_some(())
    })
    .await;
    server.proc.sigkill();
    let server = start_server(&data, port);
    let run = eventually("the run to end", async || {
        let (_, run) = http("GET", &format!("{}/pipelines/pl-1", server.api), None)?;
        (run["status"] != "running").then_some(run)
    })
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let jobs: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(jobs.len(), 2);
    assert_ne!(jobs[0], jobs[1]);
    // Each step's program ran once: the first was not submitted again after the restart.
    assert_eq!((started("start"), started("end")), (2, 2));
}

/// Status and JSON body of an HTTP request to a `nexa server`.
fn http(
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> Option<(u16, serde_json::Value)> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("Content-Type", "application/json");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut res = agent.run(req.body(body).unwrap()).ok()?;
    let text = res.body_mut().read_to_string().ok()?;
    Some((
        res.status().as_u16(),
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    ))
}

/// A deployed model's worker killed with SIGKILL while a client keeps asking: the replica is
/// placed again on the other worker, the endpoint's URL answers again, and no answer is ever
/// wrong (requests while no replica is ready may fail, and are counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployed_model_survives_the_loss_of_its_worker_at_the_same_url() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let port = free_udp_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let server = start_server(&data, port);
    let api = server.api.clone();
    let mut workers = BTreeMap::new();
    for name in ["a", "b"] {
        workers.insert(
            name.to_owned(),
            worker(addr, &server.fingerprint, dir.path(), name, None, &[]),
        );
    }
    let (api2, wait) = (api.clone(), |api: &str, id: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some((_, job)) = http("GET", &format!("{api}/jobs/{id}"), None)
                && job["status"] == "succeeded"
            {
                return job;
            }
            assert!(Instant::now() < deadline, "{id} did not succeed");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let submit = |job_type: &str, params: serde_json::Value| {
        let (status, job) = http(
            "POST",
            &format!("{api2}/jobs"),
            Some(serde_json::json!({"job_type": job_type, "params": params})),
        )
        .unwrap();
        assert_eq!(status, 201, "{job}");
        job["job_id"].as_str().unwrap().to_owned()
    };
    let generated = submit(
        "generate",
        serde_json::json!({"domain": "physics", "num_samples": 600}),
    );
    let dataset = wait(&api, &generated)["result"]["artifacts"]["dataset"]
        .as_str()
        .unwrap()
        .to_owned();
    let trained = submit(
        "train",
        serde_json::json!({"model_id": "steady", "dataset_uri": dataset, "epochs": 2}),
    );
    wait(&api, &trained);
    submit("deploy", serde_json::json!({"model_id": "steady"}));
    let ready = |api: &str| {
        http("GET", &format!("{api}/endpoints/steady"), None)
            .filter(|(_, e)| e["ready_replicas"] == 1)
            .map(|(_, e)| {
                e["replicas"][0]["worker_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{e:#}"))
                    .to_owned()
            })
    };
    let host = eventually("the replica to be ready", async || ready(&api)).await;

    // A steady stream of requests, each checked against the answer before the kill.
    let predict = format!("{api}/endpoints/steady/predict");
    let rows = serde_json::json!({"inputs": [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]});
    let (status, baseline) = http("POST", &predict, Some(rows.clone())).unwrap();
    assert_eq!(status, 200, "{baseline}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The client's answers, counted again from when the replica is seen placed again.
    let answered_since = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let client = {
        let (stop, predict, rows, baseline) = (
            stop.clone(),
            predict.clone(),
            rows.clone(),
            baseline.clone(),
        );
        let answered_since = answered_since.clone();
        std::thread::spawn(move || {
            let (mut answered, mut failed, mut last_ok) = (0u32, 0u32, None);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match http("POST", &predict, Some(rows.clone())) {
                    Some((200, answer)) => {
                        assert_eq!(answer, baseline, "a wrong answer");
                        answered += 1;
                        last_ok = Some(Instant::now());
                        answered_since.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    _ => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (answered, failed, last_ok)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    workers.get_mut(&host).unwrap().sigkill();
    let other = if host == "a" { "b" } else { "a" };
    let moved = eventually("the replica to be placed again", async || {
        ready(&api).filter(|w| w == other)
    })
    .await;
    let back = killed.elapsed();
    assert_eq!(moved, other);
    // The client gets its answers again, at the same URL.
    answered_since.store(0, std::sync::atomic::Ordering::SeqCst);
    eventually("an answer after the move", async || {
        (answered_since.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (answered, failed, last_ok) = client.join().unwrap();
    assert!(
        last_ok.is_some_and(|t| t > killed + back),
        "answered again after it moved"
    );
    eprintln!(
        "replica back on worker {other} {back:?} after its worker was killed; {answered} \
         requests answered (all right), {failed} failed while no replica was ready"
    );
}
