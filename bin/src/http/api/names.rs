//! The names the API takes as text — job types, failure classes, job states, job ids, lease
//! tokens — as OpenAPI schemas, and the lists of them that error messages quote.
//!
//! The job types and failure classes come from the runtime's own lists (`JobType::ALL`,
//! `FailureClass::ALL`), so the document and the messages cannot drift from what the server
//! accepts.

use std::borrow::Cow;

use nexa_runtime::{FailureClass, JobState, JobType};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// `generate, audit, distill, train, evaluate, deploy`: every job type, for a message.
pub(crate) fn job_type_list() -> String {
    JobType::ALL.map(JobType::as_str).join(", ")
}

/// `invalid_input, stage_error, …`: every failure class, for a message.
pub(crate) fn failure_class_list() -> String {
    FailureClass::ALL.map(FailureClass::as_str).join(", ")
}

/// A string schema of the given values.
fn one_of(description: &str, values: impl IntoIterator<Item = &'static str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(values))
        .into()
}

/// A string schema matching `pattern`.
fn matching(description: &str, pattern: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(Some(pattern))
        .into()
}

/// A job type, one of [`JobType::ALL`] by its name.
pub(crate) struct JobTypeName;

impl PartialSchema for JobTypeName {
    fn schema() -> RefOr<Schema> {
        one_of("A job type.", JobType::ALL.map(JobType::as_str))
    }
}

impl ToSchema for JobTypeName {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("JobTypeName")
    }
}

/// Whose fault a failure was: one of [`FailureClass::ALL`] by its name.
pub(crate) struct FailureClassName;

impl PartialSchema for FailureClassName {
    fn schema() -> RefOr<Schema> {
        one_of(
            "Whose fault a failure was.",
            FailureClass::ALL.map(FailureClass::as_str),
        )
    }
}

impl ToSchema for FailureClassName {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("FailureClassName")
    }
}

/// A job id, like `job-7`.
pub(crate) struct JobIdText;

impl PartialSchema for JobIdText {
    fn schema() -> RefOr<Schema> {
        matching("A job id, like `job-7`.", "^(job-)?[0-9]{1,19}$")
    }
}

impl ToSchema for JobIdText {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("JobIdText")
    }
}

/// A lease token: 64 hex digits, as the job's assignment gave it.
pub(crate) struct LeaseTokenText;

impl PartialSchema for LeaseTokenText {
    fn schema() -> RefOr<Schema> {
        matching(
            "A lease token: 64 hex digits, as the job's assignment gave it.",
            "^[0-9a-f]{64}$",
        )
    }
}

impl ToSchema for LeaseTokenText {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("LeaseTokenText")
    }
}

/// A job state by its name.
pub(crate) fn state(s: &str) -> Result<JobState, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not a status (one of: waiting, queued, assigned, running, cancelling, succeeded, failed, cancelled)")
    })
}
