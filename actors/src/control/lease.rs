//! [`LeaseKey`]: the control plane's secret for lease tokens.
//!
//! A lease token is `HMAC-SHA256(key, job ‖ epoch)`: the control plane hands it to the worker
//! that leased the job and checks it on every report, with nothing stored per lease, so it
//! holds across restarts (the key is kept in the data folder, readable by its owner only).
//! Anyone without the token — another worker, an API client that read the job and its
//! epoch — cannot report on the job.

use std::io::{Read, Write};
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use nexa_runtime::{Epoch, JobId, LeaseToken, StoreError, TransitionError};
use sha2::Sha256;

/// The file in the data folder that holds the key.
pub(crate) const LEASE_KEY_FILE: &str = "lease_key";

/// The control plane's secret for lease tokens.
pub(crate) struct LeaseKey([u8; 32]);

impl std::fmt::Debug for LeaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseKey(..)")
    }
}

impl LeaseKey {
    /// The key kept in `data`, made (from the system's random source) on first use.
    pub(crate) fn load_or_create(data: &Path) -> std::io::Result<Self> {
        let path = data.join(LEASE_KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                    std::io::Error::other(format!(
                        "{} holds {} bytes, not a 32-byte key; remove it to make a new one \
                         (running jobs' workers will then have to drop them)",
                        path.display(),
                        b.len()
                    ))
                })?;
                Ok(Self(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data)?;
                let mut key = [0u8; 32];
                std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                match options.open(&path) {
                    Ok(mut file) => {
                        file.write_all(&key)?;
                        file.sync_all()?;
                        Ok(Self(key))
                    }
                    // Another process made it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::load_or_create(data)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn mac(&self, job: JobId, epoch: Epoch) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key size");
        mac.update(b"nexa-lease\0");
        mac.update(&job.0.to_be_bytes());
        mac.update(&epoch.0.to_be_bytes());
        mac
    }

    /// The token of the lease `epoch` of `job`.
    pub(crate) fn token(&self, job: JobId, epoch: Epoch) -> LeaseToken {
        LeaseToken(self.mac(job, epoch).finalize().into_bytes().into())
    }

    /// `Ok` when `token` is the token of the lease `epoch` of `job` (compared in constant
    /// time); else the refusal a report without it gets, whether or not the lease is live.
    pub(crate) fn check(
        &self,
        job: JobId,
        epoch: Epoch,
        token: &LeaseToken,
    ) -> Result<(), StoreError> {
        self.mac(job, epoch)
            .verify_slice(&token.0)
            .map_err(|_| TransitionError::NotLeaseHolder { job, epoch }.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_per_lease_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let key = LeaseKey::load_or_create(dir.path()).unwrap();
        let token = key.token(JobId(2), Epoch(1));
        assert!(key.check(JobId(2), Epoch(1), &token).is_ok());
        for (job, epoch) in [(JobId(2), Epoch(2)), (JobId(3), Epoch(1))] {
            let err = key.check(job, epoch, &token).unwrap_err();
            assert!(err.is_stale(), "{err}");
        }
        assert!(
            key.check(JobId(2), Epoch(1), &LeaseToken::default())
                .is_err()
        );
        // The same key after a restart; another data folder has another.
        let again = LeaseKey::load_or_create(dir.path()).unwrap();
        assert!(again.check(JobId(2), Epoch(1), &token).is_ok());
        let other = tempfile::tempdir().unwrap();
        let elsewhere = LeaseKey::load_or_create(other.path()).unwrap();
        assert!(elsewhere.check(JobId(2), Epoch(1), &token).is_err());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(LEASE_KEY_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(LEASE_KEY_FILE), b"short").unwrap();
        let err = LeaseKey::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a 32-byte key"), "{err}");
    }
}
