//! Identifiers: jobs, workers and lease epochs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A job's id. Ids are handed out by the store in submission order, so a smaller id was
/// submitted earlier; the scheduler relies on that for first-in, first-out order.
///
/// Shown and parsed as `job-<n>`; a bare number parses too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

/// A string that is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a job id (expected job-<number>)")]
pub struct ParseJobIdError(pub String);

impl FromStr for JobId {
    type Err = ParseJobIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("job-").unwrap_or(s);
        match digits.parse::<u64>() {
            Ok(n) if n > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(JobId(n)),
            _ => Err(ParseJobIdError(s.to_owned())),
        }
    }
}

/// A worker's name, chosen by the worker: 1 to 128 characters of `A-Z a-z 0-9 . _ -`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkerId(String);

/// A string that cannot name a worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a valid worker id: {reason}")]
pub struct InvalidWorkerId {
    /// The rejected name.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl WorkerId {
    /// The longest worker id accepted.
    pub const MAX_LEN: usize = 128;

    /// Checks `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidWorkerId> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > Self::MAX_LEN {
            Some("it is longer than 128 characters")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            Some("only letters, digits, '.', '_' and '-' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidWorkerId { name, reason }),
            None => Ok(Self(name)),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for WorkerId {
    type Error = InvalidWorkerId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<WorkerId> for String {
    fn from(id: WorkerId) -> Self {
        id.0
    }
}

impl FromStr for WorkerId {
    type Err = InvalidWorkerId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A lease's fencing token. The store hands out epochs from one counter that only grows, so
/// every lease ever granted has a distinct epoch and a later lease has a larger one. A worker
/// quotes its epoch in every report; a report whose epoch is not the job's live lease is
/// refused, so a worker that was presumed dead cannot overwrite the attempt that replaced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

/// Proof that a report comes from the worker its lease was granted to. The control plane
/// derives it from the lease (a keyed hash of the job and epoch, under a key only the control
/// plane holds), hands it to the leasing worker with the job, and refuses any report about
/// the job that does not quote it. The API never shows it, and its `Debug` form hides it.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseToken(pub [u8; 32]);

impl LeaseToken {
    /// The token as 64 lower-case hex digits, as the HTTP worker protocol carries it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A token from its 64 hex digits; `None` when the text is not one.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(bytes))
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeaseToken(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_tokens_read_back_from_hex_and_hide_in_debug() {
        let token = LeaseToken([0xab; 32]);
        assert_eq!(LeaseToken::from_hex(&token.to_hex()), Some(token));
        assert_eq!(format!("{token:?}"), "LeaseToken(..)");
        for bad in ["", "ab", &"g".repeat(64), &"é".repeat(32)] {
            assert_eq!(LeaseToken::from_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn job_ids_round_trip() {
        assert_eq!("job-42".parse::<JobId>(), Ok(JobId(42)));
        assert_eq!("7".parse::<JobId>(), Ok(JobId(7)));
        assert_eq!(JobId(42).to_string(), "job-42");
        for bad in ["", "job-", "job-0", "job--1", "job-+3", "abc", "job-1x"] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn worker_ids_are_checked() {
        assert!(WorkerId::new("gpu-node-1.eu_west").is_ok());
        assert_eq!(WorkerId::new("").unwrap_err().reason, "it is empty");
        assert!(WorkerId::new("a b").is_err());
        assert!(WorkerId::new("x".repeat(129)).is_err());
    }
}
