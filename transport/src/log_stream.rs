//! An ordered, resumable stream of one job attempt's log lines.
//!
//! Lines are numbered from 0 as they are pushed and kept until the control plane acknowledges
//! them. A flush sends everything from the last acknowledged line; the control plane stores
//! each line number once, so lines resent after a lost acknowledgement or a reconnect are not
//! doubled, and lines are dropped here only once acknowledged, so none is lost.

use std::collections::VecDeque;

use nexa_runtime::wire::{ErrorCode, LogBatch, Message};
use nexa_runtime::{Epoch, JobId, LeaseToken};

use crate::client::Client;
use crate::error::RequestError;

/// Why a flush stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FlushError {
    /// The request failed; the lines are kept and the next flush resends them.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The control plane refused the batch (a stale lease: drop the job).
    #[error("the control plane refused the log batch ({code}): {message}")]
    Refused {
        /// What kind of refusal.
        code: ErrorCode,
        /// Why.
        message: String,
    },
}

/// The unacknowledged tail of one attempt's log.
#[derive(Debug)]
pub struct LogStream {
    job: JobId,
    epoch: Epoch,
    lease_token: LeaseToken,
    /// Lines from `acked` on.
    pending: VecDeque<String>,
    /// Every line before this one is stored by the control plane.
    acked: u64,
    /// Most lines per batch.
    max_batch: usize,
}

impl LogStream {
    /// An empty stream for the attempt holding `epoch`, whose lease token is `lease_token`.
    pub fn new(job: JobId, epoch: Epoch, lease_token: LeaseToken) -> Self {
        Self {
            job,
            epoch,
            lease_token,
            pending: VecDeque::new(),
            acked: 0,
            max_batch: 1000,
        }
    }

    /// Queues a line.
    pub fn push(&mut self, line: impl Into<String>) {
        self.pending.push_back(line.into());
    }

    /// Lines not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The number of the first unacknowledged line.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Sends every pending line, in batches, until all are acknowledged.
    pub async fn flush(&mut self, client: &Client) -> Result<(), FlushError> {
        while !self.pending.is_empty() {
            let lines: Vec<String> = self.pending.iter().take(self.max_batch).cloned().collect();
            let batch = Message::LogBatch(LogBatch {
                job: self.job,
                epoch: self.epoch,
                lease_token: self.lease_token,
                first_seq: self.acked,
                lines,
            });
            match client.request(&batch).await? {
                Message::LogAck { next_seq, .. } => self.acknowledge(next_seq),
                Message::Error { code, message } => {
                    return Err(FlushError::Refused { code, message });
                }
                other => {
                    return Err(FlushError::Refused {
                        code: ErrorCode::BadRequest,
                        message: format!("expected log_ack, got {}", other.name()),
                    });
                }
            }
        }
        Ok(())
    }

    /// Drops the lines before `next_seq`.
    fn acknowledge(&mut self, next_seq: u64) {
        let done = next_seq
            .saturating_sub(self.acked)
            .min(self.pending.len() as u64);
        self.pending.drain(..done as usize);
        self.acked += done;
    }
}
