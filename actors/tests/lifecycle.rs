//! The built-in lifecycle stages through a real control plane and workers in one process:
//! generate → audit → train a teacher → distill a student → evaluate both, each job reading
//! the previous one's artifact by its `nexa://` URI; the registry's lineage; a training job
//! whose worker is lost resuming on another from the last checkpoint kept with the control
//! plane; and the clear failures users meet first.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nexa_actors::*;
use nexa_compute::{CpuBackend, Mlp};
use nexa_runtime::*;

mod support;

use support::{Cluster, cluster};

impl Cluster {
    async fn worker(&self, name: &str) -> WorkerNode {
        self.worker_with_slots(name, 1).await
    }

    async fn worker_with_slots(&self, name: &str, slots: usize) -> WorkerNode {
        let mut config = self.worker_config(name, builtin_stages());
        config.slots = slots;
        WorkerNode::start(config).await.unwrap()
    }

    async fn submit(&self, params: JobParams) -> JobId {
        self.plane.submit(JobSpec::new(params)).await.unwrap().id
    }

    /// Waits until the job is final; returns it.
    async fn finished(&self, id: JobId) -> Job {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let job = self.plane.get(id).await.unwrap();
            if job.state.is_terminal() {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "{id} is {} after 120 s: {:#?}",
                job.state,
                job.events
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn succeeded(&self, id: JobId) -> JobOutput {
        let job = self.finished(id).await;
        assert_eq!(
            job.state,
            JobState::Succeeded,
            "{id}: {:?}\nlogs: {:#?}",
            job.error,
            self.logs(id).await
        );
        job.output.unwrap()
    }

    async fn logs(&self, id: JobId) -> Vec<String> {
        self.plane
            .logs(id, LogQuery::default())
            .await
            .unwrap()
            .lines
            .into_iter()
            .map(|l| l.text)
            .collect()
    }

    /// Where the control plane keeps an artifact's bytes.
    fn artifact_path(&self, uri: &str) -> std::path::PathBuf {
        let digest = parse_artifact_uri(uri)
            .unwrap_or_else(|| panic!("{uri} is not an artifact URI"))
            .unwrap();
        self.plane.artifacts().blob_path(digest)
    }

    /// The bytes of an artifact, read back from the control plane's store.
    fn artifact(&self, uri: &str) -> Vec<u8> {
        let digest = parse_artifact_uri(uri)
            .unwrap_or_else(|| panic!("{uri} is not an artifact URI"))
            .unwrap();
        std::fs::read(self.plane.artifacts().blob_path(digest)).unwrap()
    }
}

fn generate(samples: u64) -> JobParams {
    JobParams::Generate(GenerateParams {
        seed: Some(7),
        ..GenerateParams::new("physics", samples)
    })
}

fn train(model: &str, dataset: &str, epochs: u32, hyper: &[(&str, ParamValue)]) -> JobParams {
    JobParams::Train(TrainParams {
        epochs,
        hyperparameters: hyper
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        ..TrainParams::new(model, dataset)
    })
}

fn evaluate(model: &str, dataset: &str) -> JobParams {
    JobParams::Evaluate(EvaluateParams::new(model, dataset))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_chain_runs_on_built_in_stages_with_lineage() {
    let c = cluster(Duration::from_secs(10)).await;
    let _w = c.worker("w1").await;

    let generated = c.submit(generate(4000)).await;
    let out = c.succeeded(generated).await;
    let dataset = out.artifacts["dataset"].clone();
    assert!(dataset.starts_with(ARTIFACT_URI_PREFIX), "{dataset}");
    assert_eq!(out.metrics["rows"], 4000.0);
    // The dataset is kept by the control plane, as Parquet, named after its job.
    let bytes = c.artifact(&dataset);
    assert_eq!(&bytes[..4], b"PAR1");
    let digest = parse_artifact_uri(&dataset).unwrap().unwrap();
    let meta = c.plane.artifacts().stat(digest).unwrap().unwrap();
    assert_eq!(meta.job, Some(generated));
    assert_eq!(meta.kind, ArtifactKind::Dataset);

    // The audit reads it by URI too.
    let audited = c
        .submit(JobParams::Audit(AuditParams {
            label_column: Some("range_m_class".into()),
            expected_sha256: Some(digest.to_string()),
            ..AuditParams::new(dataset.clone())
        }))
        .await;
    let audit = c.succeeded(audited).await;
    assert_eq!(audit.metrics["rows"], 4000.0);

    let teacher = c
        .submit(train(
            "teacher",
            &dataset,
            6,
            &[
                ("base", ParamValue::Text("teacher_large".into())),
                ("batch_size", ParamValue::Int(64)),
                ("learning_rate", ParamValue::Float(2e-3)),
            ],
        ))
        .await;
    let teacher_out = c.succeeded(teacher).await;
    let teacher_model = teacher_out.artifacts[MODEL_ARTIFACT].clone();
    assert!(teacher_out.metrics["steps"] > 0.0);
    let logs = c.logs(teacher).await;
    assert!(
        logs.iter()
            .any(|l| l.contains("samples/s") && l.contains("eta")),
        "{logs:#?}"
    );

    let distilled = c
        .submit(JobParams::Distill(DistillParams {
            epochs: 6,
            alpha: 0.3,
            hyperparameters: BTreeMap::from([("batch_size".into(), ParamValue::Int(32))]),
            ..DistillParams::new("teacher", "student", dataset.clone())
        }))
        .await;
    let student_out = c.succeeded(distilled).await;
    let labelled = &student_out.artifacts["teacher_labelled"];
    assert!(student_out.metrics["teacher_agreement"] > 0.5);
    let result: serde_json::Value =
        serde_json::from_str(student_out.result_json.as_deref().unwrap()).unwrap();
    assert_eq!(result["distillation"]["alpha"], 0.3);

    let eval_teacher = c.submit(evaluate("teacher", &dataset)).await;
    let eval_student = c.submit(evaluate("student:1", &dataset)).await;
    let on_validation = c
        .submit(JobParams::Evaluate(EvaluateParams {
            split: Some(Split::Validation),
            ..EvaluateParams::new("teacher:1", dataset.clone())
        }))
        .await;
    let teacher_eval = c.succeeded(eval_teacher).await;
    let student_eval = c.succeeded(eval_student).await;
    let validation_eval = c.succeeded(on_validation).await;
    let result: serde_json::Value =
        serde_json::from_str(validation_eval.result_json.as_deref().unwrap()).unwrap();
    assert_eq!(result["dataset"]["part"], "its validation split");
    assert_eq!(result["report"]["rows"], 400, "{result}");
    // Four balanced classes: chance is 0.25. The teacher learns the law well beyond it.
    let accuracy = teacher_eval.metrics["accuracy"];
    assert!(
        accuracy > 0.7,
        "teacher accuracy on the test split: {accuracy}"
    );
    assert!(student_eval.metrics.contains_key("teacher_agreement"));
    assert!(student_eval.metrics["accuracy"] > 0.4);

    // The registry: both models, the student's teacher, and both evaluations on the
    // versions they scored; the teacher-labelled dataset is the distill job's.
    let registry = c.plane.registry().await.unwrap();
    let t = &registry.versions("teacher")[0];
    assert_eq!(
        (t.version, t.job, t.uri.as_str()),
        (1, teacher, teacher_model.as_str())
    );
    assert_eq!(t.dataset_uri, dataset);
    assert_eq!(t.evaluations, [eval_teacher, on_validation]);
    let s = &registry.versions("student")[0];
    assert_eq!(s.made_by, JobType::Distill);
    assert_eq!(s.teacher.as_deref(), Some("teacher"));
    assert_eq!(s.evaluations, [eval_student]);
    let labelled = c
        .plane
        .artifacts()
        .stat(parse_artifact_uri(labelled).unwrap().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(labelled.job, Some(distilled));
    // Follow the student back to the generate job whose data it learned from.
    let source = parse_artifact_uri(&s.dataset_uri).unwrap().unwrap();
    assert_eq!(
        c.plane.artifacts().stat(source).unwrap().unwrap().job,
        Some(generated)
    );
}

/// Regression: jobs on one worker fetching the same new artifact at once shared one
/// temporary file, and one of them could read it emptied by another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_fetching_one_artifact_at_once_each_read_it_whole() {
    let c = cluster(Duration::from_secs(10)).await;
    let _w = c.worker_with_slots("wide", 6).await;
    for round in 0..3 {
        let generated = c.submit(generate(20_000 + round)).await;
        let dataset = c.succeeded(generated).await.artifacts["dataset"].clone();
        let digest = parse_artifact_uri(&dataset).unwrap().unwrap();
        let mut audits = Vec::new();
        for _ in 0..6 {
            audits.push(
                c.submit(JobParams::Audit(AuditParams {
                    expected_sha256: Some(digest.to_string()),
                    ..AuditParams::new(dataset.clone())
                }))
                .await,
            );
        }
        for id in audits {
            c.succeeded(id).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_worker_s_training_resumes_elsewhere_from_its_last_kept_checkpoint() {
    let c = cluster(Duration::from_millis(1500)).await;
    let generated = {
        let w = c.worker("gen").await;
        let id = c.submit(generate(6000)).await;
        let uri = c.succeeded(id).await.artifacts["dataset"].clone();
        w.drain().await;
        uri
    };
    let hyper = [
        ("base", ParamValue::Text("medium".into())),
        ("batch_size", ParamValue::Int(16)),
        ("checkpoint_every", ParamValue::Int(25)),
    ];
    // The same training, uninterrupted, for the weights to compare with.
    let straight = {
        let w = c.worker("straight").await;
        let id = c.submit(train("straight", &generated, 3, &hyper)).await;
        let uri = c.succeeded(id).await.artifacts[MODEL_ARTIFACT].clone();
        w.drain().await;
        uri
    };

    let a = c.worker("a").await;
    let id = c.submit(train("resumed", &generated, 3, &hyper)).await;
    // Let worker a get well into training (a checkpoint kept), then lose it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = c.logs(id).await;
        if logs
            .iter()
            .any(|l| l.contains("checkpoint at step") && l.contains("kept"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint kept: {logs:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.stop().await;
    let _b = c.worker("b").await;
    let out = c.succeeded(id).await;
    let job = c.plane.get(id).await.unwrap();
    assert_eq!(job.attempts.len(), 2, "{:#?}", job.attempts);
    assert_eq!(job.attempts[1].worker.as_str(), "b");
    let resumed_from = out.metrics["resumed_from_step"];
    assert!(resumed_from > 0.0, "resumed from step {resumed_from}");

    // On the CPU the resumed run ends with exactly the weights of the uninterrupted one.
    let load = |uri: &str| {
        let file = c.dir.path().join(format!("{}.safetensors", uri.len()));
        std::fs::write(&file, c.artifact(uri)).unwrap();
        Mlp::load(&CpuBackend, &file).unwrap()
    };
    let (x, y) = (load(&straight), load(&out.artifacts[MODEL_ARTIFACT]));
    for (lx, ly) in x.layers().iter().zip(y.layers()) {
        assert_eq!(lx.weight, ly.weight);
        assert_eq!(lx.bias, ly.bias);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_that_cannot_work_fail_at_once_and_say_why() {
    let c = cluster(Duration::from_secs(10)).await;
    let _w = c.worker("w1").await;
    let generated = c.submit(generate(500)).await;
    let dataset = c.succeeded(generated).await.artifacts["dataset"].clone();

    let cases = [
        (
            JobParams::Distill(DistillParams {
                epochs: 1,
                ..DistillParams::new("gpt-4o", "llama-3-8b", dataset.clone())
            }),
            "\"gpt-4o\" is not in the registry",
        ),
        (
            train("m", "s3://nexa-data/distilled_physics.parquet", 1, &[]),
            "cannot read s3://nexa-data/distilled_physics.parquet",
        ),
        (
            train("m", "/no/such/file.parquet", 1, &[]),
            "/no/such/file.parquet",
        ),
        (
            train(
                "m",
                &dataset,
                1,
                &[("prompt_template", ParamValue::Text("Q: {q}".into()))],
            ),
            "unknown hyperparameter \"prompt_template\"",
        ),
        (
            generate_domain("chemistry"),
            "\"chemistry\" is not a known problem",
        ),
        (
            JobParams::Distill(DistillParams {
                prompt_template: Some("Q: {question}".into()),
                ..DistillParams::new("teacher", "student", dataset.clone())
            }),
            "params.prompt_template: the built-in distill stage",
        ),
        (
            JobParams::Train(TrainParams {
                options: Options(serde_json::Map::from_iter([(
                    "lora_rank".to_owned(),
                    serde_json::json!(8),
                )])),
                ..TrainParams::new("m", dataset.clone())
            }),
            "params.options (lora_rank): the built-in train stage takes no options",
        ),
        (
            JobParams::Evaluate(EvaluateParams {
                suite: Some("mmlu".into()),
                ..EvaluateParams::new("m", dataset.clone())
            }),
            "params.suite: the built-in evaluate stage has no benchmark suites",
        ),
        (
            evaluate("nobody", &dataset),
            "\"nobody\" is not in the registry",
        ),
    ];
    for (params, expected) in cases {
        let id = c.submit(params).await;
        let job = c.finished(id).await;
        assert_eq!(job.state, JobState::Failed, "{id}");
        let error = job.error.unwrap();
        assert_eq!(error.class, FailureClass::InvalidInput, "{}", error.message);
        assert!(
            error.message.contains(expected),
            "{id}: {:?} does not say {expected:?}",
            error.message
        );
        assert_eq!(job.attempts.len(), 1, "invalid input is not retried");
    }
}

fn generate_domain(domain: &str) -> JobParams {
    JobParams::Generate(GenerateParams::new(domain, 10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regression_dataset_trains_and_scores_as_regression() {
    let c = cluster(Duration::from_secs(10)).await;
    let _w = c.worker("w1").await;
    let generated = c
        .submit(JobParams::Generate(GenerateParams {
            task: Task::Regression,
            classes: None,
            noise: 0.0,
            seed: Some(3),
            ..GenerateParams::new("physics/pendulum", 2000)
        }))
        .await;
    let out = c.succeeded(generated).await;
    assert!(!out.metrics.contains_key("classes"));
    let result: serde_json::Value =
        serde_json::from_str(out.result_json.as_deref().unwrap()).unwrap();
    assert_eq!(result["task"]["kind"], "regression");
    assert_eq!(result["noise"], 0.0);
    let dataset = out.artifacts["dataset"].clone();
    let trained = c.submit(train("pendulum", &dataset, 3, &[])).await;
    c.succeeded(trained).await;
    let scored = c.submit(evaluate("pendulum", &dataset)).await;
    let metrics = c.succeeded(scored).await.metrics;
    assert!(
        metrics.contains_key("r2") && !metrics.contains_key("accuracy"),
        "{metrics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_jobs_removes_the_artifacts_no_other_job_uses() {
    let c = cluster(Duration::from_secs(10)).await;
    let _w = c.worker("w1").await;
    let store = c.plane.artifacts().clone();
    let digest = |uri: &str| parse_artifact_uri(uri).unwrap().unwrap();

    let used = c.submit(generate(300)).await;
    let used_uri = c.succeeded(used).await.artifacts["dataset"].clone();
    let unused = c
        .submit(JobParams::Generate(GenerateParams {
            seed: Some(8),
            ..GenerateParams::new("physics", 300)
        }))
        .await;
    let unused_uri = c.succeeded(unused).await.artifacts["dataset"].clone();
    let trained = c
        .submit(train(
            "kept",
            &used_uri,
            2,
            &[("checkpoint_every", ParamValue::Int(5))],
        ))
        .await;
    let model_uri = c.succeeded(trained).await.artifacts["model"].clone();
    let checkpoints = store.made_by(trained).unwrap().len();
    assert!(checkpoints >= 2, "the model and at least one checkpoint");

    // The unused dataset goes with its job: its metadata, its bytes and the job's folder.
    c.plane.delete(unused).await.unwrap();
    assert_eq!(store.stat(digest(&unused_uri)).unwrap(), None);
    assert!(!store.blob_path(digest(&unused_uri)).exists());
    assert!(!store.jobs().unwrap().contains(&unused));

    // The dataset the registered model learned from stays while that job names it.
    c.plane.delete(used).await.unwrap();
    assert!(store.stat(digest(&used_uri)).unwrap().is_some());
    assert_eq!(c.artifact(&used_uri)[..4], *b"PAR1");
    assert!(!store.jobs().unwrap().contains(&used));
    // The model's job registered a version: it is kept, and so is all it made.
    let refused = c.plane.delete(trained).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(store.stat(digest(&model_uri)).unwrap().is_some());
    assert_eq!(store.made_by(trained).unwrap().len(), checkpoints);
}

/// POSTs `body` as JSON to `url`: the status and the answer.
fn post_json(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut res = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap();
    let text = res.body_mut().read_to_string().unwrap();
    (res.status().as_u16(), serde_json::from_str(&text).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployed_model_is_proven_ready_then_served_until_undeployed() {
    let c = cluster(Duration::from_secs(10)).await;
    let _w = c.worker_with_slots("w1", 1).await;
    let generated = c.submit(generate(600)).await;
    let dataset = c.succeeded(generated).await.artifacts["dataset"].clone();
    let trained = c.submit(train("served", &dataset, 2, &[])).await;
    let model_uri = c.succeeded(trained).await.artifacts[MODEL_ARTIFACT].clone();

    // Two replicas are two deploy jobs, both serving the one endpoint.
    let mut two = DeployParams::new("served");
    two.replicas = 2;
    let pair: Vec<JobId> = c
        .plane
        .submit_all(JobSpec::new(JobParams::Deploy(two)))
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(pair.len(), 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.plane.replicas(Some("served")).len() < 2 {
        assert!(Instant::now() < deadline, "{:#?}", c.logs(pair[1]).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let serving: Vec<JobId> = c
        .plane
        .replicas(Some("served"))
        .iter()
        .map(|r| r.job)
        .collect();
    assert_eq!(serving, pair);
    for job in &pair {
        c.plane.cancel(*job, "undeploy").await.unwrap();
        assert_eq!(c.finished(*job).await.state, JobState::Cancelled);
    }

    // A model nobody trained fails at once and says why.
    let unknown = c
        .finished(
            c.submit(JobParams::Deploy(DeployParams::new("nobody")))
                .await,
        )
        .await;
    assert_eq!(unknown.error.unwrap().class, FailureClass::InvalidInput);

    let deployed = c
        .submit(JobParams::Deploy(DeployParams::new("served")))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let replica = loop {
        if let Some(r) = c.plane.replicas(Some("served")).into_iter().next() {
            break r;
        }
        assert!(Instant::now() < deadline, "{:#?}", c.logs(deployed).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(replica.job, deployed);
    assert_eq!(
        c.plane.get(deployed).await.unwrap().state,
        JobState::Running
    );
    // Its log says what proved it (the lines follow within the log's flush interval).
    loop {
        let logs = c.logs(deployed).await.join("\n");
        if logs.contains("smoke test of 32 rows of the test split") {
            break;
        }
        assert!(Instant::now() < deadline, "{logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The replica answers with what the model file itself predicts.
    let rows = vec![vec![1.0f32, 2.0, 3.0], vec![-0.5, 0.25, 4.0]];
    let url = format!("{}/predict", replica.url);
    let body = serde_json::json!({ "inputs": rows });
    let (status, answer) = tokio::task::spawn_blocking(move || post_json(&url, &body))
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let model = Mlp::load(&CpuBackend, &c.artifact_path(&model_uri)).unwrap();
    let x = ndarray::Array2::from_shape_vec((2, 3), rows.concat()).unwrap();
    let want = model.predict(&CpuBackend, &x).unwrap();
    for (i, row) in answer["predictions"].as_array().unwrap().iter().enumerate() {
        for (j, v) in row.as_array().unwrap().iter().enumerate() {
            assert_eq!(
                v.as_f64().unwrap() as f32,
                want[[i, j]],
                "row {i}, output {j}"
            );
        }
    }
    // A row the model cannot take is refused, and named.
    let url = format!("{}/predict", replica.url);
    let (status, answer) = tokio::task::spawn_blocking(move || {
        post_json(&url, &serde_json::json!({"inputs": [[1.0]]}))
    })
    .await
    .unwrap();
    assert_eq!(status, 400);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("takes 3"),
        "{answer}"
    );

    // Undeploying is cancelling: the replica goes, and so does its endpoint.
    c.plane.cancel(deployed, "undeploy").await.unwrap();
    let job = c.finished(deployed).await;
    assert_eq!(job.state, JobState::Cancelled);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.plane.replicas(Some("served")).is_empty() {
        assert!(Instant::now() < deadline, "the endpoint outlived its job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_hands_its_replicas_back_to_be_placed_again() {
    let c = cluster(Duration::from_secs(10)).await;
    let mut workers = BTreeMap::new();
    for name in ["w1", "w2"] {
        workers.insert(name.to_owned(), c.worker(name).await);
    }
    let generated = c.submit(generate(600)).await;
    let dataset = c.succeeded(generated).await.artifacts["dataset"].clone();
    let trained = c.submit(train("handed", &dataset, 2, &[])).await;
    c.succeeded(trained).await;
    let deployed = c
        .submit(JobParams::Deploy(DeployParams::new("handed")))
        .await;
    let ready_on = async |not: Option<&str>| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(r) = c
                .plane
                .replicas(Some("handed"))
                .into_iter()
                .find(|r| Some(r.worker.as_str()) != not)
            {
                return r;
            }
            assert!(Instant::now() < deadline, "{:#?}", c.logs(deployed).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let first = ready_on(None).await;
    // Told to stop, the worker finishes: a service does not hold it forever.
    let host = workers.remove(first.worker.as_str()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), host.drain())
        .await
        .expect("the drain ended");
    let second = ready_on(Some(first.worker.as_str())).await;
    assert_eq!(second.job, deployed, "the same deploy job, placed again");
    let job = c.plane.get(deployed).await.unwrap();
    assert_eq!(job.state, JobState::Running);
    assert_eq!(
        (job.own_failures(), job.recoveries()),
        (0, 1),
        "{:#?}",
        job.events
    );
}
