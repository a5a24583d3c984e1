//! An ordered, resumable stream of one job attempt's log lines.
//!
//! Lines are numbered from 0 as they are pushed and kept until the control plane acknowledges
//! them. A flush sends everything from the last acknowledged line; the control plane stores
//! each line number once, so lines resent after a lost acknowledgement or a reconnect are not
//! doubled, and lines are dropped here only once acknowledged, so none is lost.

use std::collections::VecDeque;

use nexa_runtime::wire::{ErrorCode, LogBatch, Message};
use nexa_runtime::{Epoch, JobId, LeaseToken, MAX_LOG_LINE_BYTES, clip_line};

use crate::error::RequestError;
use crate::uplink::Uplink;

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

/// Most bytes of lines in one batch: far below the frame limit, so a batch always fits.
const MAX_BATCH_BYTES: usize = 1 << 20;

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

    /// Queues a line, cut to [`MAX_LOG_LINE_BYTES`] (the control plane keeps no more).
    pub fn push(&mut self, line: impl Into<String>) {
        self.pending
            .push_back(clip_line(line.into(), MAX_LOG_LINE_BYTES));
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
    pub async fn flush(&mut self, client: &dyn Uplink) -> Result<(), FlushError> {
        while !self.pending.is_empty() {
            let lines = self.next_batch();
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

    /// The pending lines the next batch carries: at most `max_batch` of them and
    /// [`MAX_BATCH_BYTES`] in all, but at least one.
    fn next_batch(&self) -> Vec<String> {
        let mut bytes = 0;
        self.pending
            .iter()
            .take(self.max_batch)
            .enumerate()
            .take_while(|(i, l)| {
                bytes += l.len() + 8;
                *i == 0 || bytes <= MAX_BATCH_BYTES
            })
            .map(|(_, l)| l.clone())
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_and_batches_stay_far_below_the_frame_limit() {
        let mut stream = LogStream::new(JobId(1), Epoch(1), LeaseToken::default());
        stream.push("x".repeat(100 * 1024 * 1024));
        assert_eq!(
            stream.pending[0].len(),
            MAX_LOG_LINE_BYTES + " [line cut]".len()
        );
        for _ in 0..500 {
            stream.push("y".repeat(MAX_LOG_LINE_BYTES));
        }
        let batch = stream.next_batch();
        let bytes: usize = batch.iter().map(String::len).sum();
        assert!(bytes <= MAX_BATCH_BYTES, "{bytes}");
        assert!(batch.len() > 1 && batch.len() < 501, "{}", batch.len());
        // A batch of them encodes within the frame limit.
        let message = Message::LogBatch(LogBatch {
            job: JobId(1),
            epoch: Epoch(1),
            lease_token: LeaseToken::default(),
            first_seq: 0,
            lines: batch,
        });
        assert!(
            nexa_runtime::wire::encode(1, &message, nexa_runtime::wire::DEFAULT_MAX_FRAME).is_ok()
        );
        stream.acknowledge(stream.next_batch().len() as u64);
        assert!(!stream.next_batch().is_empty());
    }
}
