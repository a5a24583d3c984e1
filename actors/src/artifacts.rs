//! [`Artifacts`]: what a stage reads and what it keeps, as seen from a worker.
//!
//! Inputs are named by URI. `nexa://artifacts/<sha256>` is read from the control plane over
//! the worker's connection and cached in the worker's folder by its digest (checked after
//! the download), so a second job on the same input reads the cached file. A path or
//! `file://` URI is a file on this machine. Outputs are uploaded to the control plane in
//! chunks (nothing is sent when it already holds the same bytes) and named by their
//! `nexa://` URI from then on, so they outlive the worker. A worker with no control plane
//! (a stage run on its own, in tests) keeps outputs where they are and names them by an
//! absolute `file://` URI.
//!
//! Training checkpoints go the same way, and the control plane remembers each job's latest,
//! so that a later attempt on another worker resumes from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nexa_runtime::wire::{ARTIFACT_CHUNK, ErrorCode, Message};
use nexa_runtime::{
    ArtifactKind, ArtifactMeta, Digest, Epoch, JobId, LeaseToken, ModelVersion, artifact_uri,
    parse_artifact_uri,
};
use nexa_storage::hash_file;
use nexa_transport::Uplink;

use crate::stage::StageError;

/// A model a stage was pointed at: a registered version, or a file given by URI.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSource {
    /// The registered version, when the reference named one.
    pub version: Option<ModelVersion>,
    /// Where its weights are.
    pub uri: String,
}

impl ModelSource {
    /// How to name it in logs and results: `name:N`, or the URI.
    pub fn label(&self) -> String {
        match &self.version {
            Some(v) => format!("{}:{}", v.name, v.version),
            None => self.uri.clone(),
        }
    }
}

/// One attempt's access to artifacts; see the module doc.
#[derive(Clone, Debug)]
pub struct Artifacts {
    client: Option<Arc<dyn Uplink>>,
    job: JobId,
    epoch: Epoch,
    lease_token: LeaseToken,
    cache: PathBuf,
    /// The folders local paths must be in (symlinks resolved); `None` lets any path be read.
    roots: Option<Arc<[PathBuf]>>,
}

/// Whether `reference` is a location (a URI or a path) rather than a registered name.
pub fn is_location(reference: &str) -> bool {
    reference.contains("://")
        || reference.starts_with('/')
        || reference.starts_with("./")
        || reference.starts_with("../")
}

fn failed(what: impl std::fmt::Display) -> StageError {
    StageError::Failed(what.to_string())
}

impl Artifacts {
    /// Artifacts of `job` under lease `epoch` (whose token is `lease_token`), through
    /// `client` (or, with none, on this machine only), with downloads cached in `cache`.
    pub fn new(
        client: Option<Arc<dyn Uplink>>,
        job: JobId,
        epoch: Epoch,
        lease_token: LeaseToken,
        cache: PathBuf,
    ) -> Self {
        Self {
            client,
            job,
            epoch,
            lease_token,
            cache,
            roots: None,
        }
    }

    /// The same, reading local files only inside `roots` (and the download cache): a path
    /// that leaves them, through `..` or a symlink, is invalid input, refused before any byte
    /// of it is read.
    pub fn confined_to(mut self, roots: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut roots: Vec<PathBuf> = roots.into_iter().collect();
        roots.push(self.cache.clone());
        self.roots = Some(roots.into());
        self
    }

    /// Artifacts with no control plane: inputs are local files, outputs stay where they are.
    pub fn local(cache: PathBuf) -> Self {
        Self::new(None, JobId(0), Epoch(0), LeaseToken::default(), cache)
    }

    async fn ask(&self, message: Message) -> Result<Message, StageError> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| failed("this worker has no control plane to ask"))?;
        client
            .request(&message)
            .await
            // Contact with the control plane lost on the way: not the stage's fault, and a
            // restart (from the last checkpoint) may well go through.
            .map_err(|e| StageError::Crashed(format!("{} not answered: {e}", message.name())))
    }

    /// A local file holding what `uri` names: the file itself for a path or `file://` URI,
    /// a verified cached copy for a `nexa://` artifact. A URI that names nothing readable is
    /// invalid input, named in the error.
    pub async fn fetch(&self, uri: &str) -> Result<PathBuf, StageError> {
        if let Some(digest) = parse_artifact_uri(uri) {
            let digest = digest.map_err(|e| StageError::InvalidInput(e.to_string()))?;
            return self.download(uri, digest).await;
        }
        if nexa_storage::is_remote(uri) {
            return nexa_storage::fetch_remote(uri, &self.cache)
                .await
                .map_err(|e| {
                    if e.is_invalid_input() {
                        StageError::InvalidInput(e.to_string())
                    } else {
                        failed(e)
                    }
                });
        }
        if let Some((scheme, _)) = uri.split_once("://")
            && scheme != "file"
        {
            return Err(StageError::InvalidInput(format!(
                "cannot read {uri}: this worker reads nexa://artifacts/…, s3://, gs://, az://, \
                 http(s)://, file:// and local paths, not {scheme}://"
            )));
        }
        let path = PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
        let path = std::path::absolute(&path).unwrap_or(path);
        let path = match &self.roots {
            Some(roots) => self.inside(uri, &path, roots).await?,
            None => path,
        };
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(path),
            Ok(_) => Err(StageError::InvalidInput(format!(
                "{uri} is a folder, not a file"
            ))),
            Err(e) => Err(StageError::InvalidInput(format!(
                "cannot read {uri} on worker (as {}): {e}",
                path.display()
            ))),
        }
    }

    /// What `uri` names (as [`Artifacts::fetch`] finds it), opened once for reading: a symlink
    /// at the end of the path is refused, the descriptor is checked to be a regular file, and,
    /// for a worker with data roots, the file the descriptor holds (not the name, which another
    /// process could swap meanwhile) is checked to be inside them. Read the file, not the path.
    pub async fn open(&self, uri: &str) -> Result<(PathBuf, std::fs::File), StageError> {
        let path = self.fetch(uri).await?;
        let roots = self.roots.clone();
        let uri = uri.to_owned();
        tokio::task::spawn_blocking(move || {
            let file = open_confined(&uri, &path, roots.as_deref())?;
            Ok((path, file))
        })
        .await
        .map_err(|e| failed(format!("the open stopped unexpectedly: {e}")))?
    }

    /// `path` with every symlink resolved, when that is inside one of `roots`.
    async fn inside(
        &self,
        uri: &str,
        path: &Path,
        roots: &[PathBuf],
    ) -> Result<PathBuf, StageError> {
        let real = tokio::fs::canonicalize(path).await.map_err(|e| {
            StageError::InvalidInput(format!(
                "cannot read {uri} on worker (as {}): {e}",
                path.display()
            ))
        })?;
        for root in roots {
            if let Ok(root) = tokio::fs::canonicalize(root).await
                && real.starts_with(&root)
            {
                return Ok(real);
            }
        }
        let allowed: Vec<String> = roots
            .iter()
            .filter(|r| **r != self.cache)
            .map(|r| r.display().to_string())
            .collect();
        Err(StageError::InvalidInput(format!(
            "{uri} is outside the folders this worker reads local files from ({}); start \
             the worker with --data-root DIR to allow another, or give a nexa:// or \
             object-store URI",
            if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            }
        )))
    }

    async fn stat(&self, digest: Digest) -> Result<Option<ArtifactMeta>, StageError> {
        match self.ask(Message::ArtifactStat { digest }).await? {
            Message::ArtifactInfo(meta) => Ok(meta),
            other => Err(unexpected(&other)),
        }
    }

    async fn download(&self, uri: &str, digest: Digest) -> Result<PathBuf, StageError> {
        if self.client.is_none() {
            return Err(StageError::InvalidInput(format!(
                "cannot read {uri}: no control plane to read artifacts from"
            )));
        }
        let meta = self.stat(digest).await?.ok_or_else(|| {
            StageError::InvalidInput(format!("{uri}: the control plane holds no such artifact"))
        })?;
        let dir = self.cache.join(digest.to_string());
        let path = dir.join(&meta.name);
        if tokio::fs::metadata(&path)
            .await
            .is_ok_and(|m| m.len() == meta.size)
        {
            return Ok(path);
        }
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| failed(format!("cannot make {}: {e}", dir.display())))?;
        // A name of its own: two jobs fetching the same artifact at once must not write into
        // one file (the second create would empty what the first wrote).
        let part = dir.join(format!(".{}.{:016x}.part", meta.name, upload_id()));
        let mut file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| failed(format!("cannot write {}: {e}", part.display())))?;
        let mut offset = 0u64;
        while offset < meta.size {
            let answer = self
                .ask(Message::ArtifactRead {
                    digest,
                    offset,
                    len: ARTIFACT_CHUNK as u32,
                })
                .await?;
            let Message::ArtifactData { data, .. } = answer else {
                return Err(unexpected(&answer));
            };
            if data.is_empty() {
                return Err(failed(format!(
                    "{uri} ended at byte {offset} of {}",
                    meta.size
                )));
            }
            tokio::io::AsyncWriteExt::write_all(&mut file, &data)
                .await
                .map_err(|e| failed(format!("cannot write {}: {e}", part.display())))?;
            offset += data.len() as u64;
        }
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| failed(format!("cannot write {}: {e}", part.display())))?;
        drop(file);
        let check = part.clone();
        let (actual, _) = tokio::task::spawn_blocking(move || hash_file(&check))
            .await
            .map_err(failed)?
            .map_err(failed)?;
        if actual != digest {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(failed(format!(
                "{uri} arrived with digest {actual}: damaged in transit"
            )));
        }
        tokio::fs::rename(&part, &path)
            .await
            .map_err(|e| failed(format!("cannot keep {}: {e}", path.display())))?;
        Ok(path)
    }

    /// Keeps the file at `path` beyond this worker as an artifact of this job named `name`
    /// and returns its URI (or, with no control plane, its absolute `file://` URI).
    pub async fn publish(
        &self,
        path: &Path,
        name: &str,
        kind: ArtifactKind,
    ) -> Result<String, StageError> {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        if self.client.is_none() {
            return Ok(format!("file://{}", absolute.display()));
        }
        let source = absolute.clone();
        let (digest, size) = tokio::task::spawn_blocking(move || hash_file(&source))
            .await
            .map_err(failed)?
            .map_err(|e| failed(format!("cannot read the output {}: {e}", path.display())))?;
        let upload = upload_id();
        if self.stat(digest).await?.is_none() {
            let mut file = tokio::fs::File::open(&absolute)
                .await
                .map_err(|e| failed(format!("cannot read {}: {e}", absolute.display())))?;
            let mut offset = 0u64;
            let mut buf = vec![0u8; ARTIFACT_CHUNK];
            loop {
                let n = read_full(&mut file, &mut buf)
                    .await
                    .map_err(|e| failed(format!("cannot read {}: {e}", absolute.display())))?;
                if n == 0 && offset > 0 {
                    break;
                }
                let answer = self
                    .ask(Message::ArtifactChunk {
                        digest,
                        upload,
                        offset,
                        data: buf[..n].to_vec(),
                    })
                    .await?;
                if answer != Message::Ack {
                    return Err(unexpected(&answer));
                }
                offset += n as u64;
                if n == 0 || offset >= size {
                    break;
                }
            }
        }
        let answer = self
            .ask(Message::ArtifactCommit {
                digest,
                upload,
                name: name.to_owned(),
                kind,
                job: self.job,
                epoch: self.epoch,
                lease_token: self.lease_token,
            })
            .await?;
        match answer {
            Message::ArtifactInfo(Some(meta)) => Ok(artifact_uri(meta.digest)),
            other => Err(unexpected(&other)),
        }
    }

    /// Records the checkpoint file at `path`, after `step` steps, as this job's latest.
    pub async fn save_checkpoint(&self, step: u64, path: &Path) -> Result<(), StageError> {
        if self.client.is_none() {
            return Ok(());
        }
        let uri = self
            .publish(
                path,
                &format!("checkpoint-{step}.safetensors"),
                ArtifactKind::Checkpoint { step },
            )
            .await?;
        let digest = parse_artifact_uri(&uri)
            .and_then(Result::ok)
            .ok_or_else(|| failed("a published checkpoint has no artifact URI"))?;
        let answer = self
            .ask(Message::CheckpointSaved {
                job: self.job,
                epoch: self.epoch,
                lease_token: self.lease_token,
                step,
                digest,
            })
            .await?;
        if answer == Message::Ack {
            Ok(())
        } else {
            Err(unexpected(&answer))
        }
    }

    /// This job's latest checkpoint kept by the control plane, downloaded: its step and
    /// file. `None` when no earlier attempt saved one (or there is no control plane).
    pub async fn latest_checkpoint(&self) -> Result<Option<(u64, PathBuf)>, StageError> {
        if self.client.is_none() {
            return Ok(None);
        }
        let answer = self
            .ask(Message::CheckpointQuery {
                job: self.job,
                epoch: self.epoch,
                lease_token: self.lease_token,
            })
            .await?;
        match answer {
            Message::CheckpointAt(None) => Ok(None),
            Message::CheckpointAt(Some((step, digest))) => {
                let path = self.download(&artifact_uri(digest), digest).await?;
                Ok(Some((step, path)))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// The model `reference` names: a registered `name` or `name:N`, or a model file given
    /// by URI or path. A name the registry does not know is invalid input, and the message
    /// lists the registered models.
    pub async fn resolve_model(&self, reference: &str) -> Result<ModelSource, StageError> {
        if is_location(reference) {
            return Ok(ModelSource {
                version: None,
                uri: reference.to_owned(),
            });
        }
        if self.client.is_none() {
            return Err(StageError::InvalidInput(format!(
                "model {reference:?}: no registry to look it up in (give a model file's URI)"
            )));
        }
        let answer = self
            .ask(Message::ResolveModel {
                reference: reference.to_owned(),
            })
            .await?;
        match answer {
            Message::ModelFound(version) => Ok(ModelSource {
                uri: version.uri.clone(),
                version: Some(version),
            }),
            Message::Error {
                code: ErrorCode::NotFound,
                message,
            } => Err(StageError::InvalidInput(message)),
            other => Err(unexpected(&other)),
        }
    }
}

/// Opens `path` once (no symlink at its end, a regular file) and, given `roots`, checks that
/// the file the descriptor holds, as the kernel names it, is inside one of them.
fn open_confined(
    uri: &str,
    path: &Path,
    roots: Option<&[PathBuf]>,
) -> Result<std::fs::File, StageError> {
    let (file, _) = nexa_compute::open_regular(path)
        .map_err(|e| StageError::InvalidInput(format!("cannot read {uri}: {e}")))?;
    if let Some(roots) = roots {
        use std::os::fd::AsRawFd;
        let held = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| failed(format!("cannot tell which file {uri} opened: {e}")))?;
        let inside = roots
            .iter()
            .any(|root| std::fs::canonicalize(root).is_ok_and(|root| held.starts_with(root)));
        if !inside {
            return Err(StageError::InvalidInput(format!(
                "{uri} is outside the folders this worker reads local files from (it was \
                 moved while being opened)"
            )));
        }
    }
    Ok(file)
}

fn unexpected(answer: &Message) -> StageError {
    match answer {
        Message::Error { message, .. } => failed(format!("the control plane refused: {message}")),
        other => failed(format!("unexpected answer {}", other.name())),
    }
}

async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// An upload id unlikely to meet another worker's: time, process and a counter, mixed.
fn upload_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos
        ^ (u64::from(std::process::id()) << 40)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{StageError, open_confined};

    fn invalid(result: Result<std::fs::File, StageError>) -> String {
        match result {
            Err(StageError::InvalidInput(why)) => why,
            Err(other) => panic!("not invalid input: {other:?}"),
            Ok(_) => panic!("opened"),
        }
    }

    #[test]
    fn a_file_is_read_only_when_the_descriptor_holds_a_regular_file_inside_the_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("secret.csv");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("data.csv"), "a\n1\n").unwrap();
        std::fs::write(&outside, "password\nhunter2\n").unwrap();
        let roots = [root.clone()];

        assert!(open_confined("data.csv", &root.join("data.csv"), Some(&roots)).is_ok());
        // What the check on the name let through, swapped for a file elsewhere before the
        // open: the descriptor shows where it really is.
        let why = invalid(open_confined("data.csv", &outside, Some(&roots)));
        assert!(why.contains("outside the folders"), "{why}");
        // A symlink at the end of the path is never followed, even to a file inside.
        let link = root.join("link.csv");
        std::os::unix::fs::symlink(root.join("data.csv"), &link).unwrap();
        let why = invalid(open_confined("link.csv", &link, Some(&roots)));
        assert!(why.contains("symlink"), "{why}");
        // A folder, and a pipe (which would block a plain open and never end).
        let why = invalid(open_confined("root", &root, Some(&roots)));
        assert!(why.contains("not a regular file"), "{why}");
        let fifo = root.join("fifo.csv");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let why = invalid(open_confined("fifo.csv", &fifo, Some(&roots)));
            assert!(why.contains("not a regular file"), "{why}");
        }
        let unconfined: Option<&[PathBuf]> = None;
        assert!(open_confined("secret.csv", &outside, unconfined).is_ok());
    }
}
