//! A benchmark scenario: its settings from a TOML file and flags (flags win), checked.

use std::path::Path;

use anyhow::{Context, Result, bail};
use nexa_runtime::JobType;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::options::{BenchClient, BenchRunArgs, BenchStore};

/// Everything a run does, as the result records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Scenario {
    /// Its name, for the report.
    pub(crate) name: String,
    /// Jobs measured, after the warm-up (ignored with `duration`).
    pub(crate) jobs: u64,
    /// Seconds to run for instead of a number of jobs (0: count jobs).
    pub(crate) duration: f64,
    /// Jobs run first, unmeasured.
    pub(crate) warmup: u64,
    /// Clients in a closed loop (each submits, waits for its result, submits again).
    pub(crate) clients: u32,
    /// Jobs per second in an open loop (0: the closed loop of `clients`).
    pub(crate) rate: f64,
    /// Jobs per submit.
    pub(crate) batch: u32,
    /// How the clients reach the control plane.
    pub(crate) client: BenchClient,
    /// The job type submitted.
    #[serde(with = "job_type_name")]
    pub(crate) job_type: JobType,
    /// The jobs' params (empty: the smallest valid ones of the type).
    pub(crate) params: Map<String, Value>,
    /// Bench workers started here.
    pub(crate) workers: u32,
    /// Jobs each bench worker runs at once.
    pub(crate) slots: u32,
    /// The control plane's store.
    pub(crate) store: BenchStore,
    /// Stop a bench worker every this many seconds (0: never).
    pub(crate) kill_worker_every: f64,
    /// Jobs no worker can take, queued before the run.
    pub(crate) queued: u64,
    /// Workers that only heartbeat, once a second.
    pub(crate) simulated_workers: u32,
    /// A running control plane's HTTP API to run against (empty: start one here).
    pub(crate) api: String,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            jobs: 2000,
            duration: 0.0,
            warmup: 100,
            clients: 16,
            rate: 0.0,
            batch: 1,
            client: BenchClient::Library,
            job_type: JobType::Train,
            params: Map::new(),
            workers: 4,
            slots: 1,
            store: BenchStore::Redb,
            kill_worker_every: 0.0,
            queued: 0,
            simulated_workers: 0,
            api: String::new(),
        }
    }
}

mod job_type_name {
    use nexa_runtime::JobType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &JobType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(t.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<JobType, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl Scenario {
    /// The scenario of `args`: its file's settings, then its flags.
    pub(crate) fn from_args(args: &BenchRunArgs) -> Result<Self> {
        let mut s = match &args.scenario {
            Some(path) => Self::read(path)?,
            None => Self::default(),
        };
        macro_rules! flag {
            ($($field:ident),*) => {$(
                if let Some(v) = args.$field.clone() {
                    s.$field = v;
                }
            )*};
        }
        flag!(
            name,
            jobs,
            duration,
            warmup,
            clients,
            rate,
            batch,
            client,
            job_type,
            workers,
            slots,
            store,
            kill_worker_every,
            queued,
            simulated_workers,
            api
        );
        if let Some(params) = &args.params {
            s.params = match serde_json::from_str(params) {
                Ok(Value::Object(map)) => map,
                Ok(_) => bail!("--params must be a JSON object, like '{{\"epochs\": 1}}'"),
                Err(e) => bail!("--params is not JSON: {e}"),
            };
        }
        s.check()?;
        Ok(s)
    }

    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the scenario {}", path.display()))?;
        let mut s: Self = toml::from_str(&text)
            .with_context(|| format!("{} is not a scenario", path.display()))?;
        if s.name == Self::default().name
            && let Some(stem) = path.file_stem()
        {
            s.name = stem.to_string_lossy().into_owned();
        }
        Ok(s)
    }

    /// Refuses settings that cannot run, saying which.
    fn check(&self) -> Result<()> {
        let finite = |v: f64, name: &str, max: f64| {
            if !(v.is_finite() && (0.0..=max).contains(&v)) {
                bail!("{name} must be between 0 and {max}, not {v}");
            }
            Ok(())
        };
        finite(self.duration, "duration", 86_400.0)?;
        finite(self.rate, "rate", 1_000_000.0)?;
        finite(self.kill_worker_every, "kill_worker_every", 86_400.0)?;
        if self.duration == 0.0 && !(1..=100_000_000).contains(&self.jobs) {
            bail!("jobs must be between 1 and 100,000,000, not {}", self.jobs);
        }
        if self.rate == 0.0 && !(1..=10_000).contains(&self.clients) {
            bail!("clients must be between 1 and 10,000, not {}", self.clients);
        }
        if self.client == BenchClient::Python && self.rate > 0.0 {
            bail!("the Python clients run a closed loop: give clients, not rate");
        }
        if !(1..=1000).contains(&self.batch) {
            bail!("batch must be between 1 and 1,000, not {}", self.batch);
        }
        if self.api.is_empty() {
            if !(1..=1024).contains(&self.workers) {
                bail!("workers must be between 1 and 1,024, not {}", self.workers);
            }
            if !(1..=256).contains(&self.slots) {
                bail!("slots must be between 1 and 256, not {}", self.slots);
            }
        } else {
            if self.client == BenchClient::Library {
                bail!("--api runs against another process: use --client http or python");
            }
            if self.kill_worker_every > 0.0 || self.queued > 0 || self.simulated_workers > 0 {
                bail!(
                    "kill_worker_every, queued and simulated_workers need the control plane \
                     started here (no --api)"
                );
            }
        }
        if self.simulated_workers > 100_000 {
            bail!("simulated_workers must be at most 100,000");
        }
        if self.queued > 10_000_000 {
            bail!("queued must be at most 10,000,000");
        }
        Ok(())
    }

    /// The params of each job: the scenario's, else the smallest valid ones of its type.
    pub(crate) fn job_params(&self) -> Map<String, Value> {
        if !self.params.is_empty() {
            return self.params.clone();
        }
        let data = "file:///nexa-bench/data.csv";
        let value = match self.job_type {
            JobType::Generate => serde_json::json!({"domain": "physics", "num_samples": 1}),
            JobType::Audit => serde_json::json!({"dataset_uri": data}),
            JobType::Distill => serde_json::json!({
                "teacher_model": "bench-teacher", "student_model": "bench-student",
                "dataset_uri": data,
            }),
            JobType::Train => serde_json::json!({"model_id": "bench", "dataset_uri": data}),
            JobType::Evaluate => serde_json::json!({"model_id": "bench", "dataset_uri": data}),
            JobType::Deploy => serde_json::json!({"model_id": "bench"}),
        };
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}
