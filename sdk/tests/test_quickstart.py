"""The README's quick start, as a user would write it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from nexa_forge import ARTIFACT_URI_PREFIX, JobStatus


def test_quick_start(api_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from nexa_forge import NexaForgeClient

    client = NexaForgeClient(api_url=api_url)
    job = client.generate(domain="physics", num_samples=100)
    print(job.job_id, job.status)

    for line in client.logs(job, follow=True):
        print(line.text)

    job = client.wait(job.job_id, timeout=60)
    print(job.status)
    print(job.result.metrics if job.result else job.error)

    out = capsys.readouterr().out
    assert job.status == "succeeded"
    assert job.is_finished
    assert job["status"] == "succeeded"
    assert job.result is not None and job.result.metrics["loss"] == 0.125
    assert "handler: generate job" in out
    assert "succeeded" in out.splitlines()[-2]


def test_the_client_reads_its_settings_from_the_environment(
    api_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nexa_forge import DEFAULT_API_URL, NexaForgeClient

    monkeypatch.delenv("NEXA_API_URL", raising=False)
    monkeypatch.delenv("NEXA_TOKEN", raising=False)
    assert NexaForgeClient().api_url == DEFAULT_API_URL == "http://localhost:8000/api"

    monkeypatch.setenv("NEXA_API_URL", api_url + "/")
    client = NexaForgeClient()
    assert client.api_url == api_url
    assert client.health()["status"] == "ok"
    assert NexaForgeClient(api_url="http://example.invalid/api").api_url == "http://example.invalid/api"

    with pytest.raises(ValueError, match="not an http"):
        NexaForgeClient(api_url="localhost:8000")


def test_the_original_quick_start_on_the_built_in_stages(
    builtin_api_url: str, tmp_path: Path
) -> None:
    """The project's first quick start, verbatim, on a worker with no handlers: generate
    makes a real Parquet dataset; distill and train fail at once as invalid input, saying
    what is missing (no model called gpt-4o is registered; no object storage is configured),
    instead of retrying or pretending."""
    from nexa_forge import NexaForgeClient

    api_url = builtin_api_url
    client = NexaForgeClient(api_url=api_url)
    generated = client.generate(domain="physics", num_samples=1000)
    distilled = client.distill(teacher_model="gpt-4o", student_model="llama-3-8b", dataset_uri="s3://nexa-data/physics_v1.parquet")
    trained = client.train(model_id="llama-3-8b-physics", dataset_uri="s3://nexa-data/distilled_physics.parquet", epochs=3)

    distilled = client.wait(distilled, timeout=60)
    trained = client.wait(trained, timeout=60)
    generated = client.wait(generated, timeout=120)

    assert generated.status == JobStatus.SUCCEEDED, generated.error
    assert generated.result is not None
    assert generated.result.metrics["rows"] == 1000
    uri = generated.result.artifacts["dataset"]
    assert uri.startswith(ARTIFACT_URI_PREFIX), uri
    path = client.download(uri, tmp_path)
    data = path.read_bytes()
    assert data[:4] == b"PAR1" and data[-4:] == b"PAR1", "a Parquet file"
    assert hashlib.sha256(data).hexdigest() == uri[len(ARTIFACT_URI_PREFIX):]
    assert path.name.endswith(".parquet"), path

    for job, needles in (
        (distilled, ["gpt-4o", "not in the registry"]),
        (trained, ["s3://nexa-data/distilled_physics.parquet", "cannot read",
                   "no S3 credentials are configured"]),
    ):
        assert job.status == JobStatus.FAILED, job
        assert job.error is not None
        assert job.error.error_class == "invalid_input", job.error
        for needle in needles:
            assert needle in job.error.message, f"{job.job_id}: {job.error.message!r} lacks {needle!r}"
        assert len(job.attempts) == 1, f"{job.job_id}: invalid input is not retried"
        assert job.result is None
