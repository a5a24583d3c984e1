//! Object storage through the `object_store` crate: workers read inputs from `s3://`, `gs://`,
//! `az://` and `http(s)://` URIs into a local cache ([`fetch_remote`]), and a control plane can
//! keep its artifacts' bytes in a bucket ([`RemoteBlobs`]).
//!
//! Credentials, endpoints and regions come from the usual environment of each service (for
//! S3: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` for an
//! S3-compatible server, `AWS_ALLOW_HTTP=true` for one without TLS). A download lands under a
//! temporary name and is renamed when whole; a later fetch of the same object (same URI, same
//! ETag and size) reads the cached copy.
//!
//! A URI nobody can read — no credentials, no such bucket or key, a scheme with nothing
//! configured — is a [`RemoteError`] for which [`RemoteError::is_invalid_input`] holds, so a
//! job fails at once with the URI named rather than retrying; a network or server failure is
//! not, and a retry may succeed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use nexa_runtime::Digest;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, parse_url_opts};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {uri}: {reason}")]
pub struct RemoteError {
    /// The URI asked for.
    pub uri: String,
    /// What went wrong, for people.
    pub reason: String,
    invalid_input: bool,
}

impl RemoteError {
    fn new(uri: &str, reason: impl Into<String>, invalid_input: bool) -> Self {
        Self {
            uri: uri.to_owned(),
            reason: reason.into(),
            invalid_input,
        }
    }

    /// A failure of this machine's files while moving bytes.
    pub fn local(reason: impl Into<String>) -> Self {
        Self::new("(local file)", reason, false)
    }

    /// Whether the URI itself cannot work here (retrying will not help).
    pub fn is_invalid_input(&self) -> bool {
        self.invalid_input
    }
}

/// The schemes read through object storage.
pub const REMOTE_SCHEMES: [&str; 6] = ["s3", "s3a", "gs", "az", "http", "https"];

/// Whether `uri` names an object in object storage.
pub fn is_remote(uri: &str) -> bool {
    uri.split_once("://")
        .is_some_and(|(scheme, _)| REMOTE_SCHEMES.contains(&scheme))
}

/// The service's settings from the environment, as `object_store` names them: every
/// `AWS_*`, `GOOGLE_*` and `AZURE_*` variable, lower-cased.
fn options_from_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

fn classify(uri: &str, e: object_store::Error) -> RemoteError {
    use object_store::Error as E;
    let invalid = matches!(
        e,
        E::NotFound { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::NotSupported { .. }
            | E::NotImplemented
            | E::UnknownConfigurationKey { .. }
            | E::InvalidPath { .. }
    ) || {
        // A bucket that does not exist, credentials that are missing or refused: the server
        // says so in the message of a generic error.
        let text = e.to_string().to_ascii_lowercase();
        [
            "nosuchbucket",
            "accessdenied",
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "credential",
            "404 not found",
            "403 forbidden",
        ]
        .iter()
        .any(|needle| text.contains(needle))
    };
    let reason = match &e {
        E::NotFound { .. } => "no such object (check the bucket and key)".to_owned(),
        _ => e.to_string(),
    };
    RemoteError::new(uri, reason, invalid)
}

/// Why the environment cannot sign requests to the service of `scheme`, if it cannot. Without
/// this check a store with no credentials would ask a cloud's instance-metadata address, which
/// off that cloud only times out after many seconds.
fn missing_credentials(scheme: &str) -> Option<&'static str> {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    match scheme {
        "s3" | "s3a" => {
            let keys = set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY");
            let other = [
                "AWS_SKIP_SIGNATURE",
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_IMDSV1_FALLBACK",
            ]
            .iter()
            .any(|v| set(v));
            (!keys && !other).then_some(
                "no S3 credentials are configured on this machine: set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an S3-compatible server, \
                 AWS_REGION for the bucket's region), or AWS_SKIP_SIGNATURE=true for a public \
                 bucket",
            )
        }
        "gs" => (![
            "GOOGLE_SERVICE_ACCOUNT",
            "GOOGLE_SERVICE_ACCOUNT_PATH",
            "GOOGLE_SERVICE_ACCOUNT_KEY",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_SKIP_SIGNATURE",
        ]
        .iter()
        .any(|v| set(v)))
        .then_some(
            "no Google Cloud credentials are configured on this machine: set \
             GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT_KEY)",
        ),
        "az" => (![
            "AZURE_STORAGE_ACCOUNT_KEY",
            "AZURE_STORAGE_SAS_KEY",
            "AZURE_CLIENT_SECRET",
            "AZURE_STORAGE_TOKEN",
            "AZURE_SKIP_SIGNATURE",
            "AZURE_STORAGE_USE_EMULATOR",
        ]
        .iter()
        .any(|v| set(v)))
        .then_some(
            "no Azure credentials are configured on this machine: set AZURE_STORAGE_ACCOUNT_NAME \
             and AZURE_STORAGE_ACCOUNT_KEY (or a SAS key)",
        ),
        _ => None,
    }
}

/// Downloads the object `uri` names into `cache` (unless the same version is there already)
/// and returns the local file, named like the object.
pub async fn fetch_remote(uri: &str, cache: &Path) -> Result<PathBuf, RemoteError> {
    let (store, path) = open_store(uri)?;
    let name = path
        .filename()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| RemoteError::new(uri, "names a folder, not an object", true))?
        .to_owned();
    let head = store.head(&path).await.map_err(|e| classify(uri, e))?;
    // The cached copy of this version of the object: keyed by the URI and what the store
    // says identifies its contents.
    let version = format!(
        "{uri}\n{}\n{}",
        head.e_tag.as_deref().unwrap_or(""),
        head.size
    );
    let key: String = Sha256::digest(version.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = cache.join("remote").join(key);
    let target = dir.join(&name);
    if tokio::fs::metadata(&target)
        .await
        .is_ok_and(|m| m.len() == head.size)
    {
        return Ok(target);
    }
    let local = |e: std::io::Error| RemoteError::new(uri, format!("local cache: {e}"), false);
    tokio::fs::create_dir_all(&dir).await.map_err(local)?;
    // A name of its own per download, so two jobs fetching the same object at once do not
    // write into one file.
    static DOWNLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let part = dir.join(format!(".{name}.{}.{n}.part", std::process::id()));
    let mut file = tokio::fs::File::create(&part).await.map_err(local)?;
    let mut stream = store
        .get(&path)
        .await
        .map_err(|e| classify(uri, e))?
        .into_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| classify(uri, e))?;
        size += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(local)?;
    }
    file.flush().await.map_err(local)?;
    drop(file);
    if size != head.size {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(RemoteError::new(
            uri,
            format!(
                "got {size} bytes of {}; it changed while being read",
                head.size
            ),
            false,
        ));
    }
    tokio::fs::rename(&part, &target).await.map_err(local)?;
    Ok(target)
}

/// Opens the object store `uri` names (its scheme, bucket and prefix), with the service's
/// settings from the environment; refused when no credentials are configured for it.
fn open_store(uri: &str) -> Result<(Box<dyn ObjectStore>, ObjectPath), RemoteError> {
    let url = url::Url::parse(uri)
        .map_err(|e| RemoteError::new(uri, format!("not a valid URL: {e}"), true))?;
    if let Some(why) = missing_credentials(url.scheme()) {
        return Err(RemoteError::new(uri, why, true));
    }
    parse_url_opts(&url, options_from_env()).map_err(|e| {
        RemoteError::new(
            uri,
            format!("no object store for it is configured: {e}"),
            true,
        )
    })
}

/// A control plane's artifact bytes in object storage, `<prefix>/<sha256>` in a bucket (their
/// metadata stays in the data folder). Bytes are uploaded only once whole and checked against
/// their digest, so an object under a digest's name always holds exactly those bytes.
#[derive(Clone)]
pub struct RemoteBlobs {
    uri: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

impl std::fmt::Debug for RemoteBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBlobs")
            .field("uri", &self.uri)
            .finish()
    }
}

/// A stream of an artifact's bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes, RemoteError>>;

impl RemoteBlobs {
    /// The bucket and prefix `uri` names, e.g. `s3://bucket/nexa/artifacts`. Lists the
    /// prefix once, so a wrong bucket or refused credentials show at start.
    pub async fn open(uri: &str) -> Result<Self, RemoteError> {
        let (store, prefix) = open_store(uri)?;
        let store: Arc<dyn ObjectStore> = store.into();
        if let Some(Err(e)) = store.list(Some(&prefix)).next().await {
            return Err(classify(uri, e));
        }
        Ok(Self {
            uri: uri.trim_end_matches('/').to_owned(),
            store,
            prefix,
        })
    }

    /// Where the bytes go, as a URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn path(&self, digest: Digest) -> ObjectPath {
        self.prefix.child(digest.to_string())
    }

    fn failed(&self, digest: Digest, e: impl std::fmt::Display) -> RemoteError {
        RemoteError::new(&format!("{}/{digest}", self.uri), e.to_string(), false)
    }

    /// Uploads the file at `file` as the bytes of `digest` (in parts when it is large).
    pub async fn put_file(&self, digest: Digest, file: &Path) -> Result<(), RemoteError> {
        let mut reader = tokio::fs::File::open(file)
            .await
            .map_err(|e| self.failed(digest, format!("{}: {e}", file.display())))?;
        let mut writer = BufWriter::new(self.store.clone(), self.path(digest));
        if let Err(e) = tokio::io::copy(&mut reader, &mut writer).await {
            let _ = writer.abort().await;
            return Err(self.failed(digest, e));
        }
        writer.shutdown().await.map_err(|e| self.failed(digest, e))
    }

    /// Removes the bytes of `digest`; bytes that are not there are no error.
    pub async fn delete(&self, digest: Digest) -> Result<(), RemoteError> {
        match self.store.delete(&self.path(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed(digest, e)),
        }
    }

    /// Up to `len` bytes of `digest` (whose size is `size`) from `offset`.
    pub async fn read(
        &self,
        digest: Digest,
        offset: u64,
        len: usize,
        size: u64,
    ) -> Result<Vec<u8>, RemoteError> {
        let end = offset.saturating_add(len as u64).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let bytes = self
            .store
            .get_range(&self.path(digest), offset..end)
            .await
            .map_err(|e| classify(&format!("{}/{digest}", self.uri), e))?;
        Ok(bytes.to_vec())
    }

    /// The bytes of `digest`, as they arrive.
    pub async fn stream(&self, digest: Digest) -> Result<ByteStream, RemoteError> {
        let uri = format!("{}/{digest}", self.uri);
        let got = self
            .store
            .get(&self.path(digest))
            .await
            .map_err(|e| classify(&uri, e))?;
        Ok(got
            .into_stream()
            .map(move |chunk| chunk.map_err(|e| classify(&uri, e)))
            .boxed())
    }
}
