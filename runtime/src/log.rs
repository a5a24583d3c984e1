//! Job logs: lines numbered per attempt, so a resent batch is stored once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// One stored line of a job's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its number within the attempt, from 0.
    pub seq: u64,
    /// When the control plane received it.
    pub at: Timestamp,
    /// The text, without its line ending.
    pub text: String,
}

/// Per-attempt bookkeeping of a job's log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptLog {
    /// The number the next new line gets.
    pub next_seq: u64,
    /// Lines of this attempt dropped because the job's cap was reached.
    pub dropped: u64,
}

/// Bookkeeping of one job's log, across its attempts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMeta {
    /// Lines stored, all attempts together (markers not counted).
    pub stored: u64,
    /// Per attempt number.
    pub attempts: BTreeMap<u32, AttemptLog>,
}

impl LogMeta {
    /// Lines dropped across all attempts.
    pub fn dropped(&self) -> u64 {
        self.attempts.values().map(|a| a.dropped).sum()
    }
}

/// The answer to a log batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogAck {
    /// Every line before this number is stored (or counted as dropped); send from here next.
    pub next_seq: u64,
    /// Lines of the job dropped so far because of the per-job cap.
    pub dropped: u64,
}

/// Which lines to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    /// The attempt (1-based); `None` means the latest.
    pub attempt: Option<u32>,
    /// The first line number wanted.
    pub from_seq: u64,
    /// At most this many lines (1 to 10,000).
    pub limit: usize,
}

impl Default for LogQuery {
    fn default() -> Self {
        Self {
            attempt: None,
            from_seq: 0,
            limit: 1000,
        }
    }
}

/// A page of log lines.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    /// The attempt read; 0 when the job has not been tried yet.
    pub attempt: u32,
    /// The lines, in order.
    pub lines: Vec<LogLine>,
    /// Where the next page starts, when more lines were stored past this page.
    pub next_seq: Option<u64>,
    /// Lines of this attempt dropped because the job's cap was reached.
    pub dropped: u64,
}

/// The longest log line kept by default, in bytes; a longer one is cut, and ends with
/// [`LINE_CUT`].
pub const MAX_LOG_LINE_BYTES: usize = 16 * 1024;

/// What a cut line ends with.
pub const LINE_CUT: &str = " [line cut]";

/// `text` cut to at most `max` bytes, at a character boundary, and marked when cut.
pub fn clip_line(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(LINE_CUT);
    }
    text
}

/// The text of the marker line stored in place of the first line dropped in an attempt.
pub fn cap_marker(cap: u64) -> String {
    format!(
        "[nexa] log limit of {cap} lines per job reached: later lines of this attempt are dropped"
    )
}
