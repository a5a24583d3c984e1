//! [`ArtifactStore`]: the files stages make, kept by the control plane in its data folder and
//! addressed by the SHA-256 of their bytes.
//!
//! ```text
//! <root>/blobs/ab/ab12…ef          the bytes, named by their digest, never rewritten
//! <root>/meta/ab12…ef              what they are (ArtifactMeta, a versioned record)
//! <root>/jobs/job-7/ab12…ef        empty: job-7 made (or re-made) that artifact
//! <root>/jobs/job-7/checkpoint     the job's latest complete checkpoint (step, digest)
//! <root>/uploads/ab12…ef.<id>      an upload in progress, appended in order
//! ```
//!
//! Guarantees: a blob appears under its name only once its bytes are complete, synced and
//! hash to that name (written under `uploads/`, checked, synced, then renamed), so a reader
//! never sees a partial artifact, and a crash leaves at most a stale upload behind. Metadata
//! and checkpoint pointers are written to a temporary name, synced and renamed. The same
//! bytes uploaded twice, even at once, are stored once; the first metadata stays.
//!
//! It does not decide what to keep: [`ArtifactStore::remove`] and
//! [`ArtifactStore::forget_job`] are for the control plane's collection of the artifacts no
//! job uses any more.
//! Uploads are keyed by the uploader's own id, so two workers uploading the same file do not
//! interfere.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nexa_runtime::{ArtifactKind, ArtifactMeta, Digest, JobId, Timestamp, check_artifact_name};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::record;

/// Why an artifact operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// No artifact has this digest.
    #[error("no artifact {0}")]
    NotFound(Digest),
    /// An upload chunk did not continue where the upload stands.
    #[error("upload of {digest} is at byte {expected}, not {got}: send from byte {expected}")]
    Offset {
        /// The artifact being uploaded.
        digest: Digest,
        /// Where the upload stands.
        expected: u64,
        /// Where the chunk said it starts.
        got: u64,
    },
    /// The uploaded bytes hash to something else.
    #[error("uploaded bytes hash to {actual}, not {expected}")]
    Mismatch {
        /// What the uploader announced.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// A name or other argument that cannot be stored.
    #[error("{0}")]
    Invalid(String),
    /// The file system failed.
    #[error("artifact store at {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What happened.
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A job's latest complete checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointPointer {
    /// Optimizer steps done.
    pub step: u64,
    /// The checkpoint's artifact.
    pub digest: Digest,
}

impl record::Record for CheckpointPointer {}

/// Artifacts in a folder; see the module doc.
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    root: PathBuf,
}

impl ArtifactStore {
    /// The largest upload chunk a caller should send (and the largest read answered).
    pub const CHUNK: usize = 1 << 20;

    /// The store in `root`, made if missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ArtifactError> {
        let root = root.into();
        for sub in ["blobs", "meta", "jobs", "uploads"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        }
        Ok(Self { root })
    }

    /// The folder it keeps its files in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the bytes of `digest` are (whether or not they exist).
    pub fn blob_path(&self, digest: Digest) -> PathBuf {
        let hex = digest.to_string();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }

    fn meta_path(&self, digest: Digest) -> PathBuf {
        self.root.join("meta").join(digest.to_string())
    }

    fn job_dir(&self, job: JobId) -> PathBuf {
        self.root.join("jobs").join(job.to_string())
    }

    fn upload_path(&self, digest: Digest, upload: u64) -> PathBuf {
        self.root
            .join("uploads")
            .join(format!("{digest}.{upload:016x}"))
    }

    /// What is known of `digest`, if it is stored.
    pub fn stat(&self, digest: Digest) -> Result<Option<ArtifactMeta>, ArtifactError> {
        read_record(&self.meta_path(digest), "artifact")
    }

    /// Appends `data` at `offset` to upload `upload` of `digest`; returns the bytes uploaded
    /// so far. Offset 0 starts (or restarts) the upload; any other offset must be where the
    /// upload stands, so a resent chunk is refused with the offset to resend from.
    pub fn append(
        &self,
        digest: Digest,
        upload: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u64, ArtifactError> {
        let path = self.upload_path(digest, upload);
        let mut file = if offset == 0 {
            File::create(&path).map_err(io_at(&path))?
        } else {
            let file = match OpenOptions::new().append(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(ArtifactError::Offset {
                        digest,
                        expected: 0,
                        got: offset,
                    });
                }
                Err(e) => return Err(ArtifactError::Io { path, source: e }),
            };
            let len = file.metadata().map_err(io_at(&path))?.len();
            if len != offset {
                return Err(ArtifactError::Offset {
                    digest,
                    expected: len,
                    got: offset,
                });
            }
            file
        };
        file.write_all(data).map_err(io_at(&path))?;
        Ok(offset + data.len() as u64)
    }

    /// Ends upload `upload` of `digest`: checks the bytes hash to `digest`, keeps them and
    /// records `name`, `kind` and `job` (the first metadata of an artifact stays; a later
    /// job that makes the same bytes is linked to them too). When the bytes are held already
    /// nothing need have been uploaded: the job is linked to them.
    pub fn commit(
        &self,
        digest: Digest,
        upload: u64,
        name: &str,
        kind: ArtifactKind,
        job: Option<JobId>,
        now: Timestamp,
    ) -> Result<ArtifactMeta, ArtifactError> {
        check_artifact_name(name).map_err(ArtifactError::Invalid)?;
        let part = self.upload_path(digest, upload);
        let blob = self.blob_path(digest);
        // Held already (the uploader asked first and sent nothing, or two uploads raced):
        // whatever was uploaded is not needed. The metadata is written only once the bytes
        // are kept, here or in object storage.
        if let Some(existing) = self.stat(digest)? {
            let _ = fs::remove_file(&part);
            return self.record(digest, existing.size, name, kind, job, now);
        }
        if let Ok(existing) = fs::metadata(&blob) {
            let _ = fs::remove_file(&part);
            return self.record(digest, existing.len(), name, kind, job, now);
        }
        if !part.exists() {
            return Err(ArtifactError::Invalid(format!(
                "nothing was uploaded for {digest} (upload {upload:x}): send its bytes first"
            )));
        }
        let (actual, size) = hash_file(&part)?;
        if actual != digest {
            let _ = fs::remove_file(&part);
            return Err(ArtifactError::Mismatch {
                expected: digest,
                actual,
            });
        }
        File::open(&part)
            .and_then(|f| f.sync_all())
            .map_err(io_at(&part))?;
        let dir = blob.parent().expect("blobs have a folder");
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        fs::rename(&part, &blob).map_err(io_at(&blob))?;
        sync_dir(dir)?;
        self.record(digest, size, name, kind, job, now)
    }

    /// Stores the file at `path` (a copy), as [`ArtifactStore::commit`] would an upload.
    pub fn put_file(
        &self,
        path: &Path,
        name: &str,
        kind: ArtifactKind,
        job: Option<JobId>,
        now: Timestamp,
    ) -> Result<ArtifactMeta, ArtifactError> {
        let (digest, _) = hash_file(path)?;
        // Uploads from outside use ids chosen by the uploader; ours count down from the top.
        static LOCAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);
        let upload = LOCAL.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let part = self.upload_path(digest, upload);
        fs::copy(path, &part).map_err(io_at(&part))?;
        self.commit(digest, upload, name, kind, job, now)
    }

    fn record(
        &self,
        digest: Digest,
        size: u64,
        name: &str,
        kind: ArtifactKind,
        job: Option<JobId>,
        now: Timestamp,
    ) -> Result<ArtifactMeta, ArtifactError> {
        let meta = match self.stat(digest)? {
            Some(meta) => meta,
            None => {
                let meta = ArtifactMeta {
                    digest,
                    size,
                    name: name.to_owned(),
                    kind,
                    job,
                    created_at: now,
                };
                let bytes = record::encode(&meta).map_err(|e| {
                    ArtifactError::Invalid(format!("cannot encode artifact metadata: {e}"))
                })?;
                write_atomic(&self.meta_path(digest), &bytes)?;
                meta
            }
        };
        if let Some(job) = job {
            let dir = self.job_dir(job);
            fs::create_dir_all(&dir).map_err(io_at(&dir))?;
            let link = dir.join(digest.to_string());
            File::create(&link).map_err(io_at(&link))?;
        }
        Ok(meta)
    }

    /// Whether the bytes of `digest` are in this folder (rather than nowhere, or moved to
    /// object storage).
    pub fn has_local_bytes(&self, digest: Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Removes the local bytes of `digest`, once they are kept elsewhere.
    pub fn remove_local_bytes(&self, digest: Digest) -> Result<(), ArtifactError> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ArtifactError::Io { path, source: e }),
        }
    }

    /// The artifacts whose bytes are in this folder.
    pub fn local_digests(&self) -> Result<Vec<Digest>, ArtifactError> {
        let blobs = self.root.join("blobs");
        let mut out = Vec::new();
        for shard in fs::read_dir(&blobs).map_err(io_at(&blobs))? {
            let shard = shard.map_err(io_at(&blobs))?.path();
            let Ok(entries) = fs::read_dir(&shard) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Some(d) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Up to `len` bytes of `digest` from `offset` (fewer at the end; none past it), and the
    /// artifact's size.
    pub fn read(
        &self,
        digest: Digest,
        offset: u64,
        len: usize,
    ) -> Result<(Vec<u8>, u64), ArtifactError> {
        let path = self.blob_path(digest);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ArtifactError::NotFound(digest));
            }
            Err(e) => return Err(ArtifactError::Io { path, source: e }),
        };
        let size = file.metadata().map_err(io_at(&path))?.len();
        let want = len.min(Self::CHUNK) as u64;
        let take = want.min(size.saturating_sub(offset));
        let mut out = vec![0; take as usize];
        if take > 0 {
            file.seek(SeekFrom::Start(offset)).map_err(io_at(&path))?;
            file.read_exact(&mut out).map_err(io_at(&path))?;
        }
        Ok((out, size))
    }

    /// The artifacts `job` made, by name.
    pub fn job_artifacts(&self, job: JobId) -> Result<Vec<ArtifactMeta>, ArtifactError> {
        let mut out = Vec::new();
        for digest in self.made_by(job)? {
            if let Some(meta) = self.stat(digest)? {
                out.push(meta);
            }
        }
        out.sort_by(|a, b| (&a.name, a.digest).cmp(&(&b.name, b.digest)));
        Ok(out)
    }

    /// The jobs with a folder here: those that made an artifact or kept a checkpoint.
    pub fn jobs(&self) -> Result<Vec<JobId>, ArtifactError> {
        let dir = self.root.join("jobs");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            if let Some(job) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(job);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The artifacts `job` made (checkpoints included), by digest.
    pub fn made_by(&self, job: JobId) -> Result<Vec<Digest>, ArtifactError> {
        let dir = self.job_dir(job);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(ArtifactError::Io {
                    path: dir,
                    source: e,
                });
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_at(&dir))?;
            if let Some(digest) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(digest);
            }
        }
        Ok(out)
    }

    /// Removes the artifact `digest` from this folder: its metadata first (it is then unknown),
    /// then its bytes. Removing one that is not here does nothing.
    pub fn remove(&self, digest: Digest) -> Result<(), ArtifactError> {
        for path in [self.meta_path(digest), self.blob_path(digest)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ArtifactError::Io { path, source: e }),
            }
        }
        Ok(())
    }

    /// Removes `job`'s folder: which artifacts it made, and its checkpoint pointer (not the
    /// artifacts themselves).
    pub fn forget_job(&self, job: JobId) -> Result<(), ArtifactError> {
        let dir = self.job_dir(job);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ArtifactError::Io {
                path: dir,
                source: e,
            }),
        }
    }

    /// Records `digest` (a stored checkpoint artifact) as `job`'s latest checkpoint, unless
    /// the one recorded has more steps.
    pub fn set_checkpoint(
        &self,
        job: JobId,
        pointer: CheckpointPointer,
    ) -> Result<(), ArtifactError> {
        if self.stat(pointer.digest)?.is_none() {
            return Err(ArtifactError::NotFound(pointer.digest));
        }
        if let Some(now) = self.checkpoint(job)?
            && now.step > pointer.step
        {
            return Ok(());
        }
        let dir = self.job_dir(job);
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let bytes = record::encode(&pointer)
            .map_err(|e| ArtifactError::Invalid(format!("cannot encode a checkpoint: {e}")))?;
        write_atomic(&dir.join("checkpoint"), &bytes)
    }

    /// `job`'s latest checkpoint, if one was recorded.
    pub fn checkpoint(&self, job: JobId) -> Result<Option<CheckpointPointer>, ArtifactError> {
        read_record(&self.job_dir(job).join("checkpoint"), "checkpoint pointer")
    }
}

/// The SHA-256 and size of the file at `path`.
pub fn hash_file(path: &Path) -> Result<(Digest, u64), ArtifactError> {
    let mut file = File::open(path).map_err(io_at(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_at(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((Digest(hasher.finalize().into()), size))
}

/// The record in the file at `path` (`what` it is, for errors); `None` when there is no file.
fn read_record<T: record::Record>(path: &Path, what: &str) -> Result<Option<T>, ArtifactError> {
    match fs::read(path) {
        Ok(bytes) => record::decode(&bytes, what)
            .map(Some)
            .map_err(|e| ArtifactError::Io {
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ArtifactError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io_at(&tmp))?;
    file.write_all(bytes).map_err(io_at(&tmp))?;
    file.sync_all().map_err(io_at(&tmp))?;
    fs::rename(&tmp, path).map_err(io_at(path))?;
    sync_dir(path.parent().expect("a file has a folder"))
}

fn sync_dir(dir: &Path) -> Result<(), ArtifactError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    #[test]
    fn an_upload_in_chunks_is_stored_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let d = digest_of(&data);
        assert!(store.stat(d).unwrap().is_none());
        let mut at = 0;
        for chunk in data.chunks(1000) {
            at = store.append(d, 7, at, chunk).unwrap();
        }
        // A resent chunk is refused with where to go on from.
        let e = store.append(d, 7, 1000, &data[1000..2000]).unwrap_err();
        assert!(
            matches!(e, ArtifactError::Offset { expected: 3000, .. }),
            "{e}"
        );
        let meta = store
            .commit(
                d,
                7,
                "x.bin",
                ArtifactKind::File,
                Some(JobId(3)),
                Timestamp(5),
            )
            .unwrap();
        assert_eq!((meta.size, meta.name.as_str()), (3000, "x.bin"));
        assert_eq!(store.stat(d).unwrap().unwrap(), meta);
        let (head, size) = store.read(d, 0, 10).unwrap();
        assert_eq!((head.as_slice(), size), (&data[..10], 3000));
        let (tail, _) = store.read(d, 2990, 100).unwrap();
        assert_eq!(tail, &data[2990..]);
        assert!(store.read(d, 5000, 10).unwrap().0.is_empty());
        assert_eq!(
            store.job_artifacts(JobId(3)).unwrap(),
            std::slice::from_ref(&meta)
        );

        // The same bytes again, from another job and under another name: stored once, the
        // first metadata stays, and the second job is linked to it.
        let again = store
            .commit_bytes_for_test(&data, 8, "y.bin", Some(JobId(4)))
            .unwrap();
        assert_eq!(again, meta);
        assert_eq!(
            store.job_artifacts(JobId(4)).unwrap(),
            std::slice::from_ref(&meta)
        );
        // Held bytes need no upload to be linked to another job.
        let linked = store
            .commit(
                d,
                99,
                "z.bin",
                ArtifactKind::File,
                Some(JobId(5)),
                Timestamp(6),
            )
            .unwrap();
        assert_eq!(linked, meta);
        assert_eq!(store.job_artifacts(JobId(5)).unwrap(), [meta]);
        // Bytes never held and never uploaded cannot be committed.
        let e = store
            .commit(
                digest_of(b"other"),
                1,
                "o",
                ArtifactKind::File,
                None,
                Timestamp(0),
            )
            .unwrap_err();
        assert!(e.to_string().contains("nothing was uploaded"), "{e}");
    }

    #[test]
    fn bytes_that_do_not_match_their_digest_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let claimed = digest_of(b"hello");
        store.append(claimed, 1, 0, b"hellO").unwrap();
        let e = store
            .commit(claimed, 1, "h", ArtifactKind::File, None, Timestamp(0))
            .unwrap_err();
        assert!(matches!(e, ArtifactError::Mismatch { .. }), "{e}");
        assert!(store.stat(claimed).unwrap().is_none());
        assert!(matches!(
            store.read(claimed, 0, 1).unwrap_err(),
            ArtifactError::NotFound(_)
        ));
        // A chunk that does not start an upload that does not exist.
        let e = store.append(claimed, 2, 10, b"x").unwrap_err();
        assert!(
            matches!(e, ArtifactError::Offset { expected: 0, .. }),
            "{e}"
        );
        // Names must be plain file names.
        store.append(claimed, 3, 0, b"hello").unwrap();
        let e = store
            .commit(claimed, 3, "../x", ArtifactKind::File, None, Timestamp(0))
            .unwrap_err();
        assert!(matches!(e, ArtifactError::Invalid(_)), "{e}");
    }

    #[test]
    fn the_latest_checkpoint_only_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let job = JobId(9);
        assert_eq!(store.checkpoint(job).unwrap(), None);
        let a = store
            .commit_bytes_for_test(b"step 10", 1, "a", None)
            .unwrap();
        let b = store
            .commit_bytes_for_test(b"step 20", 2, "b", None)
            .unwrap();
        let at = |step, meta: &ArtifactMeta| CheckpointPointer {
            step,
            digest: meta.digest,
        };
        store.set_checkpoint(job, at(20, &b)).unwrap();
        store.set_checkpoint(job, at(10, &a)).unwrap();
        assert_eq!(store.checkpoint(job).unwrap(), Some(at(20, &b)));
        let unknown = digest_of(b"never stored");
        assert!(
            store
                .set_checkpoint(
                    job,
                    CheckpointPointer {
                        step: 30,
                        digest: unknown
                    }
                )
                .is_err()
        );
        // Reopening keeps everything.
        let store = ArtifactStore::open(dir.path()).unwrap();
        assert_eq!(store.checkpoint(job).unwrap(), Some(at(20, &b)));
    }

    impl ArtifactStore {
        fn commit_bytes_for_test(
            &self,
            bytes: &[u8],
            upload: u64,
            name: &str,
            job: Option<JobId>,
        ) -> Result<ArtifactMeta, ArtifactError> {
            let d = digest_of(bytes);
            self.append(d, upload, 0, bytes)?;
            self.commit(d, upload, name, ArtifactKind::File, job, Timestamp(1))
        }
    }
}
