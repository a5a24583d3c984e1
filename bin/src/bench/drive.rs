//! The benchmark's clients: each submits jobs and waits until it sees their results, through
//! the control plane's Rust API or its HTTP API, in a closed loop (a number of clients) or an
//! open one (a rate of arrivals).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nexa_actors::ControlPlane;
use nexa_runtime::{Job, JobId, JobParams, JobSpec};
use serde_json::{Map, Value, json};

use super::scenario::Scenario;

/// The longest one wait asks the server to hold (it is asked again after).
const WAIT_SECONDS: u32 = 50;

/// One job as a client saw it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    pub(crate) id: JobId,
    /// Just before its submit call.
    pub(crate) submitted: Instant,
    /// When the client saw it finished.
    pub(crate) seen: Instant,
    /// Its attempts (more than one: it ran again, after a lost worker).
    pub(crate) attempts: u32,
    /// Whether it succeeded.
    pub(crate) succeeded: bool,
}

/// How the clients reach the control plane.
pub(crate) enum Client {
    /// Its Rust API.
    Library(Arc<ControlPlane>),
    /// Its HTTP API.
    Http {
        base: String,
        http: reqwest::Client,
        token: Option<String>,
    },
}

/// What a client submits.
pub(crate) struct Work {
    spec: JobSpec,
    body: Value,
}

impl Work {
    /// The jobs of `scenario`; with `labels`, only a worker carrying them may take them.
    pub(crate) fn new(scenario: &Scenario, labels: &[(&str, &str)]) -> Result<Self> {
        let params = scenario.job_params();
        let mut spec = JobSpec::new(
            JobParams::from_json(scenario.job_type, params.clone())
                .map_err(|e| anyhow!("the scenario's params: {}: {}", e.field, e.reason))?,
        );
        let mut body = json!({"job_type": scenario.job_type.as_str(), "params": params});
        if !labels.is_empty() {
            let labels: Map<String, Value> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect();
            for (k, v) in &labels {
                spec.resources
                    .labels
                    .insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
            }
            body["resources"] = json!({"labels": labels});
        }
        spec.validate()
            .map_err(|e| anyhow!("the scenario's job: {}: {}", e.field, e.reason))?;
        Ok(Self { spec, body })
    }
}

impl Work {
    /// The job, as the Rust API takes it.
    pub(crate) fn spec(&self) -> &JobSpec {
        &self.spec
    }
}

impl Client {
    /// A client of the HTTP API at `base` (`http://host:port/api`).
    pub(crate) fn http(base: &str, token: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Self::Http {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token,
        })
    }

    /// Submits `n` jobs of `work` (one call; a batch above 1); their ids.
    pub(crate) async fn submit(&self, work: &Work, n: usize) -> Result<Vec<JobId>> {
        match self {
            Client::Library(plane) => {
                if n == 1 {
                    Ok(vec![plane.submit(work.spec.clone()).await?.id])
                } else {
                    let specs = vec![work.spec.clone(); n];
                    Ok(plane
                        .submit_batch(specs)
                        .await?
                        .iter()
                        .map(|s| s.id)
                        .collect())
                }
            }
            Client::Http { .. } => {
                if n == 1 {
                    let job = self.call("POST", "/jobs", Some(&work.body)).await?;
                    Ok(vec![job_id(&job)?])
                } else {
                    let jobs = vec![work.body.clone(); n];
                    let answer = self
                        .call("POST", "/jobs/batch", Some(&json!({"jobs": jobs})))
                        .await?;
                    answer["jobs"]
                        .as_array()
                        .ok_or_else(|| anyhow!("the batch's answer has no jobs: {answer}"))?
                        .iter()
                        .map(job_id)
                        .collect()
                }
            }
        }
    }

    /// Waits until every job of `ids` has finished; how each ended, in order, with the moment
    /// each was seen finished.
    pub(crate) async fn wait(&self, ids: &[JobId]) -> Result<Vec<(JobId, u32, bool, Instant)>> {
        match self {
            Client::Library(plane) => {
                let jobs = if let [id] = ids {
                    vec![plane.wait(*id).await?]
                } else {
                    plane.wait_many(ids, ids.len()).await?
                };
                let seen = Instant::now();
                Ok(jobs.iter().map(|j| ended(j, seen)).collect())
            }
            Client::Http { .. } => {
                let mut out = Vec::with_capacity(ids.len());
                let mut pending: Vec<JobId> = ids.to_vec();
                while !pending.is_empty() {
                    let done: Vec<Value> = if let [id] = pending[..] {
                        let path = format!("/jobs/{id}/wait?timeout={WAIT_SECONDS}");
                        let job = self.call("GET", &path, None).await?;
                        if terminal(&job) {
                            vec![job]
                        } else {
                            Vec::new()
                        }
                    } else {
                        let ids: Vec<String> = pending.iter().map(ToString::to_string).collect();
                        let body = json!({"job_ids": ids, "timeout": WAIT_SECONDS});
                        let answer = self.call("POST", "/jobs/wait", Some(&body)).await?;
                        answer["done"].as_array().cloned().unwrap_or_default()
                    };
                    let seen = Instant::now();
                    for job in &done {
                        let id = job_id(job)?;
                        let attempts = job["attempts"].as_array().map_or(0, Vec::len);
                        let ok = job["status"] == "succeeded";
                        out.push((id, u32::try_from(attempts).unwrap_or(u32::MAX), ok, seen));
                        pending.retain(|p| *p != id);
                    }
                }
                Ok(out)
            }
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let Client::Http { base, http, token } = self else {
            bail!("not an HTTP client");
        };
        let url = format!("{base}{path}");
        let mut request = match method {
            "POST" => http.post(&url),
            _ => http.get(&url),
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(serde_json::to_vec(body)?);
        }
        let answer = request
            .timeout(Duration::from_secs(u64::from(WAIT_SECONDS) + 30))
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = answer.status();
        let bytes = answer
            .bytes()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {url} answered {status}: {value}");
        }
        Ok(value)
    }
}

fn ended(job: &Job, seen: Instant) -> (JobId, u32, bool, Instant) {
    let attempts = u32::try_from(job.attempts.len()).unwrap_or(u32::MAX);
    let ok = job.state == nexa_runtime::JobState::Succeeded;
    (job.id, attempts, ok, seen)
}

fn terminal(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

fn job_id(job: &Value) -> Result<JobId> {
    job["job_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("an answer without a job id: {job}"))
}

/// How much a run does: a number of jobs, or until a moment.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Budget {
    Jobs(u64),
    Until(Instant),
}

/// Runs `budget`'s jobs through `client`: closed loop with the scenario's clients, or open
/// loop at its rate. Every job's record, in no order.
pub(crate) async fn run(
    client: &Arc<Client>,
    work: &Arc<Work>,
    scenario: &Scenario,
    budget: Budget,
) -> Result<Vec<Record>> {
    let batch = scenario.batch.max(1) as usize;
    let left = Arc::new(AtomicI64::new(match budget {
        Budget::Jobs(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Budget::Until(_) => i64::MAX,
    }));
    // Takes up to `batch` jobs from what is left; 0 when the run is over.
    let take = move |left: &AtomicI64| -> usize {
        if let Budget::Until(end) = budget
            && Instant::now() >= end
        {
            return 0;
        }
        let before = left.fetch_sub(batch as i64, Ordering::Relaxed);
        usize::try_from(before.clamp(0, batch as i64)).unwrap_or(0)
    };
    let mut tasks = tokio::task::JoinSet::new();
    let (c, w) = (client.clone(), work.clone());
    let one = move |n: usize| {
        let (client, work) = (c.clone(), w.clone());
        async move { round(&client, &work, n).await }
    };
    if scenario.rate > 0.0 {
        // Open loop: a batch arrives every batch/rate seconds, whether or not others are done.
        let gap = Duration::from_secs_f64(batch as f64 / scenario.rate);
        let mut tick = tokio::time::interval(gap);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        loop {
            tick.tick().await;
            let n = take(&left);
            if n == 0 {
                break;
            }
            tasks.spawn(one(n));
        }
    } else {
        for _ in 0..scenario.clients {
            let (left, one) = (left.clone(), one.clone());
            tasks.spawn(async move {
                let mut records = Vec::new();
                loop {
                    let n = take(&left);
                    if n == 0 {
                        return Ok(records);
                    }
                    records.extend(one(n).await?);
                }
            });
        }
    }
    let mut records = Vec::new();
    while let Some(done) = tasks.join_next().await {
        records.extend(done.context("a client stopped")??);
    }
    Ok(records)
}

/// Submits `n` jobs in one call and waits for all of them.
async fn round(client: &Client, work: &Work, n: usize) -> Result<Vec<Record>> {
    let submitted = Instant::now();
    let ids = client.submit(work, n).await?;
    let ended = client.wait(&ids).await?;
    Ok(ended
        .into_iter()
        .map(|(id, attempts, succeeded, seen)| Record {
            id,
            submitted,
            seen,
            attempts,
            succeeded,
        })
        .collect())
}

/// The Python SDK's clients, in a `python3` of their own (`client.py`), warmed up and
/// waiting for [`Python::run`].
pub(crate) struct Python {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

/// The Python side, run with its settings as its one argument.
const PYTHON_CLIENT: &str = include_str!("client.py");

impl Python {
    /// Starts the clients against `api_url` and waits until they ran the warm-up.
    pub(crate) async fn start(api_url: &str, scenario: &Scenario) -> Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let python = std::env::var("NEXA_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
        // A checkout's SDK, when the binary runs from one; else an installed nexa_forge.
        let sdk = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk"));
        let settings = json!({
            "api_url": api_url,
            "clients": scenario.clients,
            "batch": scenario.batch,
            "jobs": scenario.jobs,
            "duration": scenario.duration,
            "warmup": scenario.warmup,
            "job_type": scenario.job_type.as_str(),
            "params": scenario.job_params(),
            "sdk_path": sdk.join("nexa_forge").is_dir().then(|| sdk.display().to_string()),
        });
        let mut child = tokio::process::Command::new(&python)
            .args(["-c", PYTHON_CLIENT, &settings.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {python} for the Python clients"))?;
        let stdout = child
            .stdout
            .take()
            .context("no stdout from the Python clients")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        match lines.next_line().await? {
            Some(line) if line.trim() == "ready" => Ok(Self { child, lines }),
            _ => {
                let status = child.wait().await?;
                bail!(
                    "the Python clients stopped before the run ({status}); is nexa_forge \
                     importable by {python}? (pip install ./sdk)"
                )
            }
        }
    }

    /// Runs the measured jobs; their records, the moments on a common clock (each job's
    /// id is unknown here: `JobId(0)`).
    pub(crate) async fn run(mut self) -> Result<Vec<Record>> {
        use tokio::io::AsyncWriteExt;
        let mut stdin = self
            .child
            .stdin
            .take()
            .context("no stdin to the Python clients")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        let line = self.lines.next_line().await?;
        let status = self.child.wait().await?;
        let Some(line) = line.filter(|_| status.success()) else {
            bail!("the Python clients failed ({status})");
        };
        let rows: Vec<(f64, f64, u32, bool)> =
            serde_json::from_str(&line).context("the Python clients' records")?;
        let anchor = Instant::now();
        let origin = rows.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
        let at = |t: f64| anchor + Duration::from_secs_f64((t - origin).max(0.0));
        Ok(rows
            .into_iter()
            .map(|(submitted, seen, attempts, succeeded)| Record {
                id: JobId(0),
                submitted: at(submitted),
                seen: at(seen),
                attempts,
                succeeded,
            })
            .collect())
    }
}
