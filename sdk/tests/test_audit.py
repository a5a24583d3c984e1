"""The built-in audit stage, on a small CSV file."""

from __future__ import annotations

import hashlib
from pathlib import Path

from nexa_forge import JobStatus, NexaForgeClient


def write_csv(path: Path) -> bytes:
    rows = ["age,income,label"]
    for i in range(40):
        rows.append(f"{20 + i % 30},{1000 + 37 * i},{'yes' if i % 3 else 'no'}")
    rows.append(rows[1])  # one duplicate row
    rows.append("33,,no")  # one missing value
    text = ("\n".join(rows) + "\n").encode()
    path.write_bytes(text)
    return text


def test_audit_a_csv(client: NexaForgeClient, tmp_path: Path) -> None:
    data = tmp_path / "people.csv"
    text = write_csv(data)
    job = client.wait(client.audit(dataset_uri=str(data), label_column="label"), timeout=60)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.result is not None
    metrics = job.result.metrics
    assert metrics["rows"] == 42
    assert metrics["columns"] == 3
    assert metrics["duplicate_rows"] == 1
    assert metrics["missing_values"] == 1
    assert metrics["label_classes"] == 2
    assert metrics["file_size_bytes"] == len(text)
    assert job.worker_id == "local"


def test_audit_checks_the_sha256(client: NexaForgeClient, tmp_path: Path) -> None:
    data = tmp_path / "people.csv"
    text = write_csv(data)
    good = client.audit(data.as_uri(), expected_sha256=hashlib.sha256(text).hexdigest())
    bad = client.audit(data.as_uri(), expected_sha256="0" * 64, max_attempts=1)
    good = client.wait(good, timeout=60)
    bad = client.wait(bad, timeout=60)
    assert good.status == JobStatus.SUCCEEDED, good.error
    assert bad.status == JobStatus.FAILED
    assert bad.error is not None and bad.error.message


def test_audit_of_a_missing_file_fails(client: NexaForgeClient, tmp_path: Path) -> None:
    job = client.wait(client.audit(str(tmp_path / "absent.csv"), max_attempts=1), timeout=60)
    assert job.status == JobStatus.FAILED
    assert job.error is not None and job.error.message
