//! Reading inputs from object storage: `s3://`, `gs://`, `az://` and `http(s)://` URIs, through
//! the `object_store` crate, into a local cache.
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

use futures_util::StreamExt;
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
                "no S3 credentials are configured on this worker: set AWS_ACCESS_KEY_ID and \
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
            "no Google Cloud credentials are configured on this worker: set \
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
            "no Azure credentials are configured on this worker: set AZURE_STORAGE_ACCOUNT_NAME \
             and AZURE_STORAGE_ACCOUNT_KEY (or a SAS key)",
        ),
        _ => None,
    }
}

/// Downloads the object `uri` names into `cache` (unless the same version is there already)
/// and returns the local file, named like the object.
pub async fn fetch_remote(uri: &str, cache: &Path) -> Result<PathBuf, RemoteError> {
    let url = url::Url::parse(uri)
        .map_err(|e| RemoteError::new(uri, format!("not a valid URL: {e}"), true))?;
    if let Some(why) = missing_credentials(url.scheme()) {
        return Err(RemoteError::new(uri, why, true));
    }
    let (store, path): (Box<dyn ObjectStore>, ObjectPath) =
        parse_url_opts(&url, options_from_env()).map_err(|e| {
            RemoteError::new(
                uri,
                format!("no object store for it is configured: {e}"),
                true,
            )
        })?;
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
