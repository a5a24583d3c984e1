//! Errors as the API answers them: a status, a code, a message and, for a bad value, the
//! field it is in.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use nexa_runtime::{StoreError, TransitionError};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Machine-readable: `bad_request`, `validation_error`, `unauthorized`, `forbidden`,
    /// `not_found`, `method_not_allowed`, `conflict`, `stale_lease`, `payload_too_large`,
    /// `unavailable`, `internal_error`.
    pub(crate) code: &'static str,
    /// For people.
    pub(crate) message: String,
    /// The field of the request the problem is in, as a path (`params.num_samples`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) field: Option<String>,
}

/// An answer other than success.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A query parameter that cannot be used.
    pub(crate) fn bad_param(field: &str, reason: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: format!("{field}: {reason}"),
            field: Some(field.to_owned()),
        }
    }

    /// A well-formed request with a bad value in `field`.
    pub(crate) fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        let field = field.into();
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_error",
            message: format!("{field}: {reason}"),
            field: Some(field),
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this path does not take that method; see /docs",
        )
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// An error actix made, for its status.
    pub(crate) fn from_status(status: StatusCode, message: String) -> Self {
        let code = match status.as_u16() {
            400 => "bad_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            405 => "method_not_allowed",
            413 => return Self::too_large(super::MAX_BODY),
            415 => "unsupported_media_type",
            422 => "validation_error",
            502 => "bad_gateway",
            503 => "unavailable",
            s if s < 500 => "bad_request",
            _ => "internal_error",
        };
        Self::new(status, code, message)
    }

    /// This error as one of a list's items: its field under `prefix` (`jobs[3].params.seed`),
    /// its message led by it.
    pub(crate) fn within(mut self, prefix: &str) -> Self {
        self.field = Some(match self.field.take() {
            Some(field) => format!("{prefix}.{field}"),
            None => prefix.to_owned(),
        });
        self.message = format!("{prefix}: {}", self.message);
        self
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut answer = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            answer.insert_header(("WWW-Authenticate", "Bearer"));
        }
        answer.json(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                field: self.field.clone(),
            },
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::InvalidSpec(spec) => Self::invalid(spec.field, spec.reason),
            StoreError::NotFound(_) | StoreError::UnknownWorker(_) => Self::not_found(message),
            StoreError::IdempotencyConflict { .. }
            | StoreError::Kept { .. }
            | StoreError::WorkerDraining(_)
            | StoreError::LogGap { .. } => Self::new(StatusCode::CONFLICT, "conflict", message),
            StoreError::Transition(
                TransitionError::StaleEpoch { .. } | TransitionError::NotLeaseHolder { .. },
            ) => Self::new(StatusCode::CONFLICT, "stale_lease", message),
            StoreError::Transition(TransitionError::Illegal { .. }) => {
                Self::new(StatusCode::CONFLICT, "conflict", message)
            }
            StoreError::Transition(TransitionError::InvalidProgress(p)) => {
                Self::invalid("progress", format!("{p} is outside 0.0 to 1.0"))
            }
            StoreError::Transition(TransitionError::Inconsistent { .. }) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
            }
            StoreError::InvalidWorker(w) => Self::invalid("worker_id", w),
            StoreError::InvalidQuery(q) => Self::bad_request(q),
            StoreError::Batch { source, .. } => (*source).into(),
            // The store's own failures are not the caller's: try again later.
            StoreError::Storage(_) => Self::unavailable(message),
        }
    }
}

impl From<nexa_actors::PlaneError> for ApiError {
    fn from(e: nexa_actors::PlaneError) -> Self {
        use nexa_actors::PlaneError;
        match e {
            PlaneError::NotFound(_) => Self::not_found(e.to_string()),
            PlaneError::Invalid(e) | PlaneError::Conflict(e) => e.into(),
            // The plane's own troubles are not the caller's: try again later.
            e => Self::unavailable(e.to_string()),
        }
    }
}
