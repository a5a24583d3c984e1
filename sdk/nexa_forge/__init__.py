"""Python client for Nexa Forge: submit ML lifecycle jobs (generate, audit, distill, train,
evaluate, deploy), follow their logs, wait for their results, download the artifacts they
made, read the model registry, ask deployed models for predictions, and run the lifecycle as
one pipeline of steps and gates, over the HTTP API.

Example::

    from nexa_forge import NexaForgeClient

    client = NexaForgeClient()                    # http://localhost:8000/api, or $NEXA_API_URL
    job = client.generate(domain="physics", num_samples=100)
    for line in client.logs(job, follow=True):    # ends when the job ends
        print(line.text)
    job = client.wait(job)
    print(job.status, job.result.metrics if job.result else job.error)
    client.download(job.result.artifacts["dataset"])   # the generated Parquet file

    p = client.pipeline("physics")                # the lifecycle as one pipeline
    data = p.generate(domain="physics", num_samples=2000)
    teacher = p.train(model_id="teacher", dataset_uri=data.dataset, epochs=8)
    p.gate(p.evaluate(teacher.model, data.dataset), min_metrics={"accuracy": 0.8})
    run = client.wait_pipeline(p.run())
    print(run.status, run.failed_step, run.error)

The package has no dependencies beyond the standard library.
"""

from .artifacts import (
    ARTIFACT_URI_PREFIX,
    Artifact,
    ArtifactKind,
    Model,
    ModelSummary,
    ModelVersion,
    artifact_digest,
)
from .client import (
    DEFAULT_API_URL,
    ArtifactRef,
    EndpointRef,
    JobRef,
    NexaForgeClient,
    PipelineRef,
    __version__,
)
from .endpoints import Endpoint, Replica
from .errors import (
    AuthenticationError,
    ConflictError,
    IntegrityError,
    NexaForgeError,
    NotFoundError,
    ServerUnavailableError,
    ValidationError,
    WaitTimeoutError,
)
from .jobs import Attempt, Event, Job, JobError, JobPage, JobResult, JobStatus, JobType, LogLine
from .pipelines import (
    GateVerdict,
    Pipeline,
    PipelineEvent,
    PipelineRun,
    PipelineStatus,
    PipelineStep,
    StepOutputs,
    StepRef,
    StepStatus,
)
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
    "ArtifactRef",
    "Artifact",
    "ArtifactKind",
    "ARTIFACT_URI_PREFIX",
    "artifact_digest",
    "Model",
    "ModelSummary",
    "ModelVersion",
    "EndpointRef",
    "Endpoint",
    "Replica",
    "PipelineRef",
    "Pipeline",
    "StepRef",
    "PipelineRun",
    "PipelineStatus",
    "PipelineStep",
    "StepStatus",
    "StepOutputs",
    "GateVerdict",
    "PipelineEvent",
    "NexaForgeError",
    "ValidationError",
    "AuthenticationError",
    "NotFoundError",
    "ConflictError",
    "ServerUnavailableError",
    "WaitTimeoutError",
    "IntegrityError",
    "__version__",
]
