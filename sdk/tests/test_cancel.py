"""Cancelling: a running job, a queued job, and a finished one."""

from __future__ import annotations

import pytest

from conftest import wait_for
from nexa_forge import ConflictError, JobStatus, NexaForgeClient


def test_cancel_a_running_job(client: NexaForgeClient) -> None:
    job = client.train("m", "file:///d.csv", sleep_seconds=30)
    wait_for(lambda: client.get_job(job).status == JobStatus.RUNNING)
    answer = client.cancel(job, reason="changed my mind")
    assert answer.job_id == job.job_id
    assert answer.status in (JobStatus.CANCELLING, JobStatus.CANCELLED)
    done = client.wait(job, timeout=30)
    assert done.status == JobStatus.CANCELLED
    assert done.error is not None and done.error.error_class == "cancelled"
    # The reason is kept, in the error or in the job's events.
    said = [done.error.message] + [e.message for e in client.events(job)]
    assert any("changed my mind" in m for m in said), said
    # The handler was stopped: it never printed its last line.
    assert "handler: done" not in [line.text for line in client.logs(job)]

    with pytest.raises(ConflictError) as e:
        client.cancel(job)
    assert e.value.status == 409 and e.value.code == "conflict"


def test_cancel_a_job_no_worker_can_take(client: NexaForgeClient) -> None:
    job = client.deploy("m", resources={"labels": {"region": "mars"}})
    queued = wait_for(lambda: (lambda j: j if j.pending_reason else None)(client.get_job(job)))
    assert queued.status == JobStatus.QUEUED
    assert queued.resources["labels"] == {"region": "mars"}
    answer = client.cancel(job)
    assert answer.status == JobStatus.CANCELLED
    assert answer.attempts == []


def test_cancel_a_finished_job_is_a_conflict(client: NexaForgeClient) -> None:
    job = client.wait(client.generate("physics", 3), timeout=60)
    assert job.status == JobStatus.SUCCEEDED
    with pytest.raises(ConflictError) as e:
        client.cancel(job)
    assert e.value.status == 409
    assert e.value.message
    assert client.get_job(job).status == JobStatus.SUCCEEDED
