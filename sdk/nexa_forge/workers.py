"""Workers as ``GET /api/workers`` describes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional

from .jobs import _Raw, _dict, _opt_int, _opt_str
from .timestamps import parse_time

__all__ = ["Worker"]


@dataclass
class Worker(_Raw):
    """A worker known to the control plane."""

    worker_id: str
    status: str
    """``alive``, ``draining`` or ``lost``."""
    cpus: Optional[int]
    memory_mb: Optional[int]
    gpus: List[Dict[str, Any]]
    """Each ``{"model": "H100", "memory_mb": 81559}``."""
    labels: Dict[str, str]
    job_types: List[str]
    registered_at: Optional[datetime]
    last_heartbeat: Optional[datetime]
    running_jobs: List[str]
    """The ids of the jobs it runs now."""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Worker":
        gpus = data.get("gpus")
        job_types = data.get("job_types")
        running = data.get("running_jobs")
        return cls(
            worker_id=str(data.get("worker_id", "")),
            status=_opt_str(data.get("status")) or "",
            cpus=_opt_int(data.get("cpus")),
            memory_mb=_opt_int(data.get("memory_mb")),
            gpus=[dict(g) for g in gpus if isinstance(g, Mapping)] if isinstance(gpus, list) else [],
            labels={str(k): str(v) for k, v in _dict(data.get("labels")).items()},
            job_types=[str(t) for t in job_types] if isinstance(job_types, list) else [],
            registered_at=parse_time(data.get("registered_at")),
            last_heartbeat=parse_time(data.get("last_heartbeat")),
            running_jobs=[str(j) for j in running] if isinstance(running, list) else [],
            raw=dict(data),
        )

    @property
    def is_alive(self) -> bool:
        """True while the worker heartbeats."""
        return self.status == "alive"
