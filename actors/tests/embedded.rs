//! A control plane and workers in one process, running real jobs end to end.

use std::time::{Duration, Instant};

use nexa_actors::*;
use nexa_runtime::*;

mod support;

use support::{Cluster, cluster};

impl Cluster {
    async fn worker(&self, name: &str, command: &str, gpus: usize) -> WorkerNode {
        let mut stages = StageRegistry::new();
        stages.register(
            JobType::Train,
            CommandStage::new(command, Duration::from_millis(500)),
        );
        let mut config = self.worker_config(name, stages);
        config.gpus = (0..gpus)
            .map(|_| Gpu {
                model: "Test GPU".into(),
                memory_mb: 16_384,
            })
            .collect();
        WorkerNode::start(config).await.unwrap()
    }

    async fn submit(&self, model: &str, gpus: u32) -> JobId {
        let mut spec = JobSpec::new(JobParams::Train(TrainParams::new(
            model,
            "file:///data/train.csv",
        )));
        spec.resources.gpus = gpus;
        spec.max_attempts = 3;
        self.plane.submit(spec).await.unwrap().id
    }

    /// Waits until the job is in `state`, returning it.
    async fn wait_for(&self, id: JobId, state: JobState) -> Job {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let job = self.plane.get(id).await.unwrap();
            if job.state == state {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "{id} is {} after 30 s, expected {state}: {:#?}",
                job.state,
                job.events
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn log_text(&self, id: JobId, attempt: u32) -> Vec<String> {
        let q = LogQuery {
            attempt: Some(attempt),
            ..LogQuery::default()
        };
        self.plane
            .logs(id, q)
            .await
            .unwrap()
            .lines
            .into_iter()
            .map(|l| l.text)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_on_an_external_command_and_its_logs_and_result_are_kept() {
    let c = cluster(Duration::from_secs(10)).await;
    let script = r#"echo "training $(cat $NEXA_JOB_FILE | tr -d '\n' | head -c 40)"; echo NEXA_PROGRESS 0.5; echo done >&2; printf '{"metrics":{"loss":0.125}}' > "$NEXA_OUTPUT_DIR/result.json""#;
    let _w = c.worker("w1", script, 0).await;
    let id = c.submit("resnet", 0).await;
    let job = c.wait_for(id, JobState::Succeeded).await;
    assert_eq!(
        job.output.as_ref().unwrap().metrics.get("loss"),
        Some(&0.125)
    );
    assert_eq!(job.attempts.len(), 1);
    assert!(job.attempts[0].started_at.is_some());
    let logs = c.log_text(id, 1).await;
    assert!(
        logs.iter()
            .any(|l| l.starts_with("training {") && l.contains("\"job_id\":\"job-")),
        "{logs:?}"
    );
    assert!(logs.contains(&"done".to_owned()), "{logs:?}");
    let states: Vec<JobState> = job.events.iter().map(|e| e.to).collect();
    assert_eq!(
        states,
        vec![
            JobState::Queued,
            JobState::Assigned,
            JobState::Running,
            JobState::Succeeded
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_stage_is_restarted_within_its_budget_then_the_attempt_fails() {
    let c = cluster(Duration::from_secs(10)).await;
    // A program that dies of a signal (here it sends itself SIGSEGV) has crashed.
    let _w = c
        .worker("w1", "sh -c 'echo trying; kill -SEGV $$'", 0)
        .await;
    let mut spec = JobSpec::new(JobParams::Train(TrainParams::new("flaky", "data.csv")));
    spec.max_attempts = 1;
    let id = c.plane.submit(spec).await.unwrap().id;
    let job = c.wait_for(id, JobState::Failed).await;
    let error = job.error.unwrap();
    assert_eq!(error.class, FailureClass::StageError);
    assert!(
        error.message.contains("killed by signal 11"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("restart budget used up"),
        "{}",
        error.message
    );
    let logs = c.log_text(id, 1).await;
    assert_eq!(
        logs.iter().filter(|l| *l == "trying").count(),
        3,
        "{logs:?}"
    );
    assert_eq!(
        logs.iter()
            .filter(|l| l.starts_with("[nexa] stage failed"))
            .count(),
        2,
        "{logs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_stops_it_and_frees_its_gpu() {
    let c = cluster(Duration::from_secs(10)).await;
    let _w = c.worker("w1", "echo started; sleep 60", 1).await;
    let first = c.submit("long", 1).await;
    c.wait_for(first, JobState::Running).await;
    // Wait for the stage to be really up before cancelling.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.log_text(first, 1).await.contains(&"started".to_owned()) {
        assert!(Instant::now() < deadline, "the stage never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = c.submit("next", 1).await;
    assert_eq!(c.plane.get(second).await.unwrap().state, JobState::Queued);
    let state = c.plane.cancel(first, "not needed").await.unwrap();
    assert_eq!(state, JobState::Cancelling);
    let job = c.wait_for(first, JobState::Cancelled).await;
    assert_eq!(job.error.unwrap().message, "not needed");
    // The one GPU is free again: the next job gets it.
    c.wait_for(second, JobState::Running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_worker_can_run_stays_queued_and_says_why() {
    let c = cluster(Duration::from_secs(10)).await;
    let _w = c.worker("w1", "true", 1).await;
    let id = c.submit("huge", 8).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.plane.get(id).await.unwrap().state, JobState::Queued);
    let reason = c
        .plane
        .pending_reason(id)
        .await
        .unwrap()
        .unwrap()
        .to_string();
    assert_eq!(
        reason,
        "no connected worker can run it: worker w1 has 1 GPUs with at least 0 MiB, the job needs 8"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_workers_job_runs_again_elsewhere_and_its_late_report_is_refused() {
    let c = cluster(Duration::from_millis(1500)).await;
    let doomed = c.worker("doomed", "echo on-doomed; sleep 60", 0).await;
    let id = c.submit("model", 0).await;
    let job = c.wait_for(id, JobState::Running).await;
    let first = job.attempts[0].clone();
    assert_eq!(first.worker.as_str(), "doomed");
    doomed.stop().await;
    let _healthy = c.worker("healthy", "echo on-healthy", 0).await;
    let job = c.wait_for(id, JobState::Succeeded).await;
    assert_eq!(job.attempts.len(), 2);
    let Some(AttemptOutcome::Failed(err)) = &job.attempts[0].outcome else {
        panic!("first attempt: {:?}", job.attempts[0]);
    };
    assert_eq!(err.class, FailureClass::WorkerLost);
    assert_eq!(job.attempts[1].worker.as_str(), "healthy");
    // The lost worker's late completion, under its own lease's token, is refused by its
    // epoch.
    let held = Lease {
        job: job.clone(),
        attempt: 1,
        epoch: first.epoch,
        lease_expires_at: first.lease_expires_at,
        deadline: first.deadline,
    };
    let token = c.plane.lease_token(&held);
    let late = c
        .plane
        .complete(id, first.epoch, &token, JobOutput::default())
        .await;
    assert!(late.unwrap_err().is_stale());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_audit_stage_audits_a_dataset() {
    let c = cluster(Duration::from_secs(10)).await;
    let mut stages = StageRegistry::new();
    stages.register(JobType::Audit, AuditStage);
    let root = c.dir.path().join("datasets");
    std::fs::create_dir(&root).unwrap();
    let mut config = c.worker_config("auditor", stages);
    config.data_roots = vec![root.clone()];
    let _w = WorkerNode::start(config).await.unwrap();
    let data = root.join("iris.csv");
    std::fs::write(
        &data,
        "petal,species\n1.4,setosa\n4.7,versicolor\n1.4,setosa\n,virginica\n",
    )
    .unwrap();
    let audit = |expected_sha256: Option<String>| {
        JobSpec::new(JobParams::Audit(AuditParams {
            label_column: Some("species".into()),
            expected_sha256,
            ..AuditParams::new(format!("file://{}", data.display()))
        }))
    };
    let ok = c.plane.submit(audit(None)).await.unwrap().id;
    let job = c.wait_for(ok, JobState::Succeeded).await;
    let output = job.output.unwrap();
    assert_eq!(output.metrics["rows"], 4.0);
    assert_eq!(output.metrics["duplicate_rows"], 1.0);
    assert_eq!(output.metrics["missing_values"], 1.0);
    let report: serde_json::Value = serde_json::from_str(&output.result_json.unwrap()).unwrap();
    assert_eq!(report["label"]["classes"]["setosa"], 2);

    let bad = c
        .plane
        .submit(audit(Some("0".repeat(64))))
        .await
        .unwrap()
        .id;
    let job = c.wait_for(bad, JobState::Failed).await;
    let error = job.error.unwrap();
    assert_eq!(error.class, FailureClass::InvalidInput);
    assert!(error.message.contains(&"0".repeat(64)), "{}", error.message);
    assert_eq!(job.attempts.len(), 1, "invalid input is not retried");

    // Files outside the worker's data roots are refused before a byte is read: directly,
    // through `..`, and through a symlink inside the root that points out of it.
    let secret = c.dir.path().join("secret.csv");
    std::fs::write(&secret, "password,owner\nhunter2,root\n").unwrap();
    let link = root.join("leak.csv");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    for path in [
        secret.display().to_string(),
        format!("file://{}/../secret.csv", root.display()),
        link.display().to_string(),
    ] {
        let spec = JobSpec::new(JobParams::Audit(AuditParams {
            label_column: Some("owner".into()),
            ..AuditParams::new(path.clone())
        }));
        let id = c.plane.submit(spec).await.unwrap().id;
        let job = c.wait_for(id, JobState::Failed).await;
        let error = job.error.unwrap();
        assert_eq!(error.class, FailureClass::InvalidInput, "{path}");
        assert!(
            error
                .message
                .contains("outside the folders this worker reads"),
            "{path}: {}",
            error.message
        );
        assert!(!error.message.contains("hunter2") && !error.message.contains("password"));
    }
}

/// A stage that panics on its first two runs and succeeds on the third.
struct Flaky(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl Stage for Flaky {
    fn run(&self, _ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
        let runs = self.0.clone();
        Box::pin(async move {
            let n = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n < 2 {
                panic!("tensor shape mismatch in run {n}");
            }
            Ok(JobOutput::default())
        })
    }
}

/// A stage that never looks at its cancel token.
struct Stubborn;

impl Stage for Stubborn {
    fn run(&self, _ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok(JobOutput::default())
        })
    }
}

impl Cluster {
    async fn worker_with(&self, name: &str, stage: impl Stage, grace: Duration) -> WorkerNode {
        let mut stages = StageRegistry::new();
        stages.register(JobType::Train, stage);
        let mut config = self.worker_config(name, stages);
        config.cancel_grace = grace;
        WorkerNode::start(config).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_stage_is_restarted_and_can_still_succeed() {
    let c = cluster(Duration::from_secs(10)).await;
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let _w = c
        .worker_with("w1", Flaky(runs.clone()), Duration::from_secs(1))
        .await;
    let id = c.submit("flaky", 0).await;
    let job = c.wait_for(id, JobState::Succeeded).await;
    assert_eq!(job.attempts.len(), 1, "restarts happen inside the attempt");
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 3);
    let logs = c.log_text(id, 1).await;
    assert!(
        logs.iter()
            .any(|l| l.contains("the stage panicked: tensor shape mismatch in run 0")),
        "{logs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_ignores_cancel_is_aborted_after_the_grace_period() {
    let c = cluster(Duration::from_secs(10)).await;
    let _w = c
        .worker_with("w1", Stubborn, Duration::from_millis(300))
        .await;
    let id = c.submit("stubborn", 0).await;
    c.wait_for(id, JobState::Running).await;
    assert_eq!(
        c.plane.cancel(id, "stop it").await.unwrap(),
        JobState::Cancelling
    );
    let job = c.wait_for(id, JobState::Cancelled).await;
    let Some(AttemptOutcome::Failed(err)) = &job.attempts[0].outcome else {
        panic!("attempt: {:?}", job.attempts[0]);
    };
    assert_eq!(err.class, FailureClass::Cancelled);
    // The worker is free again.
    let next = c.submit("next", 0).await;
    c.wait_for(next, JobState::Running).await;
}

/// A worker that joined the cluster (it holds the join token) still cannot report on a job
/// leased to another: without that lease's token, its reports are refused as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_worker_cannot_report_on_a_job_it_does_not_hold() {
    use nexa_runtime::wire::{ErrorCode, Hello, LogBatch, Message};
    use nexa_transport::{Client, ClientConfig, Trust};

    let c = cluster(Duration::from_secs(10)).await;
    let _holder = c
        .worker_with("holder", Stubborn, Duration::from_millis(100))
        .await;
    let id = c.submit("held", 0).await;
    let job = c.wait_for(id, JobState::Running).await;
    let epoch = job.live_attempt().unwrap().epoch;

    let hello = Hello {
        worker: WorkerId::new("intruder").unwrap(),
        token: support::TOKEN.into(),
        cpus: 1,
        memory_mb: 1024,
        gpus: vec![],
        labels: Default::default(),
        job_types: [JobType::Train].into(),
    };
    let config = ClientConfig::new(
        c.plane.addr(),
        Trust::Fingerprint(c.plane.fingerprint()),
        hello,
    );
    let (intruder, _, _events) = Client::connect(config).await.unwrap();
    let forged = [
        Message::Complete {
            job: id,
            epoch,
            lease_token: LeaseToken::default(),
            output: JobOutput::default(),
        },
        Message::LogBatch(LogBatch {
            job: id,
            epoch,
            lease_token: LeaseToken([1; 32]),
            first_seq: 0,
            lines: vec!["forged".into()],
        }),
        Message::CheckpointQuery {
            job: id,
            epoch,
            lease_token: LeaseToken::default(),
        },
    ];
    for message in forged {
        match intruder.request(&message).await.unwrap() {
            Message::Error {
                code: ErrorCode::Stale,
                message,
            } => assert!(message.contains("lease's token"), "{message}"),
            other => panic!("{} was answered {other:?}", message.name()),
        }
    }
    let job = c.plane.get(id).await.unwrap();
    assert_eq!(job.state, JobState::Running);
    assert!(!c.log_text(id, 1).await.iter().any(|l| l == "forged"));
}

/// The control plane's data folder (when it makes it), its database and its lease key are
/// for its user only: they hold jobs' params, logs and results, and the lease secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_folder_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let c = cluster(Duration::from_secs(10)).await;
    let data = c.dir.path().join("plane");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("nexa_forge.db")), 0o600);
    assert_eq!(mode(&data.join("lease_key")), 0o600);
}

/// A QUIC hello is checked as an HTTP registration is: an oversized or garbled one is refused
/// with the field at fault, and nothing is registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_hello_is_refused_and_registers_nothing() {
    use nexa_runtime::wire::Hello;
    use nexa_transport::{Client, ClientConfig, ConnectError, Trust};

    let c = cluster(Duration::from_secs(10)).await;
    let gpu = Gpu {
        model: "H100".into(),
        memory_mb: 81_559,
    };
    type Garble<'a> = Box<dyn Fn(&mut Hello) + 'a>;
    let cases: [(&str, Garble<'_>); 3] = [
        (
            "gpus",
            Box::new(|h: &mut Hello| h.gpus = vec![gpu.clone(); 1000]),
        ),
        ("cpus", Box::new(|h: &mut Hello| h.cpus = 4_000_000_000)),
        (
            "gpus[0].model",
            Box::new(|h: &mut Hello| {
                h.gpus = vec![Gpu {
                    model: "\u{1b}]0;owned\u{7}".into(),
                    memory_mb: 1,
                }]
            }),
        ),
    ];
    for (field, garble) in cases {
        let mut hello = Hello {
            worker: WorkerId::new("greedy").unwrap(),
            token: support::TOKEN.into(),
            cpus: 4,
            memory_mb: 1024,
            gpus: vec![],
            labels: Default::default(),
            job_types: [JobType::Train].into(),
        };
        garble(&mut hello);
        let config = ClientConfig::new(
            c.plane.addr(),
            Trust::Fingerprint(c.plane.fingerprint()),
            hello,
        );
        match Client::connect(config).await {
            Err(ConnectError::Refused { reason, .. }) => {
                assert!(reason.contains(&format!("invalid {field}")), "{reason}")
            }
            Err(other) => panic!("{field}: refused the wrong way: {other}"),
            Ok(_) => panic!("{field}: a bad hello was welcomed"),
        }
    }
    assert!(c.plane.workers().await.unwrap().is_empty());
}

/// A worker not heard from for the retention time is forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_gone_for_the_retention_time_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ControlPlaneConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("plane"),
        support::TOKEN,
    );
    config.worker_retention = Duration::from_millis(300);
    let plane = ControlPlane::start(config).await.unwrap();
    let info = WorkerInfo {
        id: WorkerId::new("once").unwrap(),
        cpus: 1,
        memory_mb: 1024,
        gpus: vec![],
        labels: Default::default(),
        job_types: [JobType::Train].into(),
    };
    plane.register_worker(info).await.unwrap();
    assert_eq!(plane.workers().await.unwrap().len(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !plane.workers().await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the silent worker was never forgotten"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    plane.shutdown().await;
}

/// The stage of the `wait` and `follow_logs` tests: three lines, then a failure on the first
/// attempt and success on the second.
fn flaky_stage() -> StageRegistry {
    let mut stages = StageRegistry::new();
    stages.register_fn(JobType::Train, |ctx| async move {
        for i in 0..3 {
            ctx.logs.line(format!("attempt {} line {i}", ctx.attempt));
        }
        if ctx.attempt == 1 {
            Err(StageError::Failed("the first attempt fails".into()))
        } else {
            Ok(JobOutput::default())
        }
    });
    stages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_jobs_log_gives_every_attempts_lines_then_its_end() {
    use futures_util::StreamExt;

    let c = cluster(Duration::from_secs(10)).await;
    let id = c.submit("model", 0).await;
    // Followed from before it runs: the stream waits for the first attempt.
    let log = c.plane.follow_logs(id, FollowFrom::default());
    let worker = WorkerNode::start(c.worker_config("w1", flaky_stage()))
        .await
        .unwrap();
    let events: Vec<LogEvent> = log.map(Result::unwrap).collect().await;
    let mut expected = Vec::new();
    for attempt in 1..=2 {
        expected.push(format!("attempt {attempt}"));
        expected.extend((0..3).map(|i| format!("{attempt}: attempt {attempt} line {i}")));
    }
    expected.push("end succeeded".to_owned());
    let shown: Vec<String> = events
        .iter()
        .map(|e| match e {
            LogEvent::Attempt(n) => format!("attempt {n}"),
            LogEvent::Line { attempt, line } => format!("{attempt}: {}", line.text),
            LogEvent::End(state) => format!("end {state}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(shown, expected);

    // From a line of the second attempt, after the job ended: the rest, then the end.
    let rest: Vec<LogEvent> = c
        .plane
        .follow_logs(id, FollowFrom::new(2, 2))
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(rest.len(), 3, "{rest:?}");
    assert!(matches!(&rest[1], LogEvent::Line { attempt: 2, line } if line.seq == 2));
    assert_eq!(rest[2], LogEvent::End(JobState::Succeeded));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_a_job_once_it_ends_and_says_when_there_is_none() {
    let c = cluster(Duration::from_secs(10)).await;
    let ran = c.submit("model", 0).await;
    let worker = WorkerNode::start(c.worker_config("w1", flaky_stage()))
        .await
        .unwrap();
    let done = c.plane.wait(ran).await.unwrap();
    assert_eq!((done.state, done.attempts.len()), (JobState::Succeeded, 2));
    worker.stop().await;

    // No worker can run this one: it ends when it is cancelled, and the waiter sees it.
    let queued = c.submit("model", 8).await;
    let (cancelled, ()) = tokio::join!(c.plane.wait(queued), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.plane.cancel(queued, "not needed").await.unwrap();
    });
    assert_eq!(cancelled.unwrap().state, JobState::Cancelled);

    let missing = c.plane.wait(JobId(999)).await.unwrap_err();
    assert_eq!(missing, PlaneError::NotFound(JobId(999)));
    assert_eq!(missing.to_string(), "job-999 does not exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plane_shut_down_through_a_shared_handle_releases_its_port() {
    let c = cluster(Duration::from_secs(10)).await;
    let addr = c.plane.addr();
    let plane = std::sync::Arc::new(c.plane);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn({
        let plane = plane.clone();
        async move {
            plane
                .run_until(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    stop.send(()).unwrap();
    assert_eq!(serving.await.unwrap(), Ok(()));
    // Again through the handle: nothing more to do.
    plane.shutdown().await;
    let mut bound = false;
    for _ in 0..200 {
        if std::net::UdpSocket::bind(addr).is_ok() {
            bound = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(bound, "{addr} was not released");
}
