//! The external command stage, with real programs.

use std::path::Path;
use std::time::{Duration, Instant};

use nexa_actors::{Artifacts, CommandStage, LogSink, Progress, Stage, StageContext, StageError};
use nexa_runtime::{JobId, JobParams, JobSpec, TrainParams};
use tokio_util::sync::CancellationToken;

struct Run {
    ctx: StageContext,
    logs: tokio::sync::mpsc::UnboundedReceiver<String>,
    progress: tokio::sync::watch::Receiver<Option<f64>>,
}

fn context(dir: &Path, gpus: Vec<u32>) -> Run {
    let (logs_tx, logs) = LogSink::channel();
    let (progress_tx, progress) = Progress::channel();
    let (serving, _) = nexa_actors::Serving::channel();
    let spec = JobSpec::new(JobParams::Train(TrainParams {
        epochs: 3,
        ..TrainParams::new("tiny-mlp", "file:///data/iris.csv")
    }));
    let ctx = StageContext {
        job: JobId(42),
        attempt: 2,
        spec,
        gpus,
        logs: logs_tx,
        progress: progress_tx,
        serving,
        cancel: CancellationToken::new(),
        checkpoint_dir: dir.join("checkpoints"),
        output_dir: dir.join("attempt-2"),
        artifacts: Artifacts::local(dir.join("cache")),
    };
    Run {
        ctx,
        logs,
        progress,
    }
}

fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut out = vec![];
    while let Ok(line) = rx.try_recv() {
        out.push(line);
    }
    out
}

#[tokio::test]
async fn a_program_gets_the_job_and_its_result_becomes_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = context(dir.path(), vec![0, 3]);
    let script = r#"
        echo "job file: $(cat "$NEXA_JOB_FILE")"
        echo "gpus=$CUDA_VISIBLE_DEVICES id=$NEXA_JOB_ID attempt=$NEXA_ATTEMPT"
        echo "checkpoints in $NEXA_CHECKPOINT_DIR" >&2
        echo "NEXA_PROGRESS 0.5"
        echo weights > "$NEXA_OUTPUT_DIR/m.bin"
        printf '{"metrics": {"loss": 0.25, "epochs": 3}, "artifacts": {"model": "m.bin", "data": "s3://b/k.parquet"}, "note": "converged"}' > "$NEXA_OUTPUT_DIR/result.json"
    "#;
    let stage = CommandStage::new(script, Duration::from_secs(1));
    let output = stage.run(run.ctx.clone()).await.unwrap();
    assert_eq!(output.metrics.get("loss"), Some(&0.25));
    assert_eq!(output.metrics.get("epochs"), Some(&3.0));
    // A file the program made is named by its absolute path (with no control plane to
    // upload it to); a URI elsewhere stays the program's.
    let model = dir.path().join("attempt-2/m.bin");
    assert_eq!(
        output.artifacts.get("model"),
        Some(&format!("file://{}", model.display()))
    );
    assert_eq!(
        output.artifacts.get("data").map(String::as_str),
        Some("s3://b/k.parquet")
    );
    // Metrics and artifacts are said once; the rest of the document is the output.
    assert_eq!(
        output.result_json.as_deref(),
        Some(r#"{"note":"converged"}"#)
    );
    assert_eq!(*run.progress.borrow_and_update(), Some(0.5));
    let logs = drain(&mut run.logs);
    let job_line = logs
        .iter()
        .find(|l| l.starts_with("job file: "))
        .expect("job file line");
    let doc: serde_json::Value = serde_json::from_str(&job_line["job file: ".len()..]).unwrap();
    assert_eq!(doc["job_id"], "job-42");
    assert_eq!(doc["timeout_seconds"], 86_400);
    assert_eq!(doc["job_type"], "train");
    assert_eq!(doc["params"]["model_id"], "tiny-mlp");
    assert_eq!(doc["params"]["epochs"], 3);
    assert_eq!(doc["gpus"], serde_json::json!([0, 3]));
    assert!(
        logs.contains(&"gpus=0,3 id=job-42 attempt=2".to_owned()),
        "{logs:?}"
    );
    let checkpoints = dir.path().join("checkpoints").display().to_string();
    assert!(
        logs.contains(&format!("checkpoints in {checkpoints}")),
        "{logs:?}"
    );
    assert!(
        !logs.iter().any(|l| l.starts_with("NEXA_PROGRESS")),
        "progress lines are not logs"
    );
}

#[tokio::test]
async fn a_failing_program_fails_the_stage_with_its_last_lines() {
    let dir = tempfile::tempdir().unwrap();
    let run = context(dir.path(), vec![]);
    let script =
        "for i in $(seq 1 30); do echo line $i; done; echo 'CUDA out of memory' >&2; exit 3";
    let err = CommandStage::new(script, Duration::from_secs(1))
        .run(run.ctx)
        .await
        .unwrap_err();
    let StageError::Failed(message) = &err else {
        panic!("expected a stage failure, got {err:?}");
    };
    assert!(message.contains("exited with status 3"), "{message}");
    assert!(message.contains("CUDA out of memory"), "{message}");
    assert!(
        message.contains("line 30") && !message.contains("line 5\n"),
        "{message}"
    );
}

#[tokio::test]
async fn invalid_result_json_is_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let run = context(dir.path(), vec![]);
    let script = "echo '{not json' > \"$NEXA_OUTPUT_DIR/result.json\"";
    let err = CommandStage::new(script, Duration::from_secs(1))
        .run(run.ctx)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("result.json is not valid JSON"),
        "{err}"
    );
}

#[tokio::test]
async fn cancel_stops_the_program_and_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let run = context(dir.path(), vec![]);
    let marker = dir.path().join("survivor");
    // A child that ignores SIGTERM, and a grandchild: both must be gone after the grace.
    let script = format!(
        "trap '' TERM; (sleep 3 && touch {}) & echo started; sleep 30",
        marker.display()
    );
    let cancel = run.ctx.cancel.clone();
    let stage = CommandStage::new(script, Duration::from_millis(300));
    let started = Instant::now();
    let task = tokio::spawn(async move { stage.run(run.ctx).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel();
    let result = task.await.unwrap();
    assert_eq!(result.unwrap_err(), StageError::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!marker.exists(), "the grandchild outlived the cancel");
}

#[tokio::test]
async fn a_program_that_cannot_start_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let run = context(dir.path(), vec![]);
    let err = CommandStage::new("/nonexistent/train --fast", Duration::from_secs(1))
        .run(run.ctx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exited with status 127"), "{err}");
}

#[tokio::test]
async fn a_program_printing_without_newlines_still_reports_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = context(dir.path(), vec![]);
    // 100 MB on one line, bytes that are not UTF-8, then a last line and a result.
    let script = r#"head -c 100000000 /dev/zero | tr '\0' x; printf '\n\377\376 bad\n'; echo done; echo '{"metrics": {"loss": 0.25}}' > "$NEXA_OUTPUT_DIR/result.json""#;
    let output = CommandStage::new(script, Duration::from_secs(1))
        .run(run.ctx)
        .await
        .unwrap();
    assert_eq!(output.metrics["loss"], 0.25);
    assert_eq!(
        output.result_json, None,
        "a result of metrics only has no more to say"
    );
    let lines = drain(&mut run.logs);
    assert_eq!(
        lines.len(),
        3,
        "{:?}",
        lines.iter().map(|l| l.len()).collect::<Vec<_>>()
    );
    assert!(lines[0].starts_with("xxxx") && lines[0].ends_with(nexa_runtime::LINE_CUT));
    assert_eq!(
        lines[0].len(),
        nexa_runtime::MAX_LOG_LINE_BYTES + nexa_runtime::LINE_CUT.len()
    );
    assert_eq!(lines[1], "\u{fffd}\u{fffd} bad");
    assert_eq!(lines[2], "done");
}

#[tokio::test]
async fn a_cancelled_program_gets_its_grace_and_the_stage_ends_when_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let run = context(dir.path(), vec![]);
    let saved = dir.path().join("saved");
    // As the README writes handlers: `sh -c` running a program that traps SIGTERM to save
    // a checkpoint, which takes it a second.
    let program = dir.path().join("train.sh");
    std::fs::write(
        &program,
        format!(
            "trap 'sleep 1; touch {}; exit 0' TERM\necho started\nwhile true; do sleep 0.1; done\n",
            saved.display()
        ),
    )
    .unwrap();
    let cancel = run.ctx.cancel.clone();
    let stage = CommandStage::new(
        format!("sh {} --fast", program.display()),
        Duration::from_secs(10),
    );
    let task = tokio::spawn(async move { stage.run(run.ctx).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel();
    let result = task.await.unwrap();
    assert_eq!(result.unwrap_err(), StageError::Cancelled);
    // Not killed when its shell died: it saved, then exited, before the stage ended.
    assert!(saved.exists(), "the program was killed before it saved");
}

#[tokio::test]
async fn stdout_and_stderr_lines_keep_the_order_they_were_written_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = context(dir.path(), vec![]);
    let script = "for i in $(seq 1 300); do echo out $i; echo err $i >&2; done";
    CommandStage::new(script, Duration::from_secs(1))
        .run(run.ctx)
        .await
        .unwrap();
    let logs = drain(&mut run.logs);
    let want: Vec<String> = (1..=300)
        .flat_map(|i| [format!("out {i}"), format!("err {i}")])
        .collect();
    assert_eq!(logs, want);
}

#[tokio::test]
async fn exits_say_whether_to_retry_restart_or_give_up() {
    let dir = tempfile::tempdir().unwrap();
    let run = context(dir.path(), vec![]);
    let err = |script: &str| {
        let ctx = run.ctx.clone();
        let stage = CommandStage::new(script, Duration::from_secs(1));
        async move { stage.run(ctx).await.unwrap_err() }
    };
    // A failure of the program's own: the attempt fails, for the job's policy to retry.
    let failed = err("echo 'Traceback: boom' >&2; exit 1").await;
    assert!(
        matches!(&failed, StageError::Failed(m) if m.contains("exited with status 1") && m.contains("Traceback: boom")),
        "{failed:?}"
    );
    // Status 65: the input cannot work; not retried.
    let invalid = err("echo 'no such column' >&2; exit 65").await;
    assert!(
        matches!(&invalid, StageError::InvalidInput(m) if m.contains("no such column")),
        "{invalid:?}"
    );
    // Killed by a signal: a crash, which the worker restarts.
    let crashed = err("sh -c 'kill -KILL $$'").await;
    assert!(
        matches!(&crashed, StageError::Crashed(m) if m.contains("killed by signal 9")),
        "{crashed:?}"
    );
}

#[test]
fn a_program_an_earlier_worker_left_running_is_killed_by_the_next() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let attempt = dir.path().join("jobs/job-1/attempt-1");
    std::fs::create_dir_all(&attempt).unwrap();
    let mut left = std::process::Command::new("sleep")
        .arg("30")
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = left.id();
    // What a worker records for its running program: the group and when its leader started.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let started = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_owned();
    std::fs::write(attempt.join("program.pid"), format!("{pid} {started}\n")).unwrap();
    // A record whose process is another by now (the number reused) kills nothing.
    let other = dir.path().join("jobs/job-2/attempt-1");
    std::fs::create_dir_all(&other).unwrap();
    let mut bystander = std::process::Command::new("sleep")
        .arg("30")
        .process_group(0)
        .spawn()
        .unwrap();
    std::fs::write(other.join("program.pid"), format!("{} 1\n", bystander.id())).unwrap();

    assert_eq!(nexa_actors::kill_leftover_programs(dir.path()), 1);
    let status = left.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "another program was killed"
    );
    assert!(!attempt.join("program.pid").exists());
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}
