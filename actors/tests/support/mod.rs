//! What the in-process cluster tests share: a control plane on loopback in a temporary
//! folder, with short leases, retries and polls so that tests run quickly, and the settings
//! of a worker that joins it.

// Each test crate uses the part it needs.
#![allow(dead_code)]

use std::time::Duration;

use nexa_actors::{ControlPlane, ControlPlaneConfig, StageRegistry, WorkerConfig};
use nexa_runtime::WorkerId;
use nexa_transport::Trust;

pub(crate) const TOKEN: &str = "in-process-test-token";

pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) plane: ControlPlane,
}

/// A control plane whose leases last `lease_ttl`.
pub(crate) async fn cluster(lease_ttl: Duration) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ControlPlaneConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("plane"),
        TOKEN,
    );
    config.store.lease_ttl = lease_ttl;
    config.store.retry.base = Duration::from_millis(50);
    config.heartbeat = Duration::from_millis(200);
    config.long_poll = Duration::from_secs(2);
    let plane = ControlPlane::start(config).await.unwrap();
    Cluster { dir, plane }
}

impl Cluster {
    /// The settings of worker `name` running `stages`, its folder in the cluster's, failed
    /// stages restarted after 20 ms.
    pub(crate) fn worker_config(&self, name: &str, stages: StageRegistry) -> WorkerConfig {
        let mut config = WorkerConfig::new(
            self.plane.addr(),
            Trust::Fingerprint(self.plane.fingerprint()),
            TOKEN,
            WorkerId::new(name).unwrap(),
            stages,
            self.dir.path().join(name),
        );
        config.restart.backoff = Duration::from_millis(20);
        config
    }
}
