//! Workers as the control plane knows them: what they have and when they were last heard from.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::WorkerId;
use crate::spec::JobType;
use crate::time::Timestamp;

/// One GPU a worker offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// The model name, e.g. `NVIDIA H100 80GB HBM3`.
    pub model: String,
    /// Its memory in MiB.
    pub memory_mb: u64,
}

/// What a worker says about itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Its name.
    pub id: WorkerId,
    /// CPU cores.
    pub cpus: u32,
    /// Main memory in MiB.
    pub memory_mb: u64,
    /// Its GPUs.
    pub gpus: Vec<Gpu>,
    /// Labels jobs can ask for, e.g. `region = eu-west`.
    pub labels: BTreeMap<String, String>,
    /// The job types it can run.
    pub job_types: BTreeSet<JobType>,
}

impl WorkerInfo {
    /// Most workers a control plane keeps registered.
    pub const MAX_REGISTERED: usize = 16_384;

    /// Checks every field, as any registration does (QUIC or HTTP): CPUs (at most 2^20),
    /// memory, at most 64 GPUs with memory and a printable model name of at most 128
    /// bytes, and labels as a job's resources take them. The first problem found is
    /// returned, naming the field.
    pub fn validate(&self) -> Result<(), crate::SpecError> {
        crate::spec::validate_worker(self)
    }
}

/// Whether a worker takes new work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerStatus {
    /// Takes new jobs.
    Active,
    /// Finishing its jobs before it leaves; takes no new ones.
    Draining,
}

/// A registered worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// What it said when it registered.
    pub info: WorkerInfo,
    /// Active or draining.
    pub status: WorkerStatus,
    /// When it (last) registered.
    pub registered_at: Timestamp,
    /// When it was last heard from.
    pub last_seen: Timestamp,
}

impl WorkerRecord {
    /// Heard from within `ttl` of `now`.
    pub fn is_alive(&self, now: Timestamp, ttl: Duration) -> bool {
        self.last_seen.saturating_add(ttl) >= now
    }
}
