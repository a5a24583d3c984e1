//! What the control plane does now and then by itself: forgetting lost workers, deleting
//! old finished jobs, collecting the artifacts no job uses.

use std::sync::Arc;
use std::time::Duration;

use nexa_runtime::{JobId, Store};
use nexa_storage::{ArtifactStore, RemoteBlobs};
use tracing::{info, warn};

use super::follow::{Changes, write};
use super::{artifacts, blocking};
use crate::clock::now;

/// Forgets the workers not heard from for `retention`, now and then, for as long as the store
/// is in use.
pub(super) async fn prune_workers(store: std::sync::Weak<dyn Store>, retention: Duration) {
    let every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        let now = now();
        let pruned = blocking(&store, move |s| {
            let mut pruned = Vec::new();
            for w in s.list_workers()? {
                if now.saturating_since(w.last_seen) >= retention {
                    s.remove_worker(&w.info.id)?;
                    pruned.push(w.info.id);
                }
            }
            Ok(pruned)
        })
        .await;
        match pruned {
            Ok(pruned) => {
                for id in pruned {
                    info!(worker = %id, "forgot a worker not heard from for {retention:?}");
                }
            }
            Err(e) => warn!("cannot prune lost workers: {e}"),
        }
    }
}

/// Collects the artifacts of deleted jobs that no job uses (see [`artifacts::collect`]); a
/// failure is logged, and the next collection finishes the work.
pub(super) async fn collect_artifacts(
    store: &Arc<dyn Store>,
    artifacts: &ArtifactStore,
    remote: Option<&RemoteBlobs>,
) {
    match artifacts::collect(store, artifacts, remote).await {
        Ok(0) => {}
        Ok(n) => info!(count = n, "removed artifacts no job uses any more"),
        Err(e) => warn!("cannot collect the artifacts of deleted jobs: {e}"),
    }
}

/// Deletes the finished jobs older than `retention`, now and then, a bounded number at a time
/// (each pass is one write transaction), for as long as the store is in use.
pub(super) async fn prune_jobs(
    store: std::sync::Weak<dyn Store>,
    artifacts: ArtifactStore,
    remote: Option<RemoteBlobs>,
    retention: Duration,
    changes: Changes,
) {
    /// Finished jobs read in one pass.
    const SCAN: usize = 1000;
    let every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut from = JobId(1);
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        let before = nexa_runtime::Timestamp(now().0.saturating_sub(retention.as_millis() as u64));
        match write(&store, &changes, move |s| {
            s.delete_finished_before(before, from, SCAN)
        })
        .await
        {
            Ok((deleted, next)) => {
                if !deleted.is_empty() {
                    info!(
                        count = deleted.len(),
                        "deleted finished jobs older than {retention:?}"
                    );
                    collect_artifacts(&store, &artifacts, remote.as_ref()).await;
                }
                from = next.unwrap_or(JobId(1));
            }
            Err(e) => warn!("cannot delete old jobs: {e}"),
        }
    }
}
