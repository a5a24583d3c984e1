//! [`CommandStage`]: a job type handled by the user's own program.
//!
//! The program is run with `sh -c`, in a process group of its own led by a shell that dies
//! with the worker (a parent-death signal) and then kills the whole group; a program that
//! survives anyway is killed by the next worker started in the same folder. It runs with:
//!
//! | variable               | value                                                        |
//! |------------------------|--------------------------------------------------------------|
//! | `NEXA_JOB_FILE`        | a JSON file with the API's field names: `job_id`, `attempt`, `job_type`, `params`, `resources`, `priority`, `max_attempts`, `timeout_seconds`, `gpus` |
//! | `NEXA_OUTPUT_DIR`      | this attempt's folder for artifacts and `result.json`        |
//! | `NEXA_CHECKPOINT_DIR`  | kept across attempts: resume from here                       |
//! | `CUDA_VISIBLE_DEVICES` | the assigned GPUs, comma-separated (empty for none)          |
//! | `NEXA_JOB_ID`, `NEXA_ATTEMPT` | the job and attempt                                   |
//!
//! Every line it writes on stdout or stderr (one pipe, so in the order written) becomes a log
//! line as it is written, except
//! `NEXA_PROGRESS <0..1>`, which reports progress. Exit status 0 is success: the result is the
//! JSON in `$NEXA_OUTPUT_DIR/result.json` (optional); its `metrics` (name → number) and
//! `artifacts` (name → URI) objects become the job's metrics and artifacts, and the whole
//! document is kept. Artifacts that are files on the worker (paths relative to
//! `NEXA_OUTPUT_DIR`, absolute paths, `file://` URIs) are uploaded to the control plane and
//! listed by their `nexa://artifacts/…` URI. Exit status 65 ([`INVALID_INPUT_EXIT`]) says the
//! input cannot work: the job fails at once, not retried. Any other exit is a failure of the
//! attempt, retried by the job's policy (`max_attempts`, with backoff), its message carrying
//! the last lines; a program killed by a signal is a crash, started again by the worker
//! within its restart limit first.
//! On cancel the whole group gets SIGTERM, then SIGKILL after the grace period; the job is
//! cancelled once every process of the group is gone.

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

        // stdout and stderr share one pipe, so lines reach the log in the order written.
        let (output, writer) = std::io::pipe().map_err(|e| io("cannot make a pipe", &e))?;
        let stderr = writer
            .try_clone()
            .map_err(|e| io("cannot make a pipe", &e))?;
        let gpus: Vec<String> = ctx.gpus.iter().map(u32::to_string).collect();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WRAPPER)
            .arg("nexa-handler")
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
            .stdout(Stdio::from(writer))
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .kill_on_drop(true);
        orphans::die_with_worker(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| io(&format!("cannot start `{}`", self.command), &e))?;
        // The parent's copies of the pipe's writing end went with `command`.
        drop(command);
        let pgid = child.id().map(|id| Pid::from_raw(id as i32));
        let record = pgid.and_then(|pgid| orphans::Record::write(&ctx.output_dir, pgid));
        let (tx, mut lines) = mpsc::unbounded_channel();
        let output = tokio::net::unix::pipe::Receiver::from_owned_fd(output.into())
            .map_err(|e| io("cannot read the program's output", &e))?;
        pump(output, tx);

        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        let mut kill_at: Option<tokio::time::Instant> = None;
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
                    // The program is done: end whatever it left running, which also closes
                    // the pipe that would otherwise keep this loop waiting. A cancelled
                    // program keeps its grace.
                    if kill_at.is_none()
                        && let Some(pgid) = pgid
                    {
                        let _ = killpg(pgid, Signal::SIGKILL);
                    }
                }
                () = ctx.cancel.cancelled(), if kill_at.is_none() => {
                    kill_at = Some(tokio::time::Instant::now() + self.grace);
                    if let Some(pgid) = pgid {
                        let _ = killpg(pgid, Signal::SIGTERM);
                    }
                }
                () = sleep_until(kill_at) => {
                    if let Some(pgid) = pgid {
                        let _ = killpg(pgid, Signal::SIGKILL);
                    }
                    kill_at = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
                }
            }
        }
        if kill_at.is_some() {
            // Cancelled: the job leaves `cancelling` only once every process of the program
            // is gone, within the grace (then killed).
            if let Some(pgid) = pgid {
                orphans::wait_gone(pgid, kill_at).await;
            }
            drop(record);
            return Err(StageError::Cancelled);
        }
        drop(record);
        let status =
            status.ok_or_else(|| StageError::Failed("the program's exit was lost".into()))?;
        if status.success() {
            let mut output = read_result(&result_file)?;
            keep_outputs(&ctx, &mut output).await?;
            return Ok(output);
        }
        let tail: Vec<String> = tail.into();
        let said = |how: &str| {
            format!(
                "`{}` {how}; last output:\n{}",
                self.command,
                tail.join("\n")
            )
        };
        // The wrapper shell reports a program killed by signal N as status 128 + N.
        match status.code() {
            Some(INVALID_INPUT_EXIT) => Err(StageError::InvalidInput(said(&format!(
                "exited with status {INVALID_INPUT_EXIT} (invalid input: not retried)"
            )))),
            Some(code @ 129..=192) => Err(StageError::Crashed(said(&format!(
                "was killed by signal {} (exited with status {code})",
                code - 128
            )))),
            Some(code) => Err(StageError::Failed(said(&format!(
                "exited with status {code}"
            )))),
            None => Err(StageError::Crashed(said("was killed by a signal"))),
        }
    }
}

/// Kills the handler programs that an earlier worker with the work folder `work_dir` left
/// running (it was killed, and a program survived it); answers how many groups it killed. A
/// worker does this as it starts.
pub fn kill_leftover_programs(work_dir: &Path) -> usize {
    orphans::kill_leftovers(work_dir)
}

/// The exit status with which a program says its input cannot work (`EX_DATAERR` of
/// sysexits.h): the attempt fails as invalid input and the job is not retried.
pub const INVALID_INPUT_EXIT: i32 = 65;

/// The shell line a handler runs under: the user's command (`$1`) runs as a child of this
/// shell, which leads the job's process group and waits for it; a SIGHUP, which the shell
/// gets when the worker dies (even by SIGKILL), kills the whole group.
const WRAPPER: &str = r#"trap 'kill -KILL 0' HUP; { eval "$1"; } & wait $!"#;

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Programs that outlive their worker: killed when the worker dies, and, should one survive
/// (the worker's machine was busy, a program left the group), by the next worker that starts
/// in the same folder.
pub(crate) mod orphans {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;

    /// The file, in an attempt's output folder, naming its running program's process group.
    const FILE: &str = "program.pid";

    /// Makes the program's shell get SIGHUP when the worker dies, whatever kills it.
    #[allow(unsafe_code)]
    pub(super) fn die_with_worker(command: &mut tokio::process::Command) {
        let worker = nix::unistd::getpid();
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: it makes two system calls (prctl, getppid),
        // allocates nothing and takes no lock.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGHUP)?;
                // A worker that died before the call sends no signal: do not start.
                if nix::unistd::getppid() != worker {
                    return Err(std::io::Error::other("the worker is gone"));
                }
                Ok(())
            });
        }
    }

    /// A running program's group, recorded in its attempt's folder until it is gone.
    pub(super) struct Record(PathBuf);

    impl Record {
        /// Records group `pgid`, with its leader's start time, so that a later worker kills
        /// that group and never another that reuses the number.
        pub(super) fn write(dir: &Path, pgid: Pid) -> Option<Self> {
            let started = start_time(pgid)?;
            let path = dir.join(FILE);
            std::fs::write(&path, format!("{pgid} {started}\n")).ok()?;
            Some(Self(path))
        }
    }

    impl Drop for Record {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// When process `pid` started, in clock ticks since boot (`/proc/<pid>/stat`, field 22).
    fn start_time(pid: Pid) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses: count from its end.
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(19)?.parse().ok()
    }

    /// Kills the program groups that workers before this one recorded under `work_dir` and
    /// that still run; answers how many.
    pub(crate) fn kill_leftovers(work_dir: &Path) -> usize {
        let mut killed = 0;
        let Ok(jobs) = std::fs::read_dir(work_dir.join("jobs")) else {
            return 0;
        };
        for attempt in jobs
            .flatten()
            .filter_map(|job| std::fs::read_dir(job.path()).ok())
            .flatten()
            .flatten()
        {
            let path = attempt.path().join(FILE);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let mut fields = text.split_whitespace();
            let pgid = fields
                .next()
                .and_then(|p| p.parse::<i32>().ok())
                .map(Pid::from_raw);
            let started = fields.next().and_then(|s| s.parse::<u64>().ok());
            if let (Some(pgid), Some(started)) = (pgid, started)
                && start_time(pgid) == Some(started)
                && killpg(pgid, Signal::SIGKILL).is_ok()
            {
                killed += 1;
            }
            let _ = std::fs::remove_file(&path);
        }
        killed
    }

    /// Waits until no process of group `pgid` is left, killing the group at `kill_at` if it
    /// has not gone by then.
    pub(super) async fn wait_gone(pgid: Pid, kill_at: Option<tokio::time::Instant>) {
        let mut killed = false;
        // A group that outlives a SIGKILL by this long has a process stuck in the kernel.
        let give_up = tokio::time::Instant::now() + Duration::from_secs(3600);
        while killpg(pgid, None).is_ok() && tokio::time::Instant::now() < give_up {
            if !killed && kill_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
                let _ = killpg(pgid, Signal::SIGKILL);
                killed = true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
