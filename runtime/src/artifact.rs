//! Artifacts: the files stages make (datasets, models, checkpoints, reports), kept by the
//! control plane beyond the worker that made them and named by their content.
//!
//! An artifact is addressed by the SHA-256 of its bytes ([`Digest`]) and referred to by the
//! URI `nexa://artifacts/<64 hex digits>` ([`artifact_uri`], [`parse_artifact_uri`]), which
//! any worker and any user can read through the control plane. [`ArtifactMeta`] says what it
//! is, what it was called and which job made it: the first half of every lineage.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::id::JobId;
use crate::time::Timestamp;

/// The URI prefix of artifacts kept by the control plane.
pub const ARTIFACT_URI_PREFIX: &str = "nexa://artifacts/";

/// A SHA-256 digest: the address of an artifact. Shown and parsed as 64 lower-case hex
/// digits (upper case parses too).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Text that is not a SHA-256 digest or an artifact URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not {expected}")]
pub struct ParseDigestError {
    /// What was given.
    pub text: String,
    /// What was expected.
    pub expected: &'static str,
}

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseDigestError {
            text: s.to_owned(),
            expected: "a SHA-256 digest (64 hex digits)",
        };
        if s.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
        }
        Ok(Digest(out))
    }
}

/// The URI of the artifact with `digest`.
pub fn artifact_uri(digest: Digest) -> String {
    format!("{ARTIFACT_URI_PREFIX}{digest}")
}

/// The digest an artifact URI names; `None` when `uri` is not a `nexa://` URI at all, an
/// error when it is one but malformed.
pub fn parse_artifact_uri(uri: &str) -> Option<Result<Digest, ParseDigestError>> {
    let rest = uri.strip_prefix("nexa://")?;
    Some(
        rest.strip_prefix("artifacts/")
            .and_then(|hex| hex.parse().ok())
            .ok_or_else(|| ParseDigestError {
                text: uri.to_owned(),
                expected: "an artifact URI (nexa://artifacts/<64 hex digits>)",
            }),
    )
}

/// What an artifact holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// A dataset (Parquet or JSON Lines, its schema inside or beside it).
    Dataset,
    /// A trained model (safetensors, its configuration in the metadata).
    Model,
    /// A training checkpoint of its job, after `step` optimizer steps.
    Checkpoint {
        /// Steps done.
        step: u64,
    },
    /// A report (JSON).
    Report,
    /// Anything else a handler listed in its result.
    File,
}

impl ArtifactKind {
    /// The lower-case name shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Dataset => "dataset",
            ArtifactKind::Model => "model",
            ArtifactKind::Checkpoint { .. } => "checkpoint",
            ArtifactKind::Report => "report",
            ArtifactKind::File => "file",
        }
    }
}

/// What the control plane knows of an artifact besides its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactMeta {
    /// Its address.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The file name it was made under, e.g. `physics.parquet`; what a download is called.
    pub name: String,
    /// What it holds.
    pub kind: ArtifactKind,
    /// The job that made it, if a job did.
    pub job: Option<JobId>,
    /// When it was first stored.
    pub created_at: Timestamp,
}

impl ArtifactMeta {
    /// Its URI.
    pub fn uri(&self) -> String {
        artifact_uri(self.digest)
    }
}

/// Checks a file name for an artifact: 1 to 255 bytes, no `/`, no control characters, not
/// `.` or `..`.
pub fn check_artifact_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!(
            "artifact name {name:?} must be 1 to 255 bytes long"
        ));
    }
    if name == "." || name == ".." || name.contains('/') || name.chars().any(char::is_control) {
        return Err(format!(
            "artifact name {name:?} must be a plain file name (no '/', no control characters)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_uris_round_trip() {
        let d = Digest([0xab; 32]);
        let text = d.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<Digest>().unwrap(), d);
        assert_eq!(text.to_uppercase().parse::<Digest>().unwrap(), d);
        let uri = artifact_uri(d);
        assert_eq!(uri, format!("nexa://artifacts/{text}"));
        assert_eq!(parse_artifact_uri(&uri).unwrap().unwrap(), d);
    }

    #[test]
    fn bad_digests_and_uris_are_errors() {
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63), &"é".repeat(32)] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?}");
        }
        assert!(parse_artifact_uri("file:///x").is_none());
        assert!(parse_artifact_uri("data/x.csv").is_none());
        let e = parse_artifact_uri("nexa://artifacts/123")
            .unwrap()
            .unwrap_err();
        assert!(
            e.to_string().contains("nexa://artifacts/<64 hex digits>"),
            "{e}"
        );
        assert!(parse_artifact_uri("nexa://models/x").unwrap().is_err());
    }

    #[test]
    fn artifact_names_are_plain_file_names() {
        assert!(check_artifact_name("physics.parquet").is_ok());
        for bad in ["", ".", "..", "a/b", "a\nb", &"x".repeat(256)] {
            assert!(check_artifact_name(bad).is_err(), "{bad:?}");
        }
    }
}
