"""Parts of the client that need no nexa server: reading records, times, errors, event
streams, and how following logs recovers from a dropped stream (against a scripted server)."""

from __future__ import annotations

import io
import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterator, List, Tuple
from urllib.parse import parse_qs, urlsplit

import pytest

from nexa_forge import (
    AuthenticationError,
    ConflictError,
    Job,
    JobStatus,
    NexaForgeClient,
    NexaForgeError,
    NotFoundError,
    ServerUnavailableError,
    ValidationError,
)
from nexa_forge.errors import error_from_response
from nexa_forge.sse import read_events
from nexa_forge.timestamps import parse_time


def test_times() -> None:
    utc = timezone.utc
    assert parse_time("2026-11-26T16:00:00.123Z") == datetime(2026, 11, 26, 16, 0, 0, 123000, utc)
    assert parse_time("2026-11-26T16:00:00Z") == datetime(2026, 11, 26, 16, tzinfo=utc)
    assert parse_time("2026-11-26T16:00:00.123456789Z") == datetime(
        2026, 11, 26, 16, 0, 0, 123456, utc
    )
    assert parse_time("2026-11-26T17:00:00.5+01:00") == datetime(2026, 11, 26, 16, 0, 0, 500000, utc)
    assert parse_time("2026-11-26T16:00:00") == datetime(2026, 11, 26, 16, tzinfo=utc)
    assert parse_time(None) is None
    assert parse_time("yesterday") is None
    assert parse_time("2026-13-01T00:00:00Z") is None


def test_errors_by_status() -> None:
    body = {"error": {"code": "validation_error", "message": "params.x: bad", "field": "params.x"}}
    err = error_from_response(422, body)
    assert isinstance(err, ValidationError)
    assert (err.status, err.code, err.message, err.field) == (422, "validation_error", "params.x: bad", "params.x")
    assert str(err) == "params.x: bad (HTTP 422 validation_error)"
    cases: List[Tuple[int, type]] = [
        (400, ValidationError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (409, ConflictError),
        (503, ServerUnavailableError),
        (413, NexaForgeError),
        (500, NexaForgeError),
    ]
    for status, cls in cases:
        assert type(error_from_response(status, {"error": {"code": "c", "message": "m"}})) is cls
    proxy = error_from_response(502, None, "<html>Bad Gateway</html>")
    assert type(proxy) is NexaForgeError and "Bad Gateway" in proxy.message and proxy.code is None


def test_records_read_every_documented_field() -> None:
    raw: Dict[str, Any] = {
        "job_id": "job-7",
        "job_type": "train",
        "status": "failed",
        "params": {"model_id": "m"},
        "resources": {"gpus": 1},
        "priority": 2,
        "max_attempts": 3,
        "timeout_seconds": 86400,
        "depends_on": ["job-3"],
        "idempotency_key": None,
        "created_at": "2026-11-26T16:00:00.000Z",
        "updated_at": "2026-11-26T16:00:01.000Z",
        "started_at": "2026-11-26T16:00:00.500Z",
        "finished_at": "2026-11-26T16:00:01.000Z",
        "progress": 0.4,
        "worker_id": "gpu-node-1",
        "attempt": 1,
        "pending_reason": None,
        "not_before": None,
        "result": None,
        "error": {"class": "stage_error", "message": "boom"},
        "attempts": [
            {
                "number": 1,
                "worker_id": "gpu-node-1",
                "epoch": 12,
                "leased_at": "2026-11-26T16:00:00.100Z",
                "started_at": "2026-11-26T16:00:00.500Z",
                "lease_expires_at": "2026-11-26T16:00:03.000Z",
                "deadline": "2026-11-27T16:00:00.100Z",
                "ended_at": "2026-11-26T16:00:01.000Z",
                "outcome": {"status": "failed", "error": {"class": "stage_error", "message": "boom"}},
            }
        ],
        "events": [{"at": "2026-11-26T16:00:00.100Z", "from": "queued", "to": "assigned", "message": "leased"}],
        "something_new": 1,
    }
    job = Job.from_dict(raw)
    assert job.status is JobStatus.FAILED and job.is_finished and not job.succeeded
    assert job.error is not None and (job.error.error_class, job.error.message) == ("stage_error", "boom")
    assert str(job.error) == "stage_error: boom"
    assert job.attempts[0].epoch == 12 and job.attempts[0].outcome_error == job.error
    assert job.attempts[0].deadline - job.attempts[0].leased_at == timedelta(days=1)  # type: ignore[operator]
    assert job.events is not None and job.events[0].from_status == JobStatus.QUEUED
    assert job.timeout_seconds == 86400.0 and job.depends_on == ["job-3"]
    assert job["something_new"] == 1 and job.to_dict() is job.raw
    assert "job-7" in repr(job) and "boom" in repr(job)

    odd = Job.from_dict({"job_id": "job-8", "job_type": "sculpt", "status": "paused"})
    assert odd.status == "paused" and not odd.is_finished and odd.job_type == "sculpt"
    assert odd.created_at is None and odd.attempts == [] and odd.events is None


def test_event_stream_parsing() -> None:
    text = (
        b": keep-alive\n\n"
        b"event: log\ndata: {\"seq\": 0}\n\n"
        b"event: log\r\ndata: a\r\ndata: b\r\nid: 9\r\n\r\n"
        b"data: unnamed\n\n"
        b"event: empty\n\n"
        b"event: end\ndata: {\"status\": \"succeeded\"}\n"  # cut off: no blank line
    )
    events = list(read_events(io.BytesIO(text)))
    assert [(e.event, e.data, e.id) for e in events] == [
        ("log", '{"seq": 0}', None),
        ("log", "a\nb", "9"),
        ("message", "unnamed", "9"),
    ]


# ------------------------------------------------------------------------ a scripted server


class Script:
    """What the scripted server answers: a list of event streams for successive follow
    requests, the job's status, and the stored lines."""

    def __init__(self) -> None:
        self.streams: List[List[Tuple[str, Dict[str, Any]]]] = []
        self.status = "running"
        self.stored: Dict[int, List[str]] = {}
        self.follow_queries: List[Dict[str, List[str]]] = []
        self.log_queries: List[Dict[str, List[str]]] = []


def line(seq: int, text: str, attempt: int = 1) -> Tuple[str, Dict[str, Any]]:
    return ("log", {"attempt": attempt, "seq": seq, "at": "2026-11-26T16:00:00.000Z", "text": text})


@pytest.fixture
def scripted() -> Iterator[Tuple[Script, str]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def send_json(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path == "/api/jobs/job-1":
                job = {"job_id": "job-1", "job_type": "train", "status": script.status}
                self.send_json(200, dict(job, attempt=max(script.stored, default=0)))
            elif url.path == "/api/jobs/job-1/logs" and query.get("follow") == ["true"]:
                script.follow_queries.append(query)
                events = script.streams.pop(0) if script.streams else []
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for name, data in events:
                    self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                    self.wfile.flush()
                self.close_connection = True
            elif url.path == "/api/jobs/job-1/logs":
                script.log_queries.append(query)
                start = int(query.get("from_seq", ["0"])[0])
                attempt = int(query.get("attempt", [str(max(script.stored, default=0))])[0])
                stored = script.stored.get(attempt, [])
                lines = [
                    {"seq": i, "at": "2026-11-26T16:00:00.000Z", "text": t}
                    for i, t in enumerate(stored)
                ][start : start + 2]  # pages of two lines
                body = {"job_id": "job-1", "attempt": attempt, "lines": lines, "dropped": 0}
                self.send_json(200, dict(body, next_seq=start + len(lines)))
            else:
                self.send_json(404, {"error": {"code": "not_found", "message": "no such path"}})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield script, f"http://127.0.0.1:{httpd.server_address[1]}/api"
    httpd.shutdown()
    httpd.server_close()


def test_follow_reopens_a_dropped_stream_where_it_stopped(scripted: Tuple[Script, str]) -> None:
    script, url = scripted
    script.streams = [
        [line(0, "a"), line(1, "b")],  # dropped without `end`
        [line(1, "b"), line(2, "c"), ("attempt", {"attempt": 2}), line(0, "retry", 2), ("end", {"status": "succeeded"})],
    ]
    client = NexaForgeClient(api_url=url)
    got = [(l.attempt, l.seq, l.text) for l in client.logs("job-1", follow=True)]
    assert got == [(1, 0, "a"), (1, 1, "b"), (1, 2, "c"), (2, 0, "retry")]
    assert script.follow_queries[1]["attempt"] == ["1"]
    assert script.follow_queries[1]["from_seq"] == ["2"]


def test_follow_reads_the_stored_rest_when_the_job_ended_without_an_end_event(
    scripted: Tuple[Script, str],
) -> None:
    script, url = scripted
    script.streams = [[line(0, "a")]]
    script.status = "succeeded"
    script.stored = {1: ["a", "b", "c"], 2: ["again"]}
    client = NexaForgeClient(api_url=url)
    got = [(l.attempt, l.text) for l in client.logs("job-1", follow=True)]
    assert got == [(1, "a"), (1, "b"), (1, "c"), (2, "again")]
    assert script.log_queries[0]["from_seq"] == ["1"]


def test_follow_raises_the_error_event(scripted: Tuple[Script, str]) -> None:
    script, url = scripted
    script.streams = [[line(0, "a"), ("error", {"message": "the store failed"})]]
    lines = NexaForgeClient(api_url=url).logs("job-1", follow=True)
    assert next(lines).text == "a"
    with pytest.raises(NexaForgeError, match="the store failed"):
        next(lines)


def test_follow_from_seq_without_attempt_starts_at_the_latest(scripted: Tuple[Script, str]) -> None:
    script, url = scripted
    script.stored = {1: ["x"], 2: ["a", "b", "c"]}
    script.streams = [[line(2, "c", 2), ("end", {"status": "succeeded"})]]
    got = [(l.attempt, l.seq) for l in NexaForgeClient(api_url=url).logs("job-1", True, from_seq=2)]
    assert got == [(2, 2)]
    assert script.follow_queries[0]["attempt"] == ["2"]
    assert script.follow_queries[0]["from_seq"] == ["2"]


def test_stored_logs_page_until_empty(scripted: Tuple[Script, str]) -> None:
    script, url = scripted
    script.stored = {1: [f"l{i}" for i in range(5)]}
    client = NexaForgeClient(api_url=url)
    assert [l.text for l in client.logs("job-1")] == script.stored[1]
    assert [l.seq for l in client.logs("job-1", from_seq=3)] == [3, 4]


def test_an_api_error_from_a_scripted_server(scripted: Tuple[Script, str]) -> None:
    _, url = scripted
    with pytest.raises(NotFoundError, match="no such path"):
        NexaForgeClient(api_url=url).get_job("job-2")
