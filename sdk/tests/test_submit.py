"""Submitting: what each helper sends, the job options, validation and idempotency."""

from __future__ import annotations

import uuid
from typing import Any, Dict, Union

import pytest

from nexa_forge import (
    ConflictError,
    Job,
    JobStatus,
    JobType,
    NexaForgeClient,
    NexaForgeError,
    ValidationError,
)


def finished(client: NexaForgeClient, job: Job) -> Job:
    done = client.wait(job, timeout=60)
    assert done.status == JobStatus.SUCCEEDED, (done, done.error)
    return done


def test_generate_sends_its_params(client: NexaForgeClient) -> None:
    job = client.generate(domain="physics", num_samples=100, seed=7)
    assert job.job_type == "generate"
    assert job.job_type is JobType.GENERATE
    assert job.params["domain"] == "physics"
    assert job.params["num_samples"] == 100
    assert job.params["seed"] == 7
    assert job.status in (JobStatus.QUEUED, JobStatus.ASSIGNED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
    done = finished(client, job)
    # The handler got the same parameters.
    assert done.result is not None
    assert done.result.output["job"]["params"]["num_samples"] == 100
    assert done.result.output["job"]["params"]["domain"] == "physics"

    unseeded = client.generate("biology", 5)
    assert unseeded.params.get("seed") is None


def test_audit_distill_evaluate_deploy_send_their_params(client: NexaForgeClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "d.csv"
    data.write_text("x,y\n1,2\n")
    audit = client.audit(str(data), label_column="y")
    assert audit.params["dataset_uri"] == str(data)
    assert audit.params["label_column"] == "y"
    assert audit.params.get("expected_sha256") is None

    distill = client.distill(
        teacher_model="big", student_model="small", dataset_uri="file:///tmp/d.csv"
    )
    assert distill.job_type == "distill"
    assert distill.params == {
        "teacher_model": "big",
        "student_model": "small",
        "dataset_uri": "file:///tmp/d.csv",
        "temperature": 2.0,
        "alpha": 0.5,
        "epochs": 3,
        "hyperparameters": {},
        "prompt_template": None,
        "options": {},
    }
    hot = client.distill("big", "small", "file:///tmp/d.csv", temperature=4.5, epochs=1)
    assert hot.params["temperature"] == 4.5 and hot.params["epochs"] == 1

    evaluate = client.evaluate("mlp", "file:///tmp/d.csv", metrics=["accuracy", "f1"])
    assert evaluate.params == {
        "model_id": "mlp",
        "dataset_uri": "file:///tmp/d.csv",
        "split": None,
        "suite": None,
        "metrics": ["accuracy", "f1"],
        "options": {},
    }
    assert client.evaluate("mlp", "file:///tmp/d.csv").params.get("metrics") in (None, [])

    deploy = client.deploy("mlp")
    assert deploy.params == {
        "model_id": "mlp", "target": "local", "region": None, "replicas": 1, "options": {}
    }
    deploy2 = client.deploy("mlp", target="edge-1", replicas=3, region="eu-west")
    assert deploy2.params == {
        "model_id": "mlp", "target": "edge-1", "region": "eu-west", "replicas": 3, "options": {}
    }

    # No worker here carries region=eu-west: that deploy waits for one, so it is cancelled.
    client.cancel(deploy2)
    assert client.wait(deploy2, timeout=60).status == JobStatus.CANCELLED
    for job in (audit, distill, hot, evaluate, deploy):
        finished(client, job)


def test_train_keeps_hyperparameters_apart_from_job_options(client: NexaForgeClient) -> None:
    first = client.generate("physics", 10)
    key = f"train-{uuid.uuid4().hex}"
    job = client.train(
        "mlp-small",
        "file:///data/physics.parquet",
        epochs=2,
        learning_rate=0.001,
        batch_size=32,
        use_amp=True,
        optimizer="adam",
        hyperparameters={"optimizer/beta1": 0.9},
        priority=5,
        max_attempts=2,
        timeout_seconds=600,
        resources={"gpus": 0, "gpu_memory_mb": 0, "labels": {}},
        depends_on=[first],
        idempotency_key=key,
    )
    assert job.params == {
        "model_id": "mlp-small",
        "dataset_uri": "file:///data/physics.parquet",
        "epochs": 2,
        "hyperparameters": {
            "learning_rate": 0.001,
            "batch_size": 32,
            "use_amp": True,
            "optimizer": "adam",
            "optimizer/beta1": 0.9,
        },
        "options": {},
    }
    hp = job.params["hyperparameters"]
    assert type(hp["batch_size"]) is int and type(hp["use_amp"]) is bool
    assert job.priority == 5
    assert job.max_attempts == 2
    assert job.timeout_seconds == 600
    assert job.resources.get("gpus") == 0
    assert job.depends_on == [first.job_id]
    assert job.idempotency_key == key
    done = finished(client, job)
    assert done.result is not None
    assert done.result.metrics == {"loss": 0.125, "lines": 3.0}
    # The file the handler listed in its result is kept by the control plane, by digest (the
    # first job that kept these bytes is the one the artifact names).
    report = client.artifact(done.result.artifacts["report"])
    assert report.uri == done.result.artifacts["report"]
    assert report.name == "report.txt" and report.size == 3 and report.job_id is not None
    assert [a.uri for a in client.artifacts(job)] == [report.uri]


def test_train_defaults(client: NexaForgeClient) -> None:
    job = client.train("mlp", "file:///d.csv")
    assert job.params["epochs"] == 1
    assert job.params["hyperparameters"] == {}
    assert job.max_attempts == 3 and job.priority == 0 and job.timeout_seconds == 86400


def test_every_helper_takes_the_job_options(client: NexaForgeClient) -> None:
    options: Dict[str, Any] = {"priority": -3, "max_attempts": 1, "timeout_seconds": 120}
    jobs = [
        client.generate("physics", 3, **options),
        client.distill("t", "s", "file:///d.csv", **options),
        client.evaluate("m", "file:///d.csv", **options),
        client.deploy("m", **options),
        client.audit("/nonexistent.csv", **options),
        client.submit("generate", {"domain": "x", "num_samples": 1}, **options),
    ]
    for job in jobs:
        assert (job.priority, job.max_attempts, job.timeout_seconds) == (-3, 1, 120), job.raw
    with pytest.raises(TypeError, match="unexpected keyword argument.*learning_rate"):
        client.generate("physics", 3, learning_rate=0.1)
    for job in jobs:
        client.wait(job, timeout=60)


def test_an_invalid_value_is_a_validation_error_naming_its_field(client: NexaForgeClient) -> None:
    with pytest.raises(ValidationError) as e:
        client.generate(domain="physics", num_samples=0)
    assert e.value.status == 422
    assert e.value.code == "validation_error"
    assert e.value.field == "params.num_samples"
    assert "num_samples" in e.value.message
    assert isinstance(e.value, NexaForgeError)

    with pytest.raises(ValidationError) as e:
        client.distill("same", "same", "file:///d.csv")
    assert e.value.field == "params.student_model"

    with pytest.raises(ValidationError) as e:
        client.train("m", "file:///d.csv", priority=5000)
    assert e.value.field == "priority"

    with pytest.raises(ValidationError) as e:
        client.deploy("m", replicas=65)
    assert e.value.field == "params.replicas"

    with pytest.raises(ValidationError) as e:
        client.submit("paint", {"colour": "blue"})
    assert e.value.status in (400, 422)

    with pytest.raises(ValidationError) as e:
        client.submit("generate", {"domain": "physics"})
    assert e.value.status in (400, 422)


def test_the_same_idempotency_key_makes_one_job(client: NexaForgeClient) -> None:
    key = f"nightly-{uuid.uuid4().hex}"
    first = client.generate("physics", 10, idempotency_key=key)
    again = client.generate("physics", 10, idempotency_key=key)
    assert again.job_id == first.job_id
    assert [j.job_id for j in client.iter_jobs(job_type="generate")].count(first.job_id) == 1

    with pytest.raises(ConflictError) as e:
        client.generate("physics", 11, idempotency_key=key)
    assert e.value.status == 409 and e.value.code == "conflict"
    client.wait(first, timeout=60)


def test_a_job_waits_for_its_dependencies(client: NexaForgeClient) -> None:
    slow = client.train("m", "file:///d.csv", sleep_seconds=1.0)
    after = client.deploy("m", depends_on=[slow.job_id])
    assert after.status == JobStatus.WAITING
    assert after.pending_reason
    done = client.wait(after, timeout=60)
    assert done.status == JobStatus.SUCCEEDED
    slow_done = client.get_job(slow)
    assert slow_done.finished_at is not None and done.started_at is not None
    assert slow_done.finished_at <= done.started_at


def test_a_failing_handler_fails_the_job(client: NexaForgeClient) -> None:
    job = client.train("m", "file:///d.csv", fail=True, max_attempts=1)
    done = client.wait(job, timeout=60)
    assert done.status == JobStatus.FAILED
    assert done.error is not None and done.error.error_class == "stage_error"
    assert done.result is None
    assert done.attempts and done.attempts[-1].outcome_status == "failed"


def test_a_handler_sees_hyperparameters_as_submitted(client: NexaForgeClient) -> None:
    """The job file a handler reads should hold the parameters as the API shows them:
    hyperparameters as plain JSON numbers, strings and booleans."""
    hp: Dict[str, Union[bool, int, float, str]] = {
        "learning_rate": 0.001,
        "batch_size": 32,
        "use_amp": True,
        "optimizer": "adam",
    }
    done = finished(client, client.train("m", "file:///d.csv", hyperparameters=hp))
    assert done.params["hyperparameters"] == hp
    assert done.result is not None
    assert done.result.output["job"]["params"]["hyperparameters"] == hp


def test_a_handler_gets_the_inputs_the_built_in_stages_refuse(client: NexaForgeClient) -> None:
    """options, a prompt template and a benchmark suite are for the user's own programs:
    the job file carries them as submitted, every default applied next to them."""
    options = {"lora": {"rank": 8, "targets": ["q", "v"]}, "bf16": True}
    distill = client.distill(
        "gpt-4o", "llama-3-8b", "s3://nexa-data/physics_v1.parquet",
        prompt_template="Question: {question}\nAnswer:", options=options,
    )
    suite = client.evaluate("llama-3-8b", suite="mmlu", options={"shots": 5})
    assert suite.params["dataset_uri"] is None and suite.params["suite"] == "mmlu"
    regression = client.generate("physics", 50, task="regression", noise=0.05)
    assert regression.params["classes"] is None and regression.params["noise"] == 0.05
    classified = client.generate("physics", 50, classes=3)
    assert classified.params["task"] == "classification" and classified.params["classes"] == 3

    seen = finished(client, distill).result
    assert seen is not None
    params = seen.output["job"]["params"]
    assert params["options"] == options
    assert params["prompt_template"] == "Question: {question}\nAnswer:"
    assert params["alpha"] == 0.5 and params["temperature"] == 2.0 and params["epochs"] == 3
    seen = finished(client, suite).result
    assert seen is not None and seen.output["job"]["params"]["options"] == {"shots": 5}
    for job in (regression, classified):
        finished(client, job)


@pytest.mark.parametrize(
    "submit, field",
    [
        (lambda c: c.evaluate("m"), "params.dataset_uri"),
        (lambda c: c.evaluate("m", split="holdout", dataset_uri="d.csv"), "params.split"),
        (lambda c: c.generate("physics", 10, task="regression", classes=3), "params.classes"),
        (lambda c: c.generate("physics", 10, task="ranking"), "params.task"),
        (lambda c: c.distill("t", "s", "d.csv", alpha=1.5), "params.alpha"),
        (lambda c: c.submit("train", {"model_id": "m", "dataset_uri": "d", "lr": 1}), "params.lr"),
        (lambda c: c.submit("deploy", {"model_id": "m", "options": [1, 2]}), "params.options"),
    ],
)
def test_new_params_are_checked_at_submit(client: NexaForgeClient, submit: Any, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        submit(client)
    assert raised.value.field == field, raised.value
