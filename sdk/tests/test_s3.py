"""Inputs in S3: the quick start with its data in a real S3-compatible server (moto in server
mode, started here on loopback), and the clear failures of inputs that cannot be read.

moto is installed into the test environment by scripts/test-sdk.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator

import pytest

from conftest import NexaServer, start_server
from nexa_forge import NexaForgeClient

BUCKET = "nexa-data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on a free loopback port, for this module."""
    pytest.importorskip("moto", reason="scripts/test-sdk installs moto[server]")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the moto server did not start (exit {proc.poll()})")
            time.sleep(0.2)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def aws_env(endpoint: str) -> Dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
    }


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def s3_server(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NexaServer]:
    """`nexa up` with the built-in stages whose worker has credentials for the moto server."""
    srv = start_server(
        tmp_path_factory.mktemp("nexa-s3") / "data",
        handlers=False,
        slots=2,
        env=aws_env(s3_endpoint),
    )
    yield srv
    srv.stop()


def test_the_quick_start_succeeds_with_its_data_in_s3(
    s3_endpoint: str, s3_server: NexaServer, tmp_path: Path
) -> None:
    client = NexaForgeClient(api_url=s3_server.api_url, timeout=30.0)
    # What the quick start assumes exists: its two datasets in the bucket, and a registered
    # teacher called gpt-4o (here a model trained on the platform under that name).
    data = client.wait(client.generate(domain="physics", num_samples=3000, seed=5).job_id, timeout=120)
    assert data.status == "succeeded", data.error
    local = client.download(data.result.artifacts["dataset"], tmp_path / "physics.parquet")
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    for key in ["physics_v1.parquet", "distilled_physics.parquet"]:
        s3.put_object(Bucket=BUCKET, Key=key, Body=local.read_bytes())
    teacher = client.train(
        model_id="gpt-4o",
        dataset_uri="s3://nexa-data/physics_v1.parquet",
        epochs=3,
        base="medium",
    )
    assert client.wait(teacher.job_id, timeout=120).status == "succeeded"

    # The quick start, verbatim.
    client = NexaForgeClient(api_url=s3_server.api_url)
    generated = client.generate(domain="physics", num_samples=1000)
    distilled = client.distill(teacher_model="gpt-4o", student_model="llama-3-8b", dataset_uri="s3://nexa-data/physics_v1.parquet")
    trained = client.train(model_id="llama-3-8b-physics", dataset_uri="s3://nexa-data/distilled_physics.parquet", epochs=3)

    for job in (generated, distilled, trained):
        done = client.wait(job.job_id, timeout=180)
        assert done.status == "succeeded", (done.job_type, done.error)
    student = client.model("llama-3-8b")
    assert student.latest.made_by == "distill"
    assert student.latest.teacher == "gpt-4o"
    assert student.latest.dataset_uri == "s3://nexa-data/physics_v1.parquet"
    assert client.model("llama-3-8b-physics").latest.job_id == trained.job_id


def test_s3_inputs_that_cannot_be_read_fail_at_once_naming_them(
    s3_endpoint: str, s3_server: NexaServer
) -> None:
    client = NexaForgeClient(api_url=s3_server.api_url, timeout=30.0)
    s3_client(s3_endpoint).create_bucket(Bucket="empty-bucket")
    cases = {
        "s3://empty-bucket/missing.parquet": "no such object",
        "s3://no-such-bucket/x.parquet": "s3://no-such-bucket/x.parquet",
    }
    for uri, expected in cases.items():
        job = client.train(model_id="m", dataset_uri=uri, epochs=1)
        done = client.wait(job.job_id, timeout=60)
        assert done.status == "failed", uri
        assert done.error is not None
        assert done.error.error_class == "invalid_input", (uri, done.error)
        assert expected in done.error.message, (uri, done.error.message)
        assert len(done.attempts) == 1, "invalid input is not retried"


def test_artifacts_kept_in_s3_outlive_the_control_plane_s_disk(
    s3_endpoint: str, tmp_path: Path
) -> None:
    """`nexa up --artifacts s3://…`: what jobs make goes to the bucket (not the data folder),
    and downloads, later jobs and the registry read it from there."""
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket="nexa-artifacts")
    data = tmp_path / "data"
    srv = start_server(
        data,
        extra_args=["--artifacts", "s3://nexa-artifacts/runs"],
        handlers=False,
        slots=2,
        env=aws_env(s3_endpoint),
    )
    try:
        client = NexaForgeClient(api_url=srv.api_url, timeout=30.0)
        generated = client.wait(client.generate(domain="physics", num_samples=2000, seed=3).job_id, timeout=120)
        assert generated.status == "succeeded", generated.error
        uri = generated.result.artifacts["dataset"]
        digest = uri.rsplit("/", 1)[1]
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="nexa-artifacts").get("Contents", [])]
        assert f"runs/{digest}" in keys, keys
        assert not any(p.name == digest for p in (data / "artifacts" / "blobs").rglob("*")), \
            "the bytes left the data folder"
        local = client.download(uri, tmp_path / "physics.parquet")
        assert local.read_bytes()[:4] == b"PAR1"

        trained = client.wait(client.train(model_id="m", dataset_uri=uri, epochs=2).job_id, timeout=120)
        assert trained.status == "succeeded", trained.error
        model = client.model("m").latest
        assert model.dataset is not None and model.dataset.job_id == generated.job_id
        model_digest = model.uri.rsplit("/", 1)[1]
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="nexa-artifacts").get("Contents", [])]
        assert f"runs/{model_digest}" in keys
    finally:
        srv.stop()


def test_a_bucket_that_cannot_be_used_stops_nexa_up_with_the_reason(
    s3_endpoint: str, tmp_path: Path
) -> None:
    srv = NexaServer(
        tmp_path / "data",
        extra_args=["--artifacts", "s3://no-such-bucket/x"],
        handlers=False,
        env=aws_env(s3_endpoint),
    )
    try:
        assert srv.proc.wait(timeout=60) != 0
    finally:
        srv.stop()
    stderr = srv.stderr_path.read_text(errors="replace")
    assert "s3://no-such-bucket/x" in stderr, stderr
