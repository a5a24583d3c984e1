//! [`CommandStage`]: a job type handled by the user's own program.
//!
//! The program is run with `sh -c`, in a process group of its own, with:
//!
//! | variable               | value                                                        |
//! |------------------------|--------------------------------------------------------------|
//! | `NEXA_JOB_FILE`        | a JSON file with the API's field names: `job_id`, `attempt`, `job_type`, `params`, `resources`, `priority`, `max_attempts`, `timeout_seconds`, `gpus` |
//! | `NEXA_OUTPUT_DIR`      | this attempt's folder for artifacts and `result.json`        |
//! | `NEXA_CHECKPOINT_DIR`  | kept across attempts: resume from here                       |
//! | `CUDA_VISIBLE_DEVICES` | the assigned GPUs, comma-separated (empty for none)          |
//! | `NEXA_JOB_ID`, `NEXA_ATTEMPT` | the job and attempt                                   |
//!
//! Every line it writes on stdout or stderr becomes a log line as it is written, except
//! `NEXA_PROGRESS <0..1>`, which reports progress. Exit status 0 is success: the result is the
//! JSON in `$NEXA_OUTPUT_DIR/result.json` (optional); its `metrics` (name → number) and
//! `artifacts` (name → URI) objects become the job's metrics and artifacts, and the whole
//! document is kept. Artifacts that are files on the worker (paths relative to
//! `NEXA_OUTPUT_DIR`, absolute paths, `file://` URIs) are uploaded to the control plane and
//! listed by their `nexa://artifacts/…` URI. Any other exit is a stage failure whose message
//! carries the last lines.
//! On cancel the group gets SIGTERM, then SIGKILL after a grace period.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nexa_runtime::{JobOutput, JobSpec, LINE_CUT, MAX_LOG_LINE_BYTES};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::stage::{BoxFuture, Stage, StageContext, StageError};

/// Lines of output quoted in a failure's message.
const TAIL_LINES: usize = 20;

/// Runs a shell command for each job.
#[derive(Clone, Debug)]
pub struct CommandStage {
    command: String,
    grace: Duration,
}

impl CommandStage {
    /// A stage running `command` with `sh -c`; on cancel it gets `grace` to stop after SIGTERM.
    pub fn new(command: impl Into<String>, grace: Duration) -> Self {
        Self {
            command: command.into(),
            grace,
        }
    }

    /// The command line.
    pub fn command(&self) -> &str {
        &self.command
    }
}

impl Stage for CommandStage {
    fn run(&self, ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
        let stage = self.clone();
        Box::pin(async move { stage.run_command(ctx).await })
    }
}

/// The job as the program sees it in `NEXA_JOB_FILE`.
fn job_document(ctx: &StageContext) -> Result<Value, serde_json::Error> {
    let params = ctx.spec.params.to_json();
    let spec: &JobSpec = &ctx.spec;
    Ok(json!({
        "job_id": ctx.job.to_string(),
        "attempt": ctx.attempt,
        "job_type": spec.job_type().as_str(),
        "params": params,
        "resources": serde_json::to_value(&spec.resources)?,
        "priority": spec.priority,
        "max_attempts": spec.max_attempts,
        "timeout_seconds": spec.timeout.as_secs(),
        "gpus": ctx.gpus,
    }))
}

/// Writes `bytes` to `path`, readable and writable by this user only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    // A file left by an earlier attempt keeps its mode: set it.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)
}

/// The job output described by `result.json`, if the program wrote one.
fn read_result(path: &Path) -> Result<JobOutput, StageError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(JobOutput::default()),
        Err(e) => {
            return Err(StageError::Failed(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let mut doc: Value = serde_json::from_str(&text)
        .map_err(|e| StageError::Failed(format!("{} is not valid JSON: {e}", path.display())))?;
    let mut output = JobOutput::default();
    if let Some(metrics) = doc.get("metrics").and_then(Value::as_object) {
        for (name, value) in metrics {
            if let Some(x) = value.as_f64() {
                output.metrics.insert(name.clone(), x);
            }
        }
    }
    if let Some(artifacts) = doc.get("artifacts").and_then(Value::as_object) {
        for (name, value) in artifacts {
            if let Some(uri) = value.as_str() {
                output.artifacts.insert(name.clone(), uri.to_owned());
            }
        }
    }
    // The result shows metrics and artifacts once, as parsed (artifacts by the URI they are
    // kept under); what else the program wrote is its output.
    if let Some(fields) = doc.as_object_mut() {
        fields.remove("metrics");
        fields.remove("artifacts");
    }
    let said_more = doc.as_object().is_none_or(|fields| !fields.is_empty());
    output.result_json = said_more.then(|| doc.to_string());
    Ok(output)
}

/// The artifacts a program listed that are files on this machine — paths relative to the
/// output folder, absolute paths, `file://` URIs — kept beyond the worker and renamed by
/// their `nexa://` URI (with no control plane, by their absolute `file://` URI). Other URIs
/// (`s3://` and the like) are the program's to keep and stay as they are.
async fn keep_outputs(ctx: &StageContext, output: &mut JobOutput) -> Result<(), StageError> {
    for (name, uri) in output.artifacts.iter_mut() {
        if uri.contains("://") && !uri.starts_with("file://") {
            continue;
        }
        let path = Path::new(uri.strip_prefix("file://").unwrap_or(uri));
        let path = ctx.output_dir.join(path);
        if !path.is_file() {
            return Err(StageError::Failed(format!(
                "result.json lists artifact {name} = {uri}, but {} is not a file",
                path.display()
            )));
        }
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(name.as_str())
            .to_owned();
        *uri = ctx
            .artifacts
            .publish(&path, &file_name, nexa_runtime::ArtifactKind::File)
            .await?;
    }
    Ok(())
}

/// Forwards each line of `stream` to `lines`. Bytes that are not UTF-8 are replaced, and a
/// line longer than [`MAX_LOG_LINE_BYTES`] is cut: the rest of it is read and dropped, never
/// held, so a program printing without newlines cannot exhaust the worker's memory.
fn pump(stream: impl AsyncRead + Unpin + Send + 'static, lines: mpsc::UnboundedSender<String>) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut line: Vec<u8> = Vec::new();
        let mut cut = false;
        let emit = |line: &mut Vec<u8>, cut: &mut bool| {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let mut text = String::from_utf8_lossy(line).into_owned();
            if std::mem::take(cut) {
                text.push_str(LINE_CUT);
            }
            line.clear();
            lines.send(text).is_ok()
        };
        while let Ok(buf) = reader.fill_buf().await {
            if buf.is_empty() {
                if !line.is_empty() || cut {
                    emit(&mut line, &mut cut);
                }
                break;
            }
            let newline = buf.iter().position(|&b| b == b'\n');
            let chunk = &buf[..newline.unwrap_or(buf.len())];
            let room = MAX_LOG_LINE_BYTES - line.len();
            if chunk.len() > room {
                line.extend_from_slice(&chunk[..room]);
                cut = true;
            } else {
                line.extend_from_slice(chunk);
            }
            let used = newline.map_or(buf.len(), |i| i + 1);
            reader.consume(used);
            if newline.is_some() && !emit(&mut line, &mut cut) {
                break;
            }
        }
    });
}

impl CommandStage {
    async fn run_command(&self, ctx: StageContext) -> Result<JobOutput, StageError> {
        let io = |what: &str, e: &dyn std::fmt::Display| StageError::Failed(format!("{what}: {e}"));
        std::fs::create_dir_all(&ctx.output_dir)
            .map_err(|e| io("cannot create the output folder", &e))?;
        std::fs::create_dir_all(&ctx.checkpoint_dir)
            .map_err(|e| io("cannot create the checkpoint folder", &e))?;
        let job_file = ctx.output_dir.join("job.json");
        let doc = job_document(&ctx).map_err(|e| io("cannot describe the job as JSON", &e))?;
        // Params may carry secrets: the job file is for the worker's user only.
        write_private(&job_file, doc.to_string().as_bytes())
            .map_err(|e| io("cannot write the job file", &e))?;
        let result_file = ctx.output_dir.join("result.json");
        let _ = std::fs::remove_file(&result_file);

        let gpus: Vec<String> = ctx.gpus.iter().map(u32::to_string).collect();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            // The worker's credentials are not the job's: a handler runs the user's code.
            .env_remove("NEXA_JOIN_TOKEN")
            .env_remove("NEXA_TOKEN")
            .env_remove("NEXA_WORKER_TOKEN")
            .env("NEXA_JOB_FILE", &job_file)
            .env("NEXA_OUTPUT_DIR", &ctx.output_dir)
            .env("NEXA_CHECKPOINT_DIR", &ctx.checkpoint_dir)
            .env("CUDA_VISIBLE_DEVICES", gpus.join(","))
            .env("NEXA_JOB_ID", ctx.job.to_string())
            .env("NEXA_ATTEMPT", ctx.attempt.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| io(&format!("cannot start `{}`", self.command), &e))?;
        let pgid = child.id().map(|id| Pid::from_raw(id as i32));
        let (tx, mut lines) = mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            pump(out, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            pump(err, tx);
        }

        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        let mut cancelled = false;
        let mut status = None;
        let mut lines_open = true;
        while status.is_none() || lines_open {
            tokio::select! {
                line = lines.recv(), if lines_open => match line {
                    Some(line) => {
                        if let Some(p) = line.strip_prefix("NEXA_PROGRESS ")
                            && let Ok(x) = p.trim().parse::<f64>() {
                                ctx.progress.set(x);
                                continue;
                            }
                        if tail.len() == TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(line.clone());
                        ctx.logs.line(line);
                    }
                    None => lines_open = false,
                },
                exit = child.wait(), if status.is_none() => {
                    status = Some(exit.map_err(|e| io("cannot wait for the program", &e))?);
                    // The shell is gone: end whatever it left running, which also closes the
                    // pipes that would otherwise keep this loop waiting.
                    if let Some(pgid) = pgid {
                        let _ = killpg(pgid, Signal::SIGKILL);
                    }
                }
                () = ctx.cancel.cancelled(), if !cancelled && status.is_none() => {
                    cancelled = true;
                    if let Some(pgid) = pgid {
                        let _ = killpg(pgid, Signal::SIGTERM);
                        let grace = self.grace;
                        tokio::spawn(async move {
                            tokio::time::sleep(grace).await;
                            // The group may be gone by now; that is what we want.
                            let _ = killpg(pgid, Signal::SIGKILL);
                        });
                    }
                }
            }
        }
        if cancelled {
            return Err(StageError::Cancelled);
        }
        let status =
            status.ok_or_else(|| StageError::Failed("the program's exit was lost".into()))?;
        if status.success() {
            let mut output = read_result(&result_file)?;
            keep_outputs(&ctx, &mut output).await?;
            return Ok(output);
        }
        let how = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_owned(),
        };
        let tail: Vec<String> = tail.into();
        Err(StageError::Failed(format!(
            "`{}` {how}; last output:\n{}",
            self.command,
            tail.join("\n")
        )))
    }
}
