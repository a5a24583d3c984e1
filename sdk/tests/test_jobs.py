"""Reading jobs: one, a page, every page, their events; waiting; unknown jobs."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from conftest import wait_for
from nexa_forge import (
    Job,
    JobPage,
    JobStatus,
    NexaForgeClient,
    NotFoundError,
    ServerUnavailableError,
    ValidationError,
    WaitTimeoutError,
)


def job_number(job: Job) -> int:
    return int(job.job_id.rsplit("-", 1)[1])


def test_get_job_has_the_whole_job_and_its_events(client: NexaForgeClient) -> None:
    before = datetime.now(timezone.utc)
    job = client.wait(client.generate("chemistry", 20), timeout=60)
    got = client.get_job(job.job_id)
    assert got.job_id == job.job_id
    assert got.status == JobStatus.SUCCEEDED
    assert got.worker_id == "local"
    assert got.attempt == 1
    assert got.progress is not None and 0.5 <= got.progress <= 1.0
    assert got.created_at is not None and got.created_at.tzinfo is not None
    assert abs((got.created_at - before).total_seconds()) < 60
    assert got.created_at <= got.started_at <= got.finished_at  # type: ignore[operator]
    assert len(got.attempts) == 1
    attempt = got.attempts[0]
    assert attempt.number == 1 and attempt.worker_id == "local"
    assert attempt.outcome_status == "succeeded" and not attempt.is_live
    assert attempt.ended_at is not None
    assert got.error is None and got.pending_reason is None

    assert got.events is not None
    path = [e.to_status for e in got.events]
    assert path[-1] == JobStatus.SUCCEEDED
    assert JobStatus.RUNNING in path

    events = client.events(job)
    assert [e.to_status for e in events] == path
    assert all(e.at is not None for e in events)
    assert events[-1].from_status == JobStatus.RUNNING
    assert events[0]["to"] == events[0].to_status.value  # type: ignore[union-attr]

    # Dict-style access to the raw JSON, for code written against dict answers.
    assert got["job_id"] == job.job_id
    assert got["status"] == "succeeded"
    assert "params" in got and got.get("nope", 5) == 5
    assert dict(got)["job_type"] == "generate"


def test_pages_and_every_page(client: NexaForgeClient) -> None:
    mine = [client.deploy(f"paged-{i}") for i in range(5)]
    for job in mine:
        client.wait(job, timeout=60)
    ids = {j.job_id for j in mine}

    page = client.list_jobs(job_type="deploy", limit=2)
    assert isinstance(page, JobPage) and isinstance(page, list)
    assert len(page) == 2 and page.next_cursor is not None
    seen = list(page)
    while page.next_cursor is not None:
        page = client.list_jobs(job_type="deploy", limit=2, cursor=page.next_cursor)
        assert len(page) <= 2
        seen.extend(page)
    numbers = [job_number(j) for j in seen]
    assert numbers == sorted(numbers, reverse=True), "newest first"
    assert len(set(numbers)) == len(numbers), "no job twice"
    assert ids <= {j.job_id for j in seen}
    assert all(j.job_type == "deploy" for j in seen)

    every = list(client.iter_jobs(job_type="deploy", page_size=3))
    assert [j.job_id for j in every] == [j.job_id for j in seen]

    last = client.list_jobs(job_type="deploy", limit=500)
    assert last.next_cursor is None


def test_filters(client: NexaForgeClient) -> None:
    ok = client.wait(client.evaluate("m", "file:///d.csv"), timeout=60)
    assert ok.status == JobStatus.SUCCEEDED
    succeeded = client.list_jobs(status="succeeded", limit=500)
    assert succeeded and all(j.status == JobStatus.SUCCEEDED for j in succeeded)
    assert ok.job_id in {j.job_id for j in succeeded}
    assert all(j.status == "succeeded" for j in client.iter_jobs(status=JobStatus.SUCCEEDED))

    on_local = list(client.iter_jobs(worker="local"))
    assert ok.job_id in {j.job_id for j in on_local}
    assert all(j.worker_id == "local" for j in on_local)
    assert list(client.iter_jobs(worker="nobody-here")) == []

    evals = list(client.iter_jobs(job_type="evaluate", status="succeeded"))
    assert evals and all(j.job_type == "evaluate" and j.status == "succeeded" for j in evals)


def test_bad_list_queries_are_validation_errors(client: NexaForgeClient) -> None:
    for kwargs in ({"limit": 0}, {"limit": 501}, {"status": "sleeping"}, {"job_type": "paint"}):
        with pytest.raises(ValidationError) as e:
            client.list_jobs(**kwargs)
        assert e.value.status == 400, kwargs
        assert e.value.code == "bad_request", kwargs


def test_wait_gives_up_with_a_timeout_error(client: NexaForgeClient) -> None:
    job = client.train("m", "file:///d.csv", sleep_seconds=10)
    with pytest.raises(WaitTimeoutError) as e:
        client.wait(job, timeout=0.5, poll_interval=0.1)
    assert isinstance(e.value, TimeoutError)
    assert e.value.job_id == job.job_id
    assert e.value.job is not None and not e.value.job.is_finished
    assert job.job_id in str(e.value)
    client.cancel(job)
    assert client.wait(job, timeout=30).status == JobStatus.CANCELLED


def test_progress_is_reported_while_running(client: NexaForgeClient) -> None:
    job = client.train("m", "file:///d.csv", sleep_seconds=3)
    running = wait_for(lambda: (lambda j: j if j.status == "running" and (j.progress or 0) >= 0.5 else None)(client.get_job(job)))
    assert running.progress == 0.5
    assert running.attempts[-1].is_live
    assert running.started_at is not None and running.finished_at is None
    done = client.wait(job, timeout=30)
    assert done.status == JobStatus.SUCCEEDED
    assert done.progress is not None and done.progress >= 0.5


def test_unknown_jobs_are_not_found(client: NexaForgeClient) -> None:
    for call in (
        lambda: client.get_job("job-999999"),
        lambda: client.events("job-999999"),
        lambda: list(client.logs("job-999999")),
        lambda: list(client.logs("job-999999", follow=True)),
        lambda: client.cancel("job-999999"),
        lambda: client.wait("job-999999"),
    ):
        with pytest.raises(NotFoundError) as e:
            call()
        assert e.value.status == 404 and e.value.code == "not_found"
    # A malformed id may be refused as a bad request rather than looked up.
    with pytest.raises((NotFoundError, ValidationError)):
        client.get_job("not a job id")
    with pytest.raises(TypeError):
        client.get_job("")


def test_several_api_urls_reach_the_one_that_serves(api_url: str) -> None:
    """A standby does not listen: a client given it first moves on to the one that serves,
    and keeps asking that one."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        silent = f"http://127.0.0.1:{s.getsockname()[1]}/api"
    client = NexaForgeClient(api_url=f"{silent},{api_url}")
    job = client.generate("physics", 5)
    assert client.api_url == api_url
    assert client.get_job(job).job_id == job.job_id
    client.wait(job, timeout=60)
    with pytest.raises(ServerUnavailableError, match="cannot reach"):
        NexaForgeClient(api_url=f"{silent},{silent}").list_jobs()
