//! Artifacts, checkpoints and model lookups as workers ask for them: the answers of the
//! control plane to the artifact messages of the protocol.
//!
//! A commit or a checkpoint must come under the job's live lease, so a worker presumed dead
//! cannot attach files to a job or move its checkpoint. Reads need only a connected worker.
//! File work runs off the async threads.

use std::sync::Arc;

use nexa_runtime::wire::{ARTIFACT_CHUNK, ErrorCode, Message};
use nexa_runtime::{
    ArtifactMeta, Digest, Epoch, JobId, JobParams, JobState, JobType, ListQuery, ModelRef,
    Registry, Store, StoreError,
};
use nexa_storage::{
    ArtifactError, ArtifactStore, ByteStream, CheckpointPointer, RemoteBlobs, RemoteError,
};

use super::{blocking, read};
use crate::clock::now;

fn error(code: ErrorCode, message: impl Into<String>) -> Message {
    Message::Error {
        code,
        message: message.into(),
    }
}

fn refused(e: &ArtifactError) -> Message {
    let code = match e {
        ArtifactError::NotFound(_) => ErrorCode::NotFound,
        ArtifactError::Io { .. } => ErrorCode::Unavailable,
        ArtifactError::Offset { .. }
        | ArtifactError::Mismatch { .. }
        | ArtifactError::Invalid(_) => ErrorCode::BadRequest,
    };
    error(code, e.to_string())
}

/// Runs `op` on the artifact store off the async threads.
async fn on_files<R: Send + 'static>(
    artifacts: &ArtifactStore,
    op: impl FnOnce(&ArtifactStore) -> Result<R, ArtifactError> + Send + 'static,
) -> Result<R, ArtifactError> {
    let artifacts = artifacts.clone();
    tokio::task::spawn_blocking(move || op(&artifacts))
        .await
        .unwrap_or_else(|e| {
            Err(ArtifactError::Invalid(format!(
                "the artifact task failed: {e}"
            )))
        })
}

/// `Ok` when `epoch` is the live lease of `job`; otherwise the refusal to answer with.
async fn check_lease(store: &Arc<dyn Store>, job: JobId, epoch: Epoch) -> Result<(), Message> {
    let found = read(store, move |s| s.get(job)).await;
    match found {
        Ok(j) if j.live_attempt().is_some_and(|a| a.epoch == epoch) => Ok(()),
        Ok(_) => Err(error(
            ErrorCode::Stale,
            format!("{job} has no live lease with epoch {epoch}"),
        )),
        Err(StoreError::NotFound(_)) => Err(error(ErrorCode::NotFound, format!("no {job}"))),
        Err(e) => Err(error(ErrorCode::Unavailable, e.to_string())),
    }
}

/// Moves the bytes of `digest` to object storage, then drops them here.
async fn offload(
    artifacts: &ArtifactStore,
    remote: &RemoteBlobs,
    digest: Digest,
) -> Result<(), String> {
    if !artifacts.has_local_bytes(digest) {
        return Ok(());
    }
    remote
        .put_file(digest, &artifacts.blob_path(digest))
        .await
        .map_err(|e| e.to_string())?;
    on_files(artifacts, move |a| a.remove_local_bytes(digest))
        .await
        .map_err(|e| e.to_string())
}

/// Moves every artifact's bytes still in the data folder to object storage.
pub(crate) async fn offload_all(
    artifacts: &ArtifactStore,
    remote: &RemoteBlobs,
) -> Result<(), String> {
    let local = on_files(artifacts, |a| a.local_digests())
        .await
        .map_err(|e| e.to_string())?;
    for digest in local {
        // Bytes without metadata are a commit a crash cut short: not an artifact yet.
        if on_files(artifacts, move |a| a.stat(digest))
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            offload(artifacts, remote, digest).await?;
        }
    }
    Ok(())
}

/// An artifact's metadata and bytes, wherever they are kept; `None` when it is unknown.
pub(crate) async fn open(
    artifacts: &ArtifactStore,
    remote: Option<&RemoteBlobs>,
    digest: Digest,
) -> Result<Option<(ArtifactMeta, ByteStream)>, ArtifactError> {
    let Some(meta) = on_files(artifacts, move |a| a.stat(digest)).await? else {
        return Ok(None);
    };
    let path = artifacts.blob_path(digest);
    match (tokio::fs::File::open(&path).await, remote) {
        (Ok(file), _) => {
            let stream = futures_util::stream::unfold(file, move |mut file| async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 64 << 10];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(bytes::Bytes::from(buf)), file))
                    }
                    Err(e) => Some((
                        Err(RemoteError::local(format!(
                            "reading artifact {digest}: {e}"
                        ))),
                        file,
                    )),
                }
            });
            Ok(Some((meta, Box::pin(stream))))
        }
        (Err(_), Some(remote)) => {
            let stream = remote
                .stream(digest)
                .await
                .map_err(|e| ArtifactError::Invalid(e.to_string()))?;
            Ok(Some((meta, stream)))
        }
        (Err(e), None) => Err(ArtifactError::Io { path, source: e }),
    }
}

/// The answer to an artifact, checkpoint or model message; `None` for any other message.
pub(crate) async fn answer(
    store: &Arc<dyn Store>,
    artifacts: &ArtifactStore,
    remote: Option<&RemoteBlobs>,
    message: Message,
) -> Option<Message> {
    let answer = match message {
        Message::ArtifactStat { digest } => {
            match on_files(artifacts, move |a| a.stat(digest)).await {
                Ok(meta) => Message::ArtifactInfo(meta),
                Err(e) => refused(&e),
            }
        }
        Message::ArtifactChunk {
            digest,
            upload,
            offset,
            data,
        } => {
            if data.len() > ARTIFACT_CHUNK {
                return Some(error(
                    ErrorCode::BadRequest,
                    format!("a chunk carries at most {ARTIFACT_CHUNK} bytes"),
                ));
            }
            match on_files(artifacts, move |a| a.append(digest, upload, offset, &data)).await {
                Ok(_) => Message::Ack,
                Err(e) => refused(&e),
            }
        }
        Message::ArtifactCommit {
            digest,
            upload,
            name,
            kind,
            job,
            epoch,
            ..
        } => {
            if let Err(refusal) = check_lease(store, job, epoch).await {
                return Some(refusal);
            }
            let committed = on_files(artifacts, move |a| {
                a.commit(digest, upload, &name, kind, Some(job), now())
            })
            .await;
            match committed {
                Ok(meta) => match remote {
                    // Answered once the bytes are where they are kept.
                    Some(remote) => match offload(artifacts, remote, digest).await {
                        Ok(()) => Message::ArtifactInfo(Some(meta)),
                        Err(e) => error(ErrorCode::Unavailable, e),
                    },
                    None => Message::ArtifactInfo(Some(meta)),
                },
                Err(e) => refused(&e),
            }
        }
        Message::ArtifactRead {
            digest,
            offset,
            len,
        } => match on_files(artifacts, move |a| a.read(digest, offset, len as usize)).await {
            Ok((data, size)) => Message::ArtifactData { data, size },
            Err(ArtifactError::NotFound(_)) if remote.is_some() => {
                read_remote(artifacts, remote, digest, offset, len).await
            }
            Err(e) => refused(&e),
        },
        Message::CheckpointSaved {
            job,
            epoch,
            step,
            digest,
            ..
        } => {
            if let Err(refusal) = check_lease(store, job, epoch).await {
                return Some(refusal);
            }
            let pointer = CheckpointPointer { step, digest };
            match on_files(artifacts, move |a| a.set_checkpoint(job, pointer)).await {
                Ok(()) => Message::Ack,
                Err(e) => refused(&e),
            }
        }
        Message::CheckpointQuery { job, epoch, .. } => {
            if let Err(refusal) = check_lease(store, job, epoch).await {
                return Some(refusal);
            }
            match on_files(artifacts, move |a| a.checkpoint(job)).await {
                Ok(p) => Message::CheckpointAt(p.map(|p| (p.step, p.digest))),
                Err(e) => refused(&e),
            }
        }
        Message::ResolveModel { reference } => {
            let reference: ModelRef = match reference.parse() {
                Ok(r) => r,
                Err(never) => match never {},
            };
            match registry(store).await {
                Ok(registry) => match registry.resolve(&reference) {
                    Ok(version) => Message::ModelFound(version.clone()),
                    Err(why) => error(ErrorCode::NotFound, why),
                },
                Err(e) => error(ErrorCode::Unavailable, e.to_string()),
            }
        }
        _ => return None,
    };
    Some(answer)
}

/// Bytes of an artifact kept in object storage.
async fn read_remote(
    artifacts: &ArtifactStore,
    remote: Option<&RemoteBlobs>,
    digest: Digest,
    offset: u64,
    len: u32,
) -> Message {
    let meta = match on_files(artifacts, move |a| a.stat(digest)).await {
        Ok(Some(meta)) => meta,
        Ok(None) => return refused(&ArtifactError::NotFound(digest)),
        Err(e) => return refused(&e),
    };
    let Some(remote) = remote else {
        return refused(&ArtifactError::NotFound(digest));
    };
    let len = (len as usize).min(ARTIFACT_CHUNK);
    match remote.read(digest, offset, len, meta.size).await {
        Ok(data) => Message::ArtifactData {
            data,
            size: meta.size,
        },
        Err(e) => error(ErrorCode::Unavailable, e.to_string()),
    }
}

/// The model registry as it stands: read off the succeeded train, distill and evaluate jobs.
pub(crate) async fn registry(store: &Arc<dyn Store>) -> Result<Registry, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut jobs = Vec::new();
        for job_type in [JobType::Train, JobType::Distill, JobType::Evaluate] {
            let mut before = None;
            loop {
                let page = store.list(ListQuery {
                    state: Some(JobState::Succeeded),
                    job_type: Some(job_type),
                    before,
                    limit: 1000,
                    worker: None,
                })?;
                jobs.extend(page.jobs);
                match page.next_before {
                    Some(next) => before = Some(next),
                    None => break,
                }
            }
        }
        debug_assert!(jobs.iter().all(|j| matches!(
            j.spec.params,
            JobParams::Train(_) | JobParams::Distill(_) | JobParams::Evaluate(_)
        )));
        Ok(Registry::from_jobs(&jobs))
    })
    .await
    .unwrap_or_else(|e| {
        Err(nexa_runtime::StorageFault::new(
            nexa_runtime::FaultKind::Unavailable,
            format!("registry task failed: {e}"),
        )
        .into())
    })
}

/// The artifacts a job names: `nexa://artifacts/…` URIs anywhere in its params, its result's
/// artifacts or its result document.
fn named_by(job: &nexa_runtime::Job, into: &mut std::collections::HashSet<Digest>) {
    fn walk(value: &serde_json::Value, into: &mut std::collections::HashSet<Digest>) {
        match value {
            serde_json::Value::String(s) => {
                if let Some(Ok(digest)) = nexa_runtime::parse_artifact_uri(s) {
                    into.insert(digest);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, into)),
            serde_json::Value::Object(map) => map.values().for_each(|v| walk(v, into)),
            _ => {}
        }
    }
    walk(&job.spec.params.to_json(), into);
    if let Some(output) = &job.output {
        for uri in output.artifacts.values() {
            walk(&serde_json::Value::String(uri.clone()), into);
        }
        if let Some(document) = output
            .result_json
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
        {
            walk(&document, into);
        }
    }
}

/// Collects the artifacts of deleted jobs that no job uses any more: for every job with a
/// folder in the artifact store that the job store no longer has, the artifacts it made are
/// removed (here and in object storage) unless a job still there made the same bytes or
/// names them (a train job's `dataset_uri`, an evaluation's model); then its folder goes.
/// Answers how many artifacts were removed.
///
/// Safe to run again after a crash part-way: the folders of deleted jobs are removed last.
/// A job submitted while it runs that names an artifact being removed finds it gone and
/// fails as invalid input.
pub(crate) async fn collect(
    store: &Arc<dyn Store>,
    artifacts: &ArtifactStore,
    remote: Option<&RemoteBlobs>,
) -> Result<usize, String> {
    use std::collections::HashSet;
    let with_folders = on_files(artifacts, |a| a.jobs())
        .await
        .map_err(|e| e.to_string())?;
    let (dead, live) = blocking(store, move |s| {
        let (mut dead, mut live) = (Vec::new(), Vec::new());
        for job in with_folders {
            match s.get(job) {
                Ok(_) => live.push(job),
                Err(StoreError::NotFound(_)) => dead.push(job),
                Err(e) => return Err(e),
            }
        }
        Ok((dead, live))
    })
    .await
    .map_err(|e| e.to_string())?;
    if dead.is_empty() {
        return Ok(0);
    }
    let (dead_jobs, live_jobs) = (dead.clone(), live);
    let (candidates, mut kept) = on_files(artifacts, move |a| {
        let (mut candidates, mut kept) = (HashSet::new(), HashSet::new());
        for job in dead_jobs {
            candidates.extend(a.made_by(job)?);
        }
        for job in live_jobs {
            kept.extend(a.made_by(job)?);
        }
        Ok((candidates, kept))
    })
    .await
    .map_err(|e| e.to_string())?;
    if !candidates.iter().all(|d| kept.contains(d)) {
        let mut before = None;
        loop {
            let query = ListQuery {
                before,
                limit: 1000,
                ..ListQuery::default()
            };
            let page = blocking(store, move |s| s.list(query))
                .await
                .map_err(|e| e.to_string())?;
            for job in &page.jobs {
                named_by(job, &mut kept);
            }
            match page.next_before {
                Some(b) => before = Some(b),
                None => break,
            }
        }
    }
    let unused: Vec<Digest> = candidates.difference(&kept).copied().collect();
    for &digest in &unused {
        on_files(artifacts, move |a| a.remove(digest))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(remote) = remote {
            remote.delete(digest).await.map_err(|e| e.to_string())?;
        }
    }
    on_files(artifacts, move |a| {
        dead.into_iter().try_for_each(|job| a.forget_job(job))
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(unused.len())
}
