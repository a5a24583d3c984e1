//! The worker node: an agent that registers with the control plane, heartbeats, asks for work
//! when it has room, and a stage supervisor per job it runs.
//!
//! ```text
//! WorkerNode
//!  └── Agent                       stops when drained, or with its node
//!       └── Supervisor × job        temporary, one per running job; reports the job's
//!            │                      outcome; if it fails itself, the job is reported
//!            │                      failed as the platform's fault and its slot freed
//!            └── Stage              transient: restarted after a crash (panic, signal) within
//!                                   the RestartLimit; a failure of its own ends the attempt
//! ```
//!
//! The agent owns the worker's free resources: a job's GPUs are taken when it is assigned and
//! given back only when its supervisor has stopped the stage, so a cancelled job's GPUs are
//! free for the next job exactly when its stage is gone.

mod agent;
mod supervisor;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nexa_runtime::wire::{Hello, Welcome};
use nexa_runtime::{Gpu, WorkerId};
use nexa_transport::{Client, ClientConfig, ClientEvent, ConnectError, Trust, Uplink};
use ractor::{Actor, ActorRef};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub(crate) use self::agent::AgentMsg;
use self::agent::{Agent, AgentArgs};
use crate::stage::StageRegistry;

/// The restart intensity of a job's stage, as Erlang's supervisors have it: at most
/// `max_restarts` restarts within `window`, then the attempt fails.
///
/// A stage is a *transient* child of its supervisor: restarted after a crash (a panic, a
/// program killed by a signal, a lost GPU: [`StageError::Crashed`](crate::StageError)), never
/// after it returns, whether with a result or with a failure of its own (a program's non-zero
/// exit), which ends the attempt for the job's retry policy to judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartLimit {
    /// Restarts allowed within `window`.
    pub max_restarts: u32,
    /// The window restarts are counted in.
    pub window: Duration,
    /// The wait before the first restart; it doubles with each one.
    pub backoff: Duration,
}

impl Default for RestartLimit {
    fn default() -> Self {
        Self {
            max_restarts: 2,
            window: Duration::from_secs(60),
            backoff: Duration::from_millis(200),
        }
    }
}

/// Settings of a worker node, and the builder that starts one.
///
/// ```no_run
/// # async fn demo(plane: &nexa_actors::ControlPlane) -> Result<(), Box<dyn std::error::Error>> {
/// use nexa_actors::{StageRegistry, WorkerConfig};
/// use nexa_runtime::{JobOutput, JobType, WorkerId};
/// use nexa_transport::Trust;
///
/// let mut stages = StageRegistry::new();
/// stages.register_fn(JobType::Train, |_ctx| async { Ok(JobOutput::default()) });
/// let worker = WorkerConfig::new(
///     plane.addr(),
///     Trust::Fingerprint(plane.fingerprint()),
///     "a-long-join-token",
///     WorkerId::new("gpu-1")?,
///     stages,
///     "var/worker",
/// )
/// .slots(2)
/// .label("zone", "eu-1")
/// .start()
/// .await?;
/// worker.drain().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The control plane's address.
    pub server: SocketAddr,
    /// Other addresses of the control plane (standbys on one PostgreSQL database): the worker
    /// connects, and reconnects, to whichever of them serves.
    pub also: Vec<SocketAddr>,
    /// How to trust it.
    pub trust: Trust,
    /// The cluster's join token.
    pub join_token: String,
    /// This worker's name.
    pub id: WorkerId,
    /// CPU cores offered.
    pub cpus: u32,
    /// Memory offered, MiB.
    pub memory_mb: u64,
    /// GPUs offered, by index: the built-in stages run on CUDA device `index`
    /// ([`local_gpus`] finds them; an operator may declare others).
    pub gpus: Vec<Gpu>,
    /// Labels jobs can ask for.
    pub labels: BTreeMap<String, String>,
    /// The stages it runs, by job type.
    pub stages: StageRegistry,
    /// Where jobs' checkpoints and outputs go.
    pub work_dir: PathBuf,
    /// The folders built-in stages may read local files from (a path or `file://` input),
    /// besides the worker's own downloads; a path outside them, through `..` or a symlink,
    /// is refused. Empty: no local files (inputs come by `nexa://` or object-store URIs).
    pub data_roots: Vec<PathBuf>,
    /// Jobs run at once.
    pub slots: usize,
    /// Restarts of a failing stage.
    pub restart: RestartLimit,
    /// How long a cancelled stage may take to stop before it is aborted.
    pub cancel_grace: Duration,
}

impl WorkerConfig {
    /// Defaults for everything but where to connect, who it is and what it runs.
    pub fn new(
        server: SocketAddr,
        trust: Trust,
        join_token: impl Into<String>,
        id: WorkerId,
        stages: StageRegistry,
        work_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            server,
            also: Vec::new(),
            trust,
            join_token: join_token.into(),
            id,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_mb: total_memory_mb(),
            gpus: Vec::new(),
            labels: BTreeMap::new(),
            stages,
            work_dir: work_dir.into(),
            data_roots: Vec::new(),
            slots: 1,
            restart: RestartLimit::default(),
            cancel_grace: Duration::from_secs(10),
        }
    }

    /// Another address of the control plane (a standby's).
    pub fn also(mut self, server: SocketAddr) -> Self {
        self.also.push(server);
        self
    }

    /// Jobs run at once.
    pub fn slots(mut self, slots: usize) -> Self {
        self.slots = slots;
        self
    }

    /// The GPUs offered (see [`local_gpus`]).
    pub fn gpus(mut self, gpus: Vec<Gpu>) -> Self {
        self.gpus = gpus;
        self
    }

    /// A label jobs can ask for (`resources.labels`).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// A folder built-in stages may read local files from.
    pub fn data_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_roots.push(dir.into());
        self
    }

    /// Restarts of a crashing stage.
    pub fn restart(mut self, limit: RestartLimit) -> Self {
        self.restart = limit;
        self
    }

    /// How long a cancelled stage may take to stop before it is aborted.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Connects to the control plane and starts taking work (see [`WorkerNode::start`]).
    pub async fn start(self) -> Result<WorkerNode, ConnectError> {
        WorkerNode::start(self).await
    }
}

/// A running worker node.
#[derive(Debug)]
pub struct WorkerNode {
    agent: ActorRef<AgentMsg>,
    handle: JoinHandle<()>,
}

impl WorkerNode {
    /// Connects to the control plane and starts taking work.
    pub async fn start(config: WorkerConfig) -> Result<Self, ConnectError> {
        let hello = Hello {
            worker: config.id.clone(),
            token: config.join_token.clone(),
            cpus: config.cpus,
            memory_mb: config.memory_mb,
            gpus: config.gpus.clone(),
            labels: config.labels.clone(),
            job_types: config.stages.job_types().collect(),
        };
        let mut client_config = ClientConfig::new(config.server, config.trust.clone(), hello);
        client_config.also = config.also.clone();
        let (client, welcome, events) = Client::connect(client_config).await?;
        Self::start_over(Arc::new(client), welcome, events, config)
            .await
            .map_err(ConnectError::Config)
    }

    /// Starts taking work over `uplink`, a link to the control plane already joined (as
    /// `welcome` says): the same agent, stages and reports as over QUIC, for links such as
    /// HTTP. `events` are what the link tells of itself (reconnects, pushed cancels); a link
    /// with nothing to tell closes it. `config.server`, `trust` and `join_token` are not used.
    pub async fn start_over(
        uplink: Arc<dyn Uplink>,
        welcome: Welcome,
        events: mpsc::Receiver<ClientEvent>,
        config: WorkerConfig,
    ) -> Result<Self, String> {
        // A program a worker before this one left running (its worker was killed, and the
        // program left its group or the machine was too busy to end it) ends now.
        let killed = crate::command_stage::orphans::kill_leftovers(&config.work_dir);
        if killed > 0 {
            tracing::warn!(
                killed,
                "ended programs an earlier worker in this folder left running"
            );
        }
        // Jobs' files (their params, outputs, downloads) are for this user only.
        if let Err(e) = crate::private_dir(&config.work_dir) {
            tracing::warn!(dir = %config.work_dir.display(), "cannot make the work folder: {e}");
        }
        let args = AgentArgs {
            client: uplink,
            welcome,
            events,
            config,
        };
        let (agent, handle) = Actor::spawn(None, Agent, args)
            .await
            .map_err(|e| format!("cannot start the worker agent: {e}"))?;
        Ok(Self { agent, handle })
    }

    /// Stops taking work, lets the running jobs finish, says goodbye and stops.
    pub async fn drain(self) {
        let _ = self.agent.cast(AgentMsg::Drain);
        let _ = self.handle.await;
    }

    /// Stops at once; running jobs are abandoned (their leases run out on the control plane).
    pub async fn stop(self) {
        self.agent.stop(None);
        let _ = self.handle.await;
    }
}

/// The NVIDIA GPUs this machine has, as a worker offers them: each CUDA device in ordinal
/// order (so a job's GPU index is the device's ordinal), with its name and memory. Empty
/// without the `cuda` feature, a driver or a GPU.
pub fn local_gpus() -> Vec<Gpu> {
    nexa_compute::devices()
        .into_iter()
        .map(|d| Gpu {
            model: d.name,
            memory_mb: d.total_memory >> 20,
        })
        .collect()
}

/// This machine's main memory in MiB, from `/proc/meminfo`; 0 where it cannot be read.
fn total_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024)
        })
        .unwrap_or(0)
}
