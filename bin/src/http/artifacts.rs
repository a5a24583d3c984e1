//! `/api/artifacts` and `/api/models`: the files jobs made, and the model registry read off
//! the jobs, with each version's lineage back to the data it learned from.

use actix_web::HttpResponse;
use actix_web::http::header::{ContentDisposition, DispositionParam, DispositionType};
use actix_web::web::{self, Json};
use nexa_runtime::{
    ArtifactKind, ArtifactMeta, Digest, ModelVersion, Registry, parse_artifact_uri,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::State;
use super::api::{self, MAX_SAFE};
use super::auth::Reader;
use super::error::{ApiError, ErrorBody};
use super::responses::{
    ArtifactStoreUnavailable, NoSuchArtifact, NoSuchJob, ReadErrors, Unauthorized,
};

/// An artifact: a file a job made, kept by the control plane.
#[derive(Serialize, ToSchema)]
pub(crate) struct ArtifactBody {
    /// How jobs and users refer to it, e.g. as a `dataset_uri`.
    uri: String,
    /// The SHA-256 of its bytes: its address.
    sha256: String,
    /// The file name it goes by.
    name: String,
    /// `dataset`, `model`, `checkpoint`, `report` or `file`.
    kind: String,
    /// Bytes.
    size: u64,
    /// The job that made it.
    job_id: Option<String>,
    /// When it was first stored (RFC 3339).
    created_at: String,
    /// For a checkpoint: the training steps done.
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<u64>,
    /// Where to download it.
    download_url: String,
}

fn artifact_body(m: &ArtifactMeta) -> ArtifactBody {
    ArtifactBody {
        uri: m.uri(),
        sha256: m.digest.to_string(),
        name: m.name.clone(),
        kind: m.kind.as_str().to_owned(),
        size: m.size.min(MAX_SAFE),
        job_id: m.job.map(|j| j.to_string()),
        created_at: api::time(m.created_at),
        step: match m.kind {
            ArtifactKind::Checkpoint { step } => Some(step),
            _ => None,
        },
        download_url: format!("/api/artifacts/{}/content", m.digest),
    }
}

/// A job's artifacts.
#[derive(Serialize, ToSchema)]
pub(crate) struct ArtifactsBody {
    artifacts: Vec<ArtifactBody>,
}

/// The digest in a path: a URI or 64 hex digits; anything else names nothing.
fn path_digest(s: &str) -> Result<Digest, ApiError> {
    let parsed = match parse_artifact_uri(s) {
        Some(uri) => uri.ok(),
        None => s.parse().ok(),
    };
    parsed.ok_or_else(|| {
        ApiError::not_found(format!(
            "no artifact {s:?} (artifacts are named by 64 hex digits, as in nexa://artifacts/<sha256>)"
        ))
    })
}

async fn stat(state: &State, digest: Digest) -> Result<ArtifactMeta, ApiError> {
    let store = state.plane.artifacts().clone();
    tokio::task::spawn_blocking(move || store.stat(digest))
        .await
        .map_err(|e| ApiError::unavailable(format!("artifact lookup failed: {e}")))?
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .ok_or_else(|| ApiError::not_found(format!("no artifact {digest}")))
}

/// What is known of an artifact.
#[utoipa::path(
    get, path = "/api/artifacts/{sha256}", tag = "artifacts",
    params(("sha256" = String, Path, description = "The artifact's SHA-256 (64 hex digits)")),
    responses(
        (status = 200, description = "The artifact", body = ArtifactBody),
        Unauthorized, NoSuchArtifact, ArtifactStoreUnavailable,
    )
)]
pub(crate) async fn get(
    _: Reader,
    state: web::Data<State>,
    digest: web::Path<String>,
) -> Result<Json<ArtifactBody>, ApiError> {
    let meta = stat(&state, path_digest(&digest)?).await?;
    Ok(Json(artifact_body(&meta)))
}

/// An artifact's bytes.
#[utoipa::path(
    get, path = "/api/artifacts/{sha256}/content", tag = "artifacts",
    params(("sha256" = String, Path, description = "The artifact's SHA-256 (64 hex digits)")),
    responses(
        (status = 200, description = "The bytes", content_type = "application/octet-stream"),
        Unauthorized, NoSuchArtifact, ArtifactStoreUnavailable,
    )
)]
pub(crate) async fn content(
    _: Reader,
    state: web::Data<State>,
    digest: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let digest = path_digest(&digest)?;
    let (meta, stream) = state
        .plane
        .artifact_bytes(digest)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read artifact {digest}: {e}")))?
        .ok_or_else(|| ApiError::not_found(format!("no artifact {digest}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters: vec![DispositionParam::Filename(meta.name.clone())],
        })
        .insert_header(("ETag", format!("\"{}\"", meta.digest)))
        .no_chunking(meta.size)
        .streaming(stream))
}

/// The artifacts a job made.
#[utoipa::path(
    get, path = "/api/jobs/{id}/artifacts", tag = "artifacts",
    params(("id" = String, Path, description = "Job id, like job-7")),
    responses(
        (status = 200, description = "The job's artifacts, by name", body = ArtifactsBody),
        Unauthorized, NoSuchJob, ArtifactStoreUnavailable,
    )
)]
pub(crate) async fn of_job(
    _: Reader,
    state: web::Data<State>,
    id: web::Path<String>,
) -> Result<Json<ArtifactsBody>, ApiError> {
    let job = api::path_job(&id)?;
    state.plane.get(job).await?;
    let store = state.plane.artifacts().clone();
    let metas = tokio::task::spawn_blocking(move || store.job_artifacts(job))
        .await
        .map_err(|e| ApiError::unavailable(format!("artifact listing failed: {e}")))?
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(ArtifactsBody {
        artifacts: metas.iter().map(artifact_body).collect(),
    }))
}

/// One version of a registered model, with its lineage.
#[derive(Serialize, ToSchema)]
pub(crate) struct ModelVersionBody {
    name: String,
    /// From 1, in the order the jobs that made the versions finished.
    version: u32,
    /// The train or distill job that made it.
    job_id: String,
    /// `train` or `distill`.
    made_by: String,
    /// Its weights (safetensors).
    uri: String,
    /// The dataset it learned from, as the job was given it.
    dataset_uri: String,
    /// The teacher it was distilled from, as the job named it.
    teacher: Option<String>,
    /// The job's metrics.
    #[schema(value_type = Object)]
    metrics: std::collections::BTreeMap<String, f64>,
    created_at: String,
    /// Succeeded evaluate jobs that scored this very file, oldest first.
    evaluations: Vec<String>,
    /// The dataset's artifact, when `dataset_uri` is one.
    dataset: Option<ArtifactBody>,
    /// The job that made that dataset.
    generated_by: Option<String>,
    /// The pipeline run and step that made this version, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline: Option<super::api::PipelineLinkBody>,
}

/// A registered model.
#[derive(Serialize, ToSchema)]
pub(crate) struct ModelBody {
    name: String,
    /// Every version, oldest first.
    versions: Vec<ModelVersionBody>,
}

/// A model in the list: its name, how many versions, and the latest.
#[derive(Serialize, ToSchema)]
pub(crate) struct ModelSummaryBody {
    name: String,
    versions: usize,
    latest: ModelVersionBody,
}

/// Every registered model.
#[derive(Serialize, ToSchema)]
pub(crate) struct ModelsBody {
    models: Vec<ModelSummaryBody>,
}

async fn version_body(state: &State, v: &ModelVersion) -> ModelVersionBody {
    let dataset = match parse_artifact_uri(&v.dataset_uri) {
        Some(Ok(digest)) => stat(state, digest).await.ok(),
        _ => None,
    };
    let pipeline = match state.plane.get(v.job).await {
        Ok(job) => super::jobs::pipeline_link(state, &job).await,
        Err(_) => None,
    };
    ModelVersionBody {
        name: v.name.clone(),
        version: v.version,
        job_id: v.job.to_string(),
        made_by: v.made_by.as_str().to_owned(),
        uri: v.uri.clone(),
        dataset_uri: v.dataset_uri.clone(),
        teacher: v.teacher.clone(),
        metrics: v.metrics.clone(),
        created_at: api::time(v.created_at),
        evaluations: v.evaluations.iter().map(ToString::to_string).collect(),
        generated_by: dataset.as_ref().and_then(|d| d.job.map(|j| j.to_string())),
        dataset: dataset.as_ref().map(artifact_body),
        pipeline,
    }
}

async fn registry(state: &State) -> Result<Registry, ApiError> {
    Ok(state.plane.registry().await?)
}

/// Every registered model, by name.
#[utoipa::path(
    get, path = "/api/models", tag = "models",
    responses(
        (status = 200, description = "The models", body = ModelsBody),
        ReadErrors,
    )
)]
pub(crate) async fn models(
    _: Reader,
    state: web::Data<State>,
) -> Result<Json<ModelsBody>, ApiError> {
    let registry = registry(&state).await?;
    let mut models = Vec::new();
    for (name, versions) in registry.models() {
        let latest = versions.last().expect("a registered model has a version");
        models.push(ModelSummaryBody {
            name: name.to_owned(),
            versions: versions.len(),
            latest: version_body(&state, latest).await,
        });
    }
    Ok(Json(ModelsBody { models }))
}

/// A registered model with every version and its lineage.
#[utoipa::path(
    get, path = "/api/models/{name}", tag = "models",
    params(("name" = String, Path, description = "The model's name (URL-encoded)")),
    responses(
        (status = 200, description = "The model", body = ModelBody),
        ReadErrors,
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
pub(crate) async fn model(
    _: Reader,
    state: web::Data<State>,
    name: web::Path<String>,
) -> Result<Json<ModelBody>, ApiError> {
    let registry = registry(&state).await?;
    let versions = registry.versions(&name);
    if versions.is_empty() {
        let reference = nexa_runtime::ModelRef {
            name: name.clone(),
            version: None,
        };
        let why = registry.resolve(&reference).err().unwrap_or_default();
        return Err(ApiError::not_found(why));
    }
    let mut shown = Vec::with_capacity(versions.len());
    for v in versions {
        shown.push(version_body(&state, v).await);
    }
    Ok(Json(ModelBody {
        name: name.into_inner(),
        versions: shown,
    }))
}
