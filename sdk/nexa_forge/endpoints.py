"""Deployed models as ``GET /api/endpoints`` describes them.

A ``deploy`` job runs one replica of a model on a worker; once its smoke test passes the
replica is ready and the endpoint's stable URL routes requests to it. An :class:`Endpoint`
is a name with the :class:`Replica`\\ s (deploy jobs not finished) that serve it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from .jobs import JobStatus, _Raw, _opt_int, _opt_str

__all__ = ["Endpoint", "Replica"]


@dataclass
class Replica(_Raw):
    """One replica of an endpoint: a deploy job."""

    job_id: str
    """The deploy job; cancelling it undeploys this replica."""
    status: JobStatus
    """The deploy job's status (``queued``, ``assigned``, ``running``...)."""
    worker_id: Optional[str]
    """The worker it runs on, once placed."""
    url: Optional[str]
    """Where the replica itself serves, once ready."""
    ready: bool
    """Passed its smoke test and heard from lately: requests go to it."""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Replica":
        return cls(
            job_id=str(data.get("job_id", "")),
            status=JobStatus(_opt_str(data.get("status")) or ""),
            worker_id=_opt_str(data.get("worker_id")),
            url=_opt_str(data.get("url")),
            ready=data.get("ready") is True,
            raw=dict(data),
        )


@dataclass
class Endpoint(_Raw):
    """A deployed model: the name requests use and the replicas that serve it."""

    name: str
    """The deploy job's ``target``, or the model's name when the target is ``local``."""
    model_id: str
    """The model as the newest deploy job named it (``name`` or ``name:N``)."""
    ready_replicas: int
    """Replicas ready to answer."""
    predict_url: str
    """The stable URL of plain predictions (``POST {"inputs": [[...], ...]}``)."""
    infer_url: str
    """Its Open Inference Protocol URL (``POST .../v2/models/<name>/infer``)."""
    replicas: List[Replica]
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Endpoint":
        replicas = data.get("replicas")
        return cls(
            name=str(data.get("name", "")),
            model_id=_opt_str(data.get("model_id")) or "",
            ready_replicas=_opt_int(data.get("ready_replicas")) or 0,
            predict_url=_opt_str(data.get("predict_url")) or "",
            infer_url=_opt_str(data.get("infer_url")) or "",
            replicas=[Replica.from_dict(r) for r in replicas if isinstance(r, Mapping)]
            if isinstance(replicas, list)
            else [],
            raw=dict(data),
        )

    @property
    def is_ready(self) -> bool:
        """True while at least one replica is ready to answer."""
        return self.ready_replicas >= 1

    def replica(self, job_id: str) -> Optional[Replica]:
        """The replica run by deploy job ``job_id``, or ``None``."""
        for r in self.replicas:
            if r.job_id == job_id:
                return r
        return None
