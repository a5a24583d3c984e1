"""Many jobs at once: a batch submit (all or none), waiting for a set, and a job's events
pushed as they are stored."""

from __future__ import annotations

import threading

import pytest

from nexa_forge import (
    ConflictError,
    JobStatus,
    NexaForgeClient,
    NotFoundError,
    ValidationError,
)


def test_submit_many_makes_every_job_or_none(client: NexaForgeClient) -> None:
    jobs = [
        {"job_type": "generate", "params": {"domain": "physics", "num_samples": 10 + n}}
        for n in range(20)
    ]
    ids = client.submit_many(jobs)
    assert len(ids) == 20 and len(set(ids)) == 20
    done, pending = client.wait_many(ids, timeout=120)
    assert pending == []
    assert [j.job_id for j in done] == ids
    assert all(j.status == JobStatus.SUCCEEDED for j in done)
    assert [j.params["num_samples"] for j in done] == [10 + n for n in range(20)]

    newest = client.list_jobs(limit=1)[0].job_id
    bad = jobs[:3] + [{"job_type": "generate", "params": {"domain": "physics", "num_samples": -1}}]
    with pytest.raises(ValidationError) as e:
        client.submit_many(bad)
    assert e.value.field == "jobs[3].params.num_samples"
    assert client.list_jobs(limit=1)[0].job_id == newest, "none of the batch was made"

    with pytest.raises(TypeError, match="unknown options: colour"):
        client.submit_many([{"job_type": "generate", "params": {}, "colour": "red"}])
    assert client.submit_many([]) == []


def test_a_batch_sent_again_with_its_keys_answers_the_same_jobs(client: NexaForgeClient) -> None:
    def batch(seed: int) -> list:  # type: ignore[type-arg]
        return [
            {
                "job_type": "generate",
                "params": {"domain": "physics", "num_samples": 5, "seed": seed + n},
                "idempotency_key": f"sweep-{seed}-{n}",
            }
            for n in range(3)
        ]

    first = client.submit_many(batch(100))
    assert client.submit_many(batch(100)) == first
    changed = batch(100)
    changed[1]["params"]["seed"] = 7
    with pytest.raises(ConflictError):
        client.submit_many(changed)


def test_wait_many_answers_done_and_pending_as_futures_wait_does(
    client: NexaForgeClient,
) -> None:
    quick = client.generate("physics", 10)
    # Needs a GPU no worker has: it waits in the queue until cancelled.
    stuck = client.submit("generate", {"domain": "physics", "num_samples": 10}, resources={"gpus": 4})
    done, pending = client.wait_many([stuck, quick], return_when="any", timeout=60)
    assert [j.job_id for j in done] == [quick.job_id]
    assert pending == [stuck.job_id]
    done, pending = client.wait_many([quick, stuck, quick], timeout=0.3)
    assert [j.job_id for j in done] == [quick.job_id] and pending == [stuck.job_id]

    # Pushed: the cancel ends the wait.
    threading.Timer(0.5, lambda: client.cancel(stuck)).start()
    done, pending = client.wait_many([quick, stuck], timeout=30)
    assert pending == []
    assert [j.status for j in done] == [JobStatus.SUCCEEDED, JobStatus.CANCELLED]

    with pytest.raises(NotFoundError):
        client.wait_many(["job-999999"], timeout=1)
    with pytest.raises(ValueError, match="return_when"):
        client.wait_many([quick], return_when="first")


def test_events_follow_yields_each_change_once_as_it_is_stored(client: NexaForgeClient) -> None:
    job = client.submit("generate", {"domain": "physics", "num_samples": 10}, resources={"gpus": 4})
    threading.Timer(0.5, lambda: client.cancel(job, reason="enough")).start()
    followed = list(client.events(job, follow=True))
    assert [e.to_status for e in followed] == [JobStatus.QUEUED, JobStatus.CANCELLED]
    assert [e.to_status for e in client.events(job)] == [e.to_status for e in followed]
    # A finished job's stream gives its whole history and ends.
    assert [e.to_status for e in client.events(job, follow=True)] == [
        JobStatus.QUEUED,
        JobStatus.CANCELLED,
    ]


def test_a_closed_client_connects_again(client: NexaForgeClient) -> None:
    job = client.generate("physics", 5)
    client.close()
    assert client.get_job(job).job_id == job.job_id
    with NexaForgeClient(client.api_url) as other:
        assert other.get_job(job).job_id == job.job_id
