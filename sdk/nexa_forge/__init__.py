"""Python client for Nexa Forge: submit ML lifecycle jobs (generate, audit, distill, train,
evaluate, deploy), follow their logs, and wait for their results over the HTTP API.

Example::

    from nexa_forge import NexaForgeClient

    client = NexaForgeClient()                    # http://localhost:8000/api, or $NEXA_API_URL
    job = client.generate(domain="physics", num_samples=100)
    for line in client.logs(job, follow=True):    # ends when the job ends
        print(line.text)
    job = client.wait(job)
    print(job.status, job.result.metrics if job.result else job.error)

The package has no dependencies beyond the standard library.
"""

from .client import DEFAULT_API_URL, JobRef, NexaForgeClient, __version__
from .errors import (
    AuthenticationError,
    ConflictError,
    NexaForgeError,
    NotFoundError,
    ServerUnavailableError,
    ValidationError,
    WaitTimeoutError,
)
from .jobs import Attempt, Event, Job, JobError, JobPage, JobResult, JobStatus, JobType, LogLine
from .workers import Worker

__all__ = [
    "NexaForgeClient",
    "DEFAULT_API_URL",
    "JobRef",
    "Job",
    "JobPage",
    "JobStatus",
    "JobType",
    "JobResult",
    "JobError",
    "Attempt",
    "Event",
    "LogLine",
    "Worker",
    "NexaForgeError",
    "ValidationError",
    "AuthenticationError",
    "NotFoundError",
    "ConflictError",
    "ServerUnavailableError",
    "WaitTimeoutError",
    "__version__",
]
