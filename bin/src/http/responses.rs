//! The error answers operations share, written once for the OpenAPI document.
//!
//! Each row is a type naming one status and what it means; each set names the rows a kind
//! of call always has. An operation's `responses(...)` lists its successes, then the sets
//! and rows that apply, then the rows only it has:
//!
//! ```text
//! responses(
//!     (status = 200, description = "The job", body = JobBody),
//!     ReadErrors, NoSuchJob,
//! )
//! ```
//!
//! Every row answers an [`ErrorBody`] as JSON.

use std::collections::BTreeMap;

use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, response::Response};
use utoipa::{IntoResponses, ToSchema};

use super::error::ErrorBody;

/// An [`ErrorBody`] answer, described.
fn error(description: &str) -> RefOr<Response> {
    let body = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(ErrorBody::name())))
        .build();
    ResponseBuilder::new()
        .description(description)
        .content("application/json", body)
        .build()
        .into()
}

/// Types for single rows: `Name = status, "description";`.
macro_rules! rows {
    ($($(#[$doc:meta])* $name:ident = $status:literal, $description:literal;)*) => {$(
        $(#[$doc])*
        pub(crate) struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                BTreeMap::from([(stringify!($status).to_owned(), error($description))])
            }
        }
    )*};
}

/// Types for sets of rows: `Name = Row, Row, …;`.
macro_rules! sets {
    ($($(#[$doc:meta])* $name:ident = $($row:ident),+;)*) => {$(
        $(#[$doc])*
        pub(crate) struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                let mut all = BTreeMap::new();
                $(all.extend($row::responses());)+
                all
            }
        }
    )*};
}

rows! {
    /// 400: the body is not JSON of the right shape.
    Malformed = 400, "Malformed request";
    /// 400: a query parameter is out of range or of the wrong type.
    BadQuery = 400, "A bad query parameter";
    /// 401: every call when tokens are configured.
    Unauthorized = 401, "Token missing or unknown";
    /// 403: a change asked with a read-only token.
    ReadOnly = 403, "Read-only token";
    /// 403: a worker's call made without a worker credential or with another's session.
    NotThisWorker = 403, "Not a worker credential, or not this worker's session";
    /// 413: a body over the limit.
    TooLarge = 413, "Body too large";
    /// 422: a field whose value is refused, named in the answer.
    Invalid = 422, "Invalid value";
    /// 503: the store cannot be read or written.
    StoreUnavailable = 503, "Store unavailable";
    /// 503: the artifact store cannot be read.
    ArtifactStoreUnavailable = 503, "Artifact store unavailable";

    /// 404: the job in the path.
    NoSuchJob = 404, "No such job";
    /// 404: the worker in the path or query.
    WorkerNotRegistered = 404, "Worker not registered";
    /// 404: the artifact in the path.
    NoSuchArtifact = 404, "No such artifact";

    /// 400: the pipeline run in the path.
    NotARunId = 400, "Not a run id";
    /// 404: the pipeline run in the path.
    NoSuchRun = 404, "No such run";
    /// 503: a pipeline run that cannot be stored.
    RunNotKept = 503, "The run cannot be kept";

    /// 404: no deploy job serves the endpoint in the path (`/api/endpoints/{name}`).
    NoDeployJob = 404, "No deploy job serves that name";
    /// 404: no endpoint by the name in the path, for a call to the model it serves.
    NoSuchEndpoint = 404, "No such endpoint";
    /// 502: every replica of the endpoint failed to answer.
    NoReplicaAnswered = 502, "No replica answered";
    /// 503: no replica of the endpoint is serving yet.
    NoReplicaReady = 503, "No replica is ready yet";
}

sets! {
    /// A user's read of the store: 401, 503.
    ReadErrors = Unauthorized, StoreUnavailable;
    /// A user's change with a JSON body: 400, 401, 403 (read-only token), 413, 422, 503.
    WriteErrors = Malformed, Unauthorized, ReadOnly, TooLarge, Invalid, StoreUnavailable;
    /// A worker's call for itself with a JSON body: 400, 401, 403 (not this worker), 413,
    /// 422, 503.
    WorkerErrors = Malformed, Unauthorized, NotThisWorker, TooLarge, Invalid, StoreUnavailable;
}
