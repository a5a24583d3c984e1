"""Jobs as the API describes them: :class:`Job` with its :class:`Attempt`\\ s, :class:`Event`\\ s,
:class:`JobResult` or :class:`JobError`, and the :class:`LogLine`\\ s it prints.

Each record keeps the decoded JSON it was read from in ``raw`` and answers ``record["field"]``
from it, so code written against plain dict answers keeps working. Fields the server adds
later are in ``raw`` before this package knows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from .timestamps import parse_time

__all__ = [
    "JobStatus",
    "JobType",
    "Job",
    "JobPage",
    "JobResult",
    "JobError",
    "Attempt",
    "Event",
    "LogLine",
]


class _OpenStrEnum(str, Enum):
    """A str enum that also holds values it does not list, so a status or type added to the
    server later reads as a member (``JobStatus("paused")``) instead of raising."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, str):
            return None
        member = str.__new__(cls, value)
        member._name_ = value.upper()
        member._value_ = value
        return member

    def __str__(self) -> str:
        return str(self.value)


class JobStatus(_OpenStrEnum):
    """Where a job is in its life. Compares equal to its string: ``JobStatus.RUNNING == "running"``."""

    WAITING = "waiting"
    """Its dependencies have not all succeeded yet."""
    QUEUED = "queued"
    """Ready, waiting for a worker that fits."""
    ASSIGNED = "assigned"
    """Leased to a worker that has not started it yet."""
    RUNNING = "running"
    CANCELLING = "cancelling"
    """Cancel was asked; its worker is stopping it."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        """True for ``succeeded``, ``failed`` and ``cancelled``: the job will not change again."""
        return self.value in _FINISHED


_FINISHED = frozenset({"succeeded", "failed", "cancelled"})


class JobType(_OpenStrEnum):
    """The kinds of job. Compares equal to its string: ``JobType.TRAIN == "train"``."""

    GENERATE = "generate"
    AUDIT = "audit"
    DISTILL = "distill"
    TRAIN = "train"
    EVALUATE = "evaluate"
    DEPLOY = "deploy"


class _Raw:
    """Dict-style reads of the JSON a record was made from."""

    raw: Dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __contains__(self, key: object) -> bool:
        return key in self.raw

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def get(self, key: str, default: Any = None) -> Any:
        """``raw.get(key, default)``."""
        return self.raw.get(key, default)

    def keys(self) -> Any:
        """The raw field names."""
        return self.raw.keys()

    def to_dict(self) -> Dict[str, Any]:
        """The decoded JSON this record was read from."""
        return self.raw


def _dict(value: Any) -> Dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _opt_int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_float(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _opt_str(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


@dataclass
class JobResult(_Raw):
    """What a succeeded job produced."""

    metrics: Dict[str, float]
    """Named numbers, e.g. ``{"loss": 0.1}``."""
    artifacts: Dict[str, str]
    """Named URIs, e.g. ``{"model": "file:///..."}``."""
    output: Any
    """The stage's whole output document (for a handler, its ``result.json``), or ``None``."""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "JobResult":
        metrics = {
            str(k): float(v)
            for k, v in _dict(data.get("metrics")).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        artifacts = {str(k): str(v) for k, v in _dict(data.get("artifacts")).items()}
        return cls(metrics=metrics, artifacts=artifacts, output=data.get("output"), raw=dict(data))


@dataclass
class JobError(_Raw):
    """Why a job (or one attempt) failed or was cancelled."""

    error_class: str
    """``invalid_input``, ``stage_error``, ``worker_lost``, ``timeout``, ``cancelled`` or
    ``platform`` (the JSON field ``class``)."""
    message: str
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "JobError":
        return cls(
            error_class=_opt_str(data.get("class")) or "",
            message=_opt_str(data.get("message")) or "",
            raw=dict(data),
        )

    def __str__(self) -> str:
        return f"{self.error_class}: {self.message}" if self.error_class else self.message


@dataclass
class Attempt(_Raw):
    """One try at running a job, under one lease."""

    number: int
    worker_id: Optional[str]
    epoch: Optional[int]
    leased_at: Optional[datetime]
    started_at: Optional[datetime]
    lease_expires_at: Optional[datetime]
    deadline: Optional[datetime]
    ended_at: Optional[datetime]
    outcome: Optional[Dict[str, Any]]
    """``None`` while live, else ``{"status": "succeeded"}`` or
    ``{"status": "failed", "error": {...}}``."""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Attempt":
        outcome = data.get("outcome")
        return cls(
            number=_opt_int(data.get("number")) or 0,
            worker_id=_opt_str(data.get("worker_id")),
            epoch=_opt_int(data.get("epoch")),
            leased_at=parse_time(data.get("leased_at")),
            started_at=parse_time(data.get("started_at")),
            lease_expires_at=parse_time(data.get("lease_expires_at")),
            deadline=parse_time(data.get("deadline")),
            ended_at=parse_time(data.get("ended_at")),
            outcome=dict(outcome) if isinstance(outcome, Mapping) else None,
            raw=dict(data),
        )

    @property
    def is_live(self) -> bool:
        """True while the attempt has no outcome."""
        return self.outcome is None

    @property
    def outcome_status(self) -> Optional[str]:
        """``succeeded``, ``failed``, or ``None`` while live."""
        return _opt_str(self.outcome.get("status")) if self.outcome else None

    @property
    def outcome_error(self) -> Optional[JobError]:
        """The error of a failed attempt."""
        err = self.outcome.get("error") if self.outcome else None
        return JobError.from_dict(err) if isinstance(err, Mapping) else None


@dataclass
class Event(_Raw):
    """A change of a job's status."""

    at: Optional[datetime]
    from_status: Optional[JobStatus]
    """The status before (the JSON field ``from``); ``None`` for the job's first event."""
    to_status: Optional[JobStatus]
    """The status after (the JSON field ``to``)."""
    message: str
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Event":
        return cls(
            at=parse_time(data.get("at")),
            from_status=_status(data.get("from")),
            to_status=_status(data.get("to")),
            message=_opt_str(data.get("message")) or "",
            raw=dict(data),
        )


def _status(value: Any) -> Optional[JobStatus]:
    return JobStatus(value) if isinstance(value, str) else None


@dataclass
class LogLine(_Raw):
    """One line a job printed; ``seq`` numbers the lines of each attempt from 0."""

    seq: int
    text: str
    at: Optional[datetime]
    attempt: Optional[int]
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], attempt: Optional[int] = None) -> "LogLine":
        line_attempt = _opt_int(data.get("attempt"))
        return cls(
            seq=_opt_int(data.get("seq")) or 0,
            text=_opt_str(data.get("text")) or "",
            at=parse_time(data.get("at")),
            attempt=line_attempt if line_attempt is not None else attempt,
            raw=dict(data),
        )

    def __str__(self) -> str:
        return self.text


@dataclass(repr=False)
class Job(_Raw):
    """A job as the server last described it.

    A snapshot: it does not change by itself. Use :meth:`NexaForgeClient.get_job` or
    :meth:`NexaForgeClient.wait` for a newer one. ``job["status"]`` reads the raw JSON
    (a string), ``job.status`` the typed :class:`JobStatus`.
    """

    job_id: str
    job_type: JobType
    status: JobStatus
    params: Dict[str, Any]
    result: Optional[JobResult]
    """Set once the job succeeded."""
    error: Optional[JobError]
    """Set once the job failed or was cancelled."""
    progress: Optional[float]
    """0 to 1, as last reported by its worker."""
    worker_id: Optional[str]
    """The worker of the latest attempt."""
    attempt: Optional[int]
    """The number of the latest attempt (1 for the first); 0 before any."""
    attempts: List[Attempt]
    pending_reason: Optional[str]
    """Why a queued or waiting job has not started, for people."""
    priority: int
    max_attempts: Optional[int]
    timeout_seconds: Optional[float]
    resources: Dict[str, Any]
    depends_on: List[str]
    idempotency_key: Optional[str]
    created_at: Optional[datetime]
    updated_at: Optional[datetime]
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    not_before: Optional[datetime]
    """A retry waits until then."""
    events: Optional[List[Event]]
    """The job's status changes; only :meth:`NexaForgeClient.get_job` includes them."""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Job":
        result = data.get("result")
        error = data.get("error")
        attempts = data.get("attempts")
        events = data.get("events")
        depends_on = data.get("depends_on")
        return cls(
            job_id=str(data.get("job_id", "")),
            job_type=JobType(str(data.get("job_type", ""))),
            status=JobStatus(str(data.get("status", ""))),
            params=_dict(data.get("params")),
            result=JobResult.from_dict(result) if isinstance(result, Mapping) else None,
            error=JobError.from_dict(error) if isinstance(error, Mapping) else None,
            progress=_opt_float(data.get("progress")),
            worker_id=_opt_str(data.get("worker_id")),
            attempt=_opt_int(data.get("attempt")),
            attempts=[Attempt.from_dict(a) for a in attempts if isinstance(a, Mapping)]
            if isinstance(attempts, list)
            else [],
            pending_reason=_opt_str(data.get("pending_reason")),
            priority=_opt_int(data.get("priority")) or 0,
            max_attempts=_opt_int(data.get("max_attempts")),
            timeout_seconds=_opt_float(data.get("timeout_seconds")),
            resources=_dict(data.get("resources")),
            depends_on=[str(d) for d in depends_on] if isinstance(depends_on, list) else [],
            idempotency_key=_opt_str(data.get("idempotency_key")),
            created_at=parse_time(data.get("created_at")),
            updated_at=parse_time(data.get("updated_at")),
            started_at=parse_time(data.get("started_at")),
            finished_at=parse_time(data.get("finished_at")),
            not_before=parse_time(data.get("not_before")),
            events=[Event.from_dict(e) for e in events if isinstance(e, Mapping)]
            if isinstance(events, list)
            else None,
            raw=dict(data),
        )

    def __repr__(self) -> str:
        extra = ""
        if self.progress is not None and not self.is_finished:
            extra += f", progress={self.progress:g}"
        if self.error is not None:
            extra += f", error={str(self.error)!r}"
        return (
            f"Job(job_id={self.job_id!r}, job_type={str(self.job_type)!r}, "
            f"status={str(self.status)!r}{extra})"
        )

    @property
    def is_finished(self) -> bool:
        """True once the job succeeded, failed or was cancelled."""
        return self.status.is_finished

    @property
    def succeeded(self) -> bool:
        """True when the job succeeded."""
        return self.status == JobStatus.SUCCEEDED

    @property
    def pipeline(self) -> Optional[Tuple[str, str]]:
        """The pipeline run and step that made this job, as ``("pl-3", "train")``; ``None``
        when no pipeline did."""
        link = self.raw.get("pipeline")
        if not isinstance(link, Mapping):
            return None
        return str(link.get("pipeline_id", "")), str(link.get("step", ""))

    @property
    def replica_job_ids(self) -> List[str]:
        """A deploy of ``replicas=N`` is one deploy job per replica: on the job
        :meth:`NexaForgeClient.deploy` answers, the ids of all N, this one first. Empty
        otherwise (and on jobs read back later: the endpoint lists its replicas)."""
        ids = self.raw.get("replica_job_ids")
        return [str(i) for i in ids] if isinstance(ids, list) else []


class JobPage(List[Job]):
    """One page of :meth:`NexaForgeClient.list_jobs`: a list of jobs, newest first, and the
    cursor of the next page (``None`` on the last one)."""

    next_cursor: Optional[str]

    def __init__(self, jobs: List[Job], next_cursor: Optional[str]) -> None:
        super().__init__(jobs)
        self.next_cursor = next_cursor

    def __repr__(self) -> str:
        return f"JobPage({list.__repr__(self)}, next_cursor={self.next_cursor!r})"
