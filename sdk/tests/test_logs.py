"""Logs: the stored lines, and following a job while it runs."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import List, Tuple

from nexa_forge import JobStatus, LogLine, NexaForgeClient


def test_stored_logs_in_order(client: NexaForgeClient) -> None:
    job = client.wait(client.train("m", "file:///d.csv", lines=5), timeout=60)
    lines = list(client.logs(job))
    assert all(isinstance(line, LogLine) for line in lines)
    texts = [line.text for line in lines]
    assert texts[0] == f"handler: train job {job.job_id} attempt 1"
    assert texts[1:6] == [f"line {i}" for i in range(5)]
    assert "handler: done" in texts
    assert not any(t.startswith("NEXA_PROGRESS") for t in texts), "progress lines are not logs"
    assert [line.seq for line in lines] == list(range(len(lines)))
    assert all(line.attempt == 1 and line.at is not None for line in lines)
    assert lines[0]["text"] == texts[0]

    tail = list(client.logs(job, from_seq=3))
    assert [line.seq for line in tail] == list(range(3, len(lines)))
    assert [line.text for line in client.logs(job.job_id, attempt=1)] == texts


def test_stored_logs_span_pages(client: NexaForgeClient) -> None:
    job = client.wait(client.train("m", "file:///d.csv", lines=2500), timeout=60)
    lines = list(client.logs(job))
    assert [line.seq for line in lines] == list(range(len(lines)))
    assert [line.text for line in lines[1:2501]] == [f"line {i}" for i in range(2500)]


def test_follow_streams_lines_while_the_job_runs_and_ends_with_it(client: NexaForgeClient) -> None:
    job = client.train("m", "file:///d.csv", sleep_seconds=2.5)
    received: List[Tuple[datetime, LogLine]] = []
    for line in client.logs(job, follow=True):
        received.append((datetime.now(timezone.utc), line))
    # The stream ended by itself, and only once the job had finished.
    done = client.get_job(job)
    assert done.status == JobStatus.SUCCEEDED
    assert done.finished_at is not None

    texts = [line.text for _, line in received]
    assert texts[0].startswith("handler: train job")
    assert any(t.startswith("tick ") for t in texts)
    assert texts[-1] == "handler: done"
    assert [line.seq for _, line in received] == list(range(len(received)))
    assert all(line.attempt == 1 for _, line in received)
    # Lines arrived as they were printed, long before the job ended.
    first_at = received[0][0]
    assert (done.finished_at - first_at).total_seconds() > 1.0
    # Following shows what the stored logs show.
    assert texts == [line.text for line in client.logs(job)]


def test_follow_a_finished_job_replays_it(client: NexaForgeClient) -> None:
    job = client.wait(client.train("m", "file:///d.csv", lines=4), timeout=60)
    stored = [line.text for line in client.logs(job)]
    followed = [line.text for line in client.logs(job, follow=True)]
    assert followed == stored


def test_follow_can_be_left_early(client: NexaForgeClient) -> None:
    job = client.train("m", "file:///d.csv", sleep_seconds=5)
    stream = client.logs(job, follow=True)
    first = next(iter(stream))
    assert first.seq == 0
    stream.close()  # type: ignore[attr-defined]
    client.cancel(job)
    assert client.wait(job, timeout=30).status == JobStatus.CANCELLED


def test_follow_goes_on_across_attempts(client: NexaForgeClient) -> None:
    job = client.train("m", "file:///d.csv", fail=True, lines=1, max_attempts=2)
    lines = list(client.logs(job, follow=True))
    done = client.get_job(job)
    assert done.status == JobStatus.FAILED
    assert [a.number for a in done.attempts] == [1, 2]
    assert all(a.outcome_status == "failed" for a in done.attempts)
    assert [line.attempt for line in lines] == sorted(line.attempt or 0 for line in lines)
    for number in (1, 2):
        followed = [line for line in lines if line.attempt == number]
        assert [line.seq for line in followed] == list(range(len(followed)))
        assert f"handler: train job {job.job_id} attempt {number}" in [l.text for l in followed]
        # The stored logs of each attempt are what was followed.
        stored = [line.text for line in client.logs(job, attempt=number)]
        assert stored == [line.text for line in followed]
    assert [line.text for line in client.logs(job)] == stored  # the latest by default
