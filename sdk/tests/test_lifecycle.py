"""The ML lifecycle on the built-in stages, through the SDK: generate → audit → train a
teacher → distill a student → evaluate both; then the artifacts each job made and the model
registry's view of what came from where."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Dict

import pytest

from nexa_forge import (
    ARTIFACT_URI_PREFIX,
    ArtifactKind,
    Job,
    JobStatus,
    JobType,
    NexaForgeClient,
    NotFoundError,
    ValidationError,
)

# Small enough for a couple of seconds per training on two slow cores, big enough that the
# teacher learns the law well beyond chance (four balanced classes: 0.25).
SAMPLES = 3000
EPOCHS = 5


def succeeded(client: NexaForgeClient, job: Job, timeout: float = 300) -> Job:
    done = client.wait(job, timeout=timeout, poll_interval=0.25)
    assert done.status == JobStatus.SUCCEEDED, f"{done.job_id} ({done.job_type}): {done.error}"
    assert done.result is not None
    return done


def test_generate_audit_train_distill_evaluate(builtin_client: NexaForgeClient, tmp_path: Path) -> None:
    client = builtin_client
    timings: Dict[str, float] = {}
    t0 = time.monotonic()

    generated = succeeded(client, client.generate(domain="physics", num_samples=SAMPLES, seed=7))
    timings["generate"] = time.monotonic() - t0
    assert generated.result is not None
    dataset = generated.result.artifacts["dataset"]
    assert dataset.startswith(ARTIFACT_URI_PREFIX), dataset
    assert generated.result.metrics["rows"] == SAMPLES

    # The audit reads the dataset by its URI, checked against the digest that names it.
    audit = succeeded(client, client.audit(dataset, label_column="range_m_class",
                                           expected_sha256=dataset[len(ARTIFACT_URI_PREFIX):]))
    assert audit.result is not None
    assert audit.result.metrics["rows"] == SAMPLES
    assert audit.result.metrics["label_classes"] == 4

    t = time.monotonic()
    teacher_job = succeeded(client, client.train(
        model_id="teacher", dataset_uri=dataset, epochs=EPOCHS,
        base="teacher_large", batch_size=64, learning_rate=2e-3,
    ))
    timings["train"] = time.monotonic() - t
    assert teacher_job.result is not None
    teacher_uri = teacher_job.result.artifacts["model"]
    assert teacher_job.result.metrics["steps"] > 0

    t = time.monotonic()
    student_job = succeeded(client, client.distill(
        teacher_model="teacher", student_model="student", dataset_uri=dataset,
        temperature=2.0, epochs=EPOCHS,
    ))
    timings["distill"] = time.monotonic() - t
    assert student_job.result is not None
    student_uri = student_job.result.artifacts["model"]
    assert student_job.result.artifacts["teacher_labelled"].startswith(ARTIFACT_URI_PREFIX)

    t = time.monotonic()
    eval_teacher = client.evaluate("teacher", dataset)
    eval_student = client.evaluate("student:1", dataset)
    eval_teacher = succeeded(client, eval_teacher)
    eval_student = succeeded(client, eval_student)
    timings["evaluate"] = time.monotonic() - t
    assert eval_teacher.result is not None and eval_student.result is not None
    accuracy = eval_teacher.result.metrics["accuracy"]
    assert accuracy > 0.7, f"the teacher's accuracy on the test split is {accuracy}"
    assert "teacher_agreement" in eval_student.result.metrics
    assert "teacher_agreement" not in eval_teacher.result.metrics
    # An evaluation names the file it scored and keeps its report.
    assert eval_teacher.result.artifacts["model"] == teacher_uri
    assert eval_student.result.artifacts["model"] == student_uri
    report = client.artifact(eval_teacher.result.artifacts["report"])
    assert report.kind == ArtifactKind.REPORT and report.job_id == eval_teacher.job_id

    # The generate job's artifacts: the dataset, kept by the control plane, downloadable.
    [ds] = [a for a in client.artifacts(generated) if a.kind == ArtifactKind.DATASET]
    assert ds.uri == dataset and ds.job_id == generated.job_id
    assert ds.name.endswith(".parquet") and ds.size and ds.size > 0
    assert ds.download_url == f"/api/artifacts/{ds.sha256}/content"
    assert client.artifact(dataset) == ds
    path = client.download(ds, tmp_path)
    assert path == tmp_path / ds.name and path.stat().st_size == ds.size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ds.sha256

    # The teacher's job made the model and its checkpoints.
    made = client.artifacts(teacher_job)
    assert [a.uri for a in made if a.kind == ArtifactKind.MODEL] == [teacher_uri]
    checkpoints = [a for a in made if a.kind == ArtifactKind.CHECKPOINT]
    assert all(isinstance(c.step, int) and c.step > 0 for c in checkpoints), checkpoints
    assert [a.name for a in made] == sorted(a.name for a in made)
    assert all(a.job_id == teacher_job.job_id for a in made)

    # The registry: each model's version, what made it, what scored it, and where its data
    # came from.
    teacher = client.model("teacher")
    [tv] = teacher.versions
    assert (tv.name, tv.version, tv.ref) == ("teacher", 1, "teacher:1")
    assert tv.made_by == JobType.TRAIN and tv.teacher is None
    assert tv.job_id == teacher_job.job_id and tv.uri == teacher_uri
    assert tv.evaluations == [eval_teacher.job_id]
    assert tv.dataset_uri == dataset
    assert tv.dataset is not None and tv.dataset.uri == dataset and tv.dataset.kind == "dataset"
    assert tv.generated_by == generated.job_id
    assert tv.metrics["steps"] == teacher_job.result.metrics["steps"]
    assert tv.created_at is not None

    student = client.model("student")
    [sv] = student.versions
    assert sv.made_by == JobType.DISTILL and sv.teacher == "teacher"
    assert sv.job_id == student_job.job_id and sv.uri == student_uri
    assert sv.evaluations == [eval_student.job_id]
    assert sv.generated_by == generated.job_id
    assert student.latest == sv

    summaries = {m.name: m for m in client.models()}
    assert {"teacher", "student"} <= set(summaries)
    assert summaries["teacher"].versions == 1
    assert summaries["teacher"].latest is not None
    assert summaries["teacher"].latest.job_id == teacher_job.job_id
    assert list(summaries) == sorted(summaries)

    # A model version is an artifact too: its weights download like the dataset.
    weights = client.download(sv, tmp_path / "student.safetensors")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == student_uri[len(ARTIFACT_URI_PREFIX):]

    with pytest.raises(NotFoundError, match="teacher"):
        client.model("no-such-model")

    timings["total"] = time.monotonic() - t0
    print("lifecycle timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
          + f"; teacher accuracy {accuracy:.3f}, student agreement "
          + f"{eval_student.result.metrics['teacher_agreement']:.3f}")


def test_an_unknown_hyperparameter_fails_naming_it(builtin_client: NexaForgeClient) -> None:
    client = builtin_client
    generated = succeeded(client, client.generate(domain="physics", num_samples=200))
    assert generated.result is not None
    job = client.train(model_id="prompted", dataset_uri=generated.result.artifacts["dataset"],
                       prompt_template="x")
    job = client.wait(job, timeout=60, poll_interval=0.25)
    assert job.status == JobStatus.FAILED
    assert job.error is not None and job.error.error_class == "invalid_input", job.error
    assert "prompt_template" in job.error.message
    # It says which ones it knows.
    for known in ("learning_rate", "batch_size", "base"):
        assert known in job.error.message, job.error.message
    assert len(job.attempts) == 1
    with pytest.raises(NotFoundError):
        client.model("prompted")


def test_unknown_artifacts_are_not_found(builtin_client: NexaForgeClient, tmp_path: Path) -> None:
    client = builtin_client
    unknown = "0123456789abcdef" * 4
    with pytest.raises(NotFoundError):
        client.download(unknown, tmp_path)
    with pytest.raises(NotFoundError):
        client.download(ARTIFACT_URI_PREFIX + unknown, tmp_path / "named.bin")
    with pytest.raises(NotFoundError):
        client.artifact(unknown)
    assert list(tmp_path.iterdir()) == [], "a failed download leaves nothing behind"
    with pytest.raises(NotFoundError):
        client.artifacts("job-999999")
    with pytest.raises(ValueError):
        client.download("s3://nexa-data/physics_v1.parquet")
    # The server refuses what is not a digest too, for clients that do not check first.
    status = None
    try:
        client._transport.request("GET", "/artifacts/not-a-digest")
    except (NotFoundError, ValidationError) as e:
        status = e.status
    assert status in (400, 404, 422)
