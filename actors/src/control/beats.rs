//! Workers' heartbeats, written to the store together: [`Beats`] takes each heartbeat as it
//! comes and writes all those waiting in one [`Store::worker_heartbeats`] call, one at a time.
//! Each heartbeat is still durable before it is answered, but ten thousand workers
//! heartbeating once a second cost one hand-off to a blocking thread per write instead of
//! one per heartbeat (each, two thread switches and a blocking thread held through the
//! commit).

use std::sync::Arc;

use nexa_runtime::{Store, StoreError, WorkerId, WorkerRecord};
use tokio::sync::{mpsc, oneshot};

use super::blocking;
use crate::clock::now;

/// The most heartbeats in one write.
const MOST: usize = 4096;

type Beat = (WorkerId, oneshot::Sender<Result<WorkerRecord, StoreError>>);

/// The heartbeats waiting to be written, and the task that writes them.
#[derive(Clone, Debug)]
pub(crate) struct Beats {
    queue: mpsc::UnboundedSender<Beat>,
}

impl Beats {
    /// Starts the writer; it ends once every `Beats` is dropped.
    pub(crate) fn start(store: Arc<dyn Store>) -> Self {
        let (queue, mut waiting) = mpsc::unbounded_channel::<Beat>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while waiting.recv_many(&mut batch, MOST).await > 0 {
                let ids = batch.iter().map(|(id, _)| id.clone()).collect();
                let answers = blocking(&store, move |s| s.worker_heartbeats(ids, now())).await;
                match answers {
                    Ok(answers) => {
                        for ((_, reply), answer) in batch.drain(..).zip(answers) {
                            let _ = reply.send(answer);
                        }
                    }
                    Err(e) => {
                        for (_, reply) in batch.drain(..) {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// `worker` is alive: stored (with the heartbeats waiting beside it) before this returns.
    pub(crate) async fn beat(&self, worker: WorkerId) -> Result<WorkerRecord, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || {
            StoreError::from(nexa_runtime::StorageFault::new(
                nexa_runtime::FaultKind::Unavailable,
                "the control plane is stopping: the heartbeat was not stored",
            ))
        };
        self.queue.send((worker, reply)).map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

#[cfg(test)]
mod tests {
    use nexa_runtime::{JobType, MemStore, StoreConfig, WorkerInfo};

    use super::*;

    /// Heartbeats sent at once are each answered as its own would be: the known workers'
    /// records with `last_seen` moved on, an unknown worker refused.
    #[tokio::test]
    async fn heartbeats_sent_at_once_are_each_answered() {
        let store = Arc::new(MemStore::new(StoreConfig::default()));
        let mut ids = Vec::new();
        for n in 0..50 {
            let info = WorkerInfo {
                id: WorkerId::new(format!("w{n}")).unwrap(),
                cpus: 1,
                memory_mb: 1024,
                gpus: vec![],
                labels: Default::default(),
                job_types: JobType::ALL.into_iter().collect(),
            };
            ids.push(info.id.clone());
            store.register_worker(info, now()).unwrap();
        }
        let beats = Beats::start(store.clone());
        let unknown = WorkerId::new("gone").unwrap();
        let mut sent = Vec::new();
        for id in ids.iter().chain([&unknown]) {
            let (beats, id) = (beats.clone(), id.clone());
            sent.push(tokio::spawn(async move { beats.beat(id).await }));
        }
        let mut answers = Vec::new();
        for s in sent {
            answers.push(s.await.unwrap());
        }
        for (answer, id) in answers.iter().zip(&ids) {
            let record = answer.as_ref().expect("a registered worker");
            assert_eq!(&record.info.id, id, "each its own answer");
            assert!(record.last_seen >= record.registered_at);
        }
        assert!(matches!(
            answers.last(),
            Some(Err(StoreError::UnknownWorker(w))) if *w == unknown
        ));
    }
}
