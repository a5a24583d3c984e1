//! The model registry: models by name, their versions, and what each came from.
//!
//! The registry is not kept apart from the jobs: it is read off them, so it can never
//! disagree with what ran. Every succeeded `train` job is a version of the model named by its
//! `model_id`, every succeeded `distill` job a version of its `student_model`; versions are
//! numbered from 1 in the order the jobs finished (ties by job id), so a number never
//! changes once given. A version's model file is the job's `model` artifact; its lineage is
//! the job itself (params, the dataset it read, the teacher), and its evaluations are the
//! succeeded `evaluate` jobs whose `model` artifact is the same file.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::id::JobId;
use crate::job::{Job, JobState};
use crate::params::JobParams;
use crate::spec::JobType;
use crate::time::Timestamp;

/// The artifact name under which train, distill and evaluate jobs name the model file they
/// made or read.
pub const MODEL_ARTIFACT: &str = "model";

/// One version of a registered model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    /// The model's name.
    pub name: String,
    /// From 1, in the order the jobs that made the versions finished.
    pub version: u32,
    /// The train or distill job that made it.
    pub job: JobId,
    /// Which of the two it was.
    pub made_by: JobType,
    /// Where its weights are (the job's `model` artifact).
    pub uri: String,
    /// The dataset it was trained or distilled on, as the job was given it.
    pub dataset_uri: String,
    /// The teacher, for a distilled model, as the job named it.
    pub teacher: Option<String>,
    /// The job's metrics.
    pub metrics: BTreeMap<String, f64>,
    /// When the job finished.
    pub created_at: Timestamp,
    /// The succeeded evaluate jobs that scored this very file, oldest first.
    pub evaluations: Vec<JobId>,
}

/// A reference to a registered model: `name` (its latest version) or `name:N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRef {
    /// The model's name.
    pub name: String,
    /// A version, or `None` for the latest.
    pub version: Option<u32>,
}

impl FromStr for ModelRef {
    type Err = std::convert::Infallible;

    /// `name:N` with N a positive number names version N; anything else is a name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((name, v)) = s.rsplit_once(':')
            && !name.is_empty()
            && let Ok(version) = v.parse::<u32>()
            && version > 0
            && v.bytes().all(|b| b.is_ascii_digit())
        {
            return Ok(ModelRef {
                name: name.to_owned(),
                version: Some(version),
            });
        }
        Ok(ModelRef {
            name: s.to_owned(),
            version: None,
        })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}:{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The registry read off a set of jobs: every model with its versions, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registry {
    models: BTreeMap<String, Vec<ModelVersion>>,
}

impl Registry {
    /// The registry of `jobs` (any jobs: those that made no model are passed over).
    pub fn from_jobs<'a>(jobs: impl IntoIterator<Item = &'a Job>) -> Self {
        let mut made = Vec::new();
        let mut evaluations: BTreeMap<&str, Vec<(Timestamp, JobId)>> = BTreeMap::new();
        for job in jobs {
            if job.state != JobState::Succeeded {
                continue;
            }
            let Some(uri) = job
                .output
                .as_ref()
                .and_then(|o| o.artifacts.get(MODEL_ARTIFACT))
            else {
                continue;
            };
            match &job.spec.params {
                JobParams::Train(p) => made.push((job, p.model_id.clone(), None, &p.dataset_uri)),
                JobParams::Distill(p) => made.push((
                    job,
                    p.student_model.clone(),
                    Some(p.teacher_model.clone()),
                    &p.dataset_uri,
                )),
                JobParams::Evaluate(_) => {
                    evaluations
                        .entry(uri.as_str())
                        .or_default()
                        .push((job.updated_at, job.id));
                }
                _ => {}
            }
        }
        made.sort_by_key(|(job, ..)| (job.updated_at, job.id));
        let mut models: BTreeMap<String, Vec<ModelVersion>> = BTreeMap::new();
        for (job, name, teacher, dataset_uri) in made {
            let output = job.output.as_ref().expect("checked above");
            let uri = output.artifacts[MODEL_ARTIFACT].clone();
            let mut evaluated = evaluations.get(uri.as_str()).cloned().unwrap_or_default();
            evaluated.sort();
            let versions = models.entry(name.clone()).or_default();
            versions.push(ModelVersion {
                version: versions.len() as u32 + 1,
                name,
                job: job.id,
                made_by: job.spec.job_type(),
                uri,
                dataset_uri: dataset_uri.clone(),
                teacher,
                metrics: output.metrics.clone(),
                created_at: job.updated_at,
                evaluations: evaluated.into_iter().map(|(_, id)| id).collect(),
            });
        }
        Registry { models }
    }

    /// Every model's name with its versions, oldest first, by name.
    pub fn models(&self) -> impl Iterator<Item = (&str, &[ModelVersion])> {
        self.models.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The versions of `name`, oldest first; empty when there is no such model.
    pub fn versions(&self, name: &str) -> &[ModelVersion] {
        self.models.get(name).map_or(&[], Vec::as_slice)
    }

    /// The version `reference` names, or why there is none: the message names the
    /// registered models (or the versions of the one named) so the user can fix it.
    pub fn resolve(&self, reference: &ModelRef) -> Result<&ModelVersion, String> {
        let versions = self.versions(&reference.name);
        if versions.is_empty() {
            let known: Vec<&str> = self.models.keys().map(String::as_str).take(20).collect();
            let known = if known.is_empty() {
                "no model is registered yet".to_owned()
            } else {
                format!("registered models: {}", known.join(", "))
            };
            return Err(format!(
                "model {:?} is not in the registry ({known}); a succeeded train job registers \
                 its model_id, a distill job its student_model",
                reference.name
            ));
        }
        match reference.version {
            None => Ok(versions.last().expect("not empty")),
            Some(v) => versions.get(v as usize - 1).ok_or_else(|| {
                format!(
                    "model {:?} has versions 1 to {}; there is no version {v}",
                    reference.name,
                    versions.len()
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobOutput;
    use crate::params::{DistillParams, EvaluateParams, GenerateParams, TrainParams};
    use crate::spec::JobSpec;

    fn job(id: u64, params: JobParams, finished: u64, model: Option<&str>) -> Job {
        let mut job = Job::new(JobId(id), JobSpec::new(params), true, Timestamp(0));
        job.state = JobState::Succeeded;
        job.updated_at = Timestamp(finished);
        let mut output = JobOutput::default();
        if let Some(uri) = model {
            output.artifacts.insert(MODEL_ARTIFACT.into(), uri.into());
        }
        output.metrics.insert("loss".into(), id as f64);
        job.output = Some(output);
        job
    }

    fn train(model: &str) -> JobParams {
        JobParams::Train(TrainParams::new(model, "nexa://artifacts/x"))
    }

    #[test]
    fn versions_follow_the_order_jobs_finished_in() {
        let jobs = [
            job(1, train("a"), 30, Some("u1")),
            job(2, train("a"), 20, Some("u2")),
            job(3, train("b"), 10, Some("u3")),
            job(4, train("a"), 20, Some("u4")),
            // No model artifact (a handler that made none): not a version.
            job(5, train("a"), 40, None),
            job(
                6,
                JobParams::Generate(GenerateParams::new("physics", 10)),
                5,
                None,
            ),
        ];
        let r = Registry::from_jobs(&jobs);
        let a: Vec<(u32, JobId)> = r.versions("a").iter().map(|v| (v.version, v.job)).collect();
        assert_eq!(a, [(1, JobId(2)), (2, JobId(4)), (3, JobId(1))]);
        assert_eq!(r.models().count(), 2);
        let latest = r.resolve(&"a".parse().unwrap()).unwrap();
        assert_eq!((latest.version, latest.uri.as_str()), (3, "u1"));
        assert_eq!(r.resolve(&"a:1".parse().unwrap()).unwrap().uri, "u2");
    }

    #[test]
    fn unfinished_jobs_make_no_version() {
        let mut running = job(1, train("a"), 10, Some("u1"));
        running.state = JobState::Running;
        assert!(Registry::from_jobs([&running]).versions("a").is_empty());
    }

    #[test]
    fn distilled_models_and_evaluations_are_linked() {
        let distill = job(
            2,
            JobParams::Distill(DistillParams {
                epochs: 1,
                ..DistillParams::new("teacher", "student", "d")
            }),
            20,
            Some("s1"),
        );
        let eval = |id, uri| {
            job(
                id,
                JobParams::Evaluate(EvaluateParams::new("student", "d")),
                30 + id,
                Some(uri),
            )
        };
        let jobs = [
            job(1, train("teacher"), 10, Some("t1")),
            distill,
            eval(4, "s1"),
            eval(3, "s1"),
            eval(5, "t1"),
        ];
        let r = Registry::from_jobs(&jobs);
        let s = &r.versions("student")[0];
        assert_eq!(s.made_by, JobType::Distill);
        assert_eq!(s.teacher.as_deref(), Some("teacher"));
        assert_eq!(s.evaluations, [JobId(3), JobId(4)]);
        assert_eq!(r.versions("teacher")[0].evaluations, [JobId(5)]);
    }

    #[test]
    fn unknown_models_and_versions_say_what_there_is() {
        let r = Registry::default();
        let e = r.resolve(&"gpt-4o".parse().unwrap()).unwrap_err();
        assert!(
            e.contains("\"gpt-4o\"") && e.contains("no model is registered yet"),
            "{e}"
        );
        let r = Registry::from_jobs([&job(1, train("a"), 1, Some("u"))]);
        let e = r.resolve(&"gpt-4o".parse().unwrap()).unwrap_err();
        assert!(e.contains("registered models: a"), "{e}");
        let e = r.resolve(&"a:2".parse().unwrap()).unwrap_err();
        assert!(e.contains("versions 1 to 1"), "{e}");
    }

    #[test]
    fn references_parse_a_trailing_version() {
        let r = |s: &str| s.parse::<ModelRef>().unwrap();
        assert_eq!(r("a:3").version, Some(3));
        assert_eq!(r("a:3").name, "a");
        assert_eq!(r("org:model:12").name, "org:model");
        for plain in ["a", "a:", "a:0", "a:x", ":3", "a:+3"] {
            assert_eq!(r(plain).version, None, "{plain}");
            assert_eq!(r(plain).name, plain);
        }
        assert_eq!(r("a:3").to_string(), "a:3");
    }
}
