"""The client: :class:`NexaForgeClient`.

Its methods come in groups:

- **submit**: :meth:`~NexaForgeClient.submit` for any job type, and one helper per type
  (:meth:`~NexaForgeClient.generate`, :meth:`~NexaForgeClient.audit`,
  :meth:`~NexaForgeClient.distill`, :meth:`~NexaForgeClient.train`,
  :meth:`~NexaForgeClient.evaluate`, :meth:`~NexaForgeClient.deploy`) that builds the
  parameters. Every one takes the job options (``priority``, ``max_attempts``,
  ``timeout_seconds``, ``resources``, ``depends_on``, ``idempotency_key``) as keywords.
- **read**: :meth:`~NexaForgeClient.get_job`, :meth:`~NexaForgeClient.list_jobs` (one page),
  :meth:`~NexaForgeClient.iter_jobs` (every page), :meth:`~NexaForgeClient.events`,
  :meth:`~NexaForgeClient.logs`, :meth:`~NexaForgeClient.workers`,
  :meth:`~NexaForgeClient.health`.
- **wait**: :meth:`~NexaForgeClient.wait` polls until a job finishes;
  ``logs(job, follow=True)`` streams its lines as they are printed and ends when it finishes.
- **change**: :meth:`~NexaForgeClient.cancel`.
- **artifacts and models**: :meth:`~NexaForgeClient.artifact`,
  :meth:`~NexaForgeClient.artifacts` (what a job made), :meth:`~NexaForgeClient.download`
  (checked against its SHA-256), :meth:`~NexaForgeClient.models` and
  :meth:`~NexaForgeClient.model` (the model registry).
- **deployed models**: :meth:`~NexaForgeClient.endpoints` and
  :meth:`~NexaForgeClient.endpoint` (what ``deploy`` jobs serve),
  :meth:`~NexaForgeClient.wait_ready` (polls until a replica answers) and
  :meth:`~NexaForgeClient.predict` (rows in, predictions out); cancelling the deploy job
  undeploys.
- **pipelines**: :meth:`~NexaForgeClient.pipeline` builds one step by step,
  :meth:`~NexaForgeClient.run_pipeline` runs it (or a spec as a dict),
  :meth:`~NexaForgeClient.get_pipeline`, :meth:`~NexaForgeClient.list_pipelines`,
  :meth:`~NexaForgeClient.wait_pipeline` (polls until the run ends),
  :meth:`~NexaForgeClient.cancel_pipeline` and :meth:`~NexaForgeClient.rerun_pipeline`
  (reusing the steps whose work is unchanged).

Every failure raises a :class:`~nexa_forge.NexaForgeError` subclass. No request is retried
on its own; only a followed log stream that drops is reopened where it stopped.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import re
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
    overload,
)

from .artifacts import Artifact, Model, ModelSummary, ModelVersion, artifact_digest
from .endpoints import Endpoint
from .errors import IntegrityError, NexaForgeError, NotFoundError, WaitTimeoutError
from .jobs import Event, Job, JobPage, JobStatus, JobType, LogLine
from .pipelines import Pipeline, PipelineRun, PipelineStep, StepRef, StepStatus, _step_name
from .sse import read_events
from .transport import Transport
from .workers import Worker

__all__ = [
    "NexaForgeClient",
    "DEFAULT_API_URL",
    "JobRef",
    "ArtifactRef",
    "EndpointRef",
    "PipelineRef",
]

__version__ = "0.1.0"

DEFAULT_API_URL = "http://localhost:8000/api"
"""Where ``nexa up`` serves the API by default."""

JobRef = Union[str, Job]
"""A job, or its id (``"job-42"``)."""

ArtifactRef = Union[str, Artifact, ModelVersion]
"""An artifact: its URI (``nexa://artifacts/<sha256>``), the SHA-256 alone, an
:class:`Artifact`, or a :class:`ModelVersion` (its weights)."""

EndpointRef = Union[str, Endpoint]
"""An endpoint, or its name (``"iris"``)."""

PipelineRef = Union[str, PipelineRun]
"""A pipeline run, or its id (``"pl-3"``)."""

HyperparameterValue = Union[bool, int, float, str]

_DOWNLOAD_CHUNK = 1 << 20

_JOB_OPTIONS = (
    "priority",
    "max_attempts",
    "timeout_seconds",
    "resources",
    "depends_on",
    "idempotency_key",
)

# What `wait_ready` takes for a deploy job's id rather than an endpoint's name.
_JOB_ID = re.compile(r"^job-[0-9]+$")

# A follow stream that ended without its `end` event, and brought no new line, is reopened
# after this pause, so a server that keeps closing it is not asked in a tight loop.
_RECONNECT_PAUSE = 0.5


class NexaForgeClient:
    """A client of one Nexa Forge server.

    Args:
        api_url: the API's base URL. When ``None``, ``$NEXA_API_URL``, else
            ``http://localhost:8000/api`` (where ``nexa up`` serves it). Several, separated
            by commas, for control planes sharing one database: the client asks the one that
            answered last, and the others while nothing listens there (a standby).
        token: a token from ``nexa token create``, sent as ``Authorization: Bearer``.
            When ``None``, ``$NEXA_TOKEN``; none is needed by a server that has no tokens and
            listens on loopback.
        timeout: seconds to wait for the connection and for each read.

    The client holds no connection, so one client may be shared between threads.

    Example::

        from nexa_forge import NexaForgeClient

        client = NexaForgeClient()
        job = client.generate(domain="physics", num_samples=100)
        job = client.wait(job, timeout=600)
        print(job.status, job.result.metrics if job.result else job.error)
    """

    def __init__(
        self,
        api_url: Optional[str] = None,
        token: Optional[str] = None,
        timeout: float = 30.0,
    ) -> None:
        if api_url is None:
            api_url = os.environ.get("NEXA_API_URL") or DEFAULT_API_URL
        if token is None:
            token = os.environ.get("NEXA_TOKEN") or None
        # One URL, or several separated by commas: control planes sharing a database, of
        # which the leader answers.
        urls = [u.strip() for u in api_url.split(",") if u.strip()] or [api_url]
        for url in urls:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    f"api_url {url!r} is not an http(s) URL; "
                    f"expected something like {DEFAULT_API_URL!r}"
                )
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self._transport = Transport(
            api_url, token, float(timeout), user_agent=f"nexa-forge-python/{__version__}"
        )

    @property
    def api_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._transport.api_url

    @property
    def timeout(self) -> float:
        """Seconds each connection and read may take."""
        return self._transport.timeout

    def __repr__(self) -> str:
        token = "set" if self._transport.token else "none"
        return f"NexaForgeClient(api_url={self.api_url!r}, token={token})"

    def close(self) -> None:
        """Closes the connections this thread keeps open to the server (the client keeps one
        per thread, reused from call to call). The client may still be used: it connects
        again."""
        self._transport.close()

    def __enter__(self) -> "NexaForgeClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- submit

    def submit(
        self,
        job_type: Union[str, JobType],
        params: Mapping[str, Any],
        *,
        priority: Optional[int] = None,
        max_attempts: Optional[int] = None,
        timeout_seconds: Optional[float] = None,
        resources: Optional[Mapping[str, Any]] = None,
        depends_on: Optional[Sequence[JobRef]] = None,
        idempotency_key: Optional[str] = None,
    ) -> Job:
        """Submits a job and answers it as created (usually ``queued``, or ``waiting`` on
        ``depends_on``).

        Args:
            job_type: ``generate``, ``audit``, ``distill``, ``train``, ``evaluate`` or
                ``deploy``.
            params: the type's parameters, as in the API (the helper methods build them).
            priority: -1000 to 1000; higher runs first (server default 0).
            max_attempts: failures of the job itself allowed, 1 to 100 (server default 3);
                attempts lost to the platform (a worker that died) do not count.
            timeout_seconds: how long one attempt may run, 1 s to 30 days (default 1 day).
            resources: ``{"gpus": 1, "gpu_memory_mb": 0, "labels": {"region": "eu"}}``.
            depends_on: jobs that must succeed first; if one fails, this one is cancelled.
            idempotency_key: submitting again with the same key and spec answers the first
                job instead of making another; with another spec it raises ConflictError.

        Raises:
            ValidationError: a parameter or option is invalid; ``field`` names it.
            ConflictError: ``idempotency_key`` was used before with another spec.
        """
        body = _submit_body(
            job_type,
            params,
            priority=priority,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
            resources=resources,
            depends_on=depends_on,
            idempotency_key=idempotency_key,
        )
        _, data = self._transport.request("POST", "/jobs", body=body)
        return Job.from_dict(_object(data, "POST /jobs"))

    def submit_many(self, jobs: Sequence[Mapping[str, Any]]) -> List[str]:
        """Submits several jobs in one request and one transaction: all of them, or none.
        Answers their ids, in order.

        Each job is a mapping of :meth:`submit`'s arguments: ``job_type`` and ``params``, and
        any of ``priority``, ``max_attempts``, ``timeout_seconds``, ``resources``,
        ``depends_on`` (jobs submitted before) and ``idempotency_key`` (each job its own; a
        batch sent again with the same keys answers the same jobs). At most 1,000 jobs a
        call; a deploy of several replicas is submitted on its own.

        Raises:
            ValidationError: a job is invalid; ``field`` names it, as ``jobs[3].params.seed``,
                and no job was made.
            ConflictError: a job's ``idempotency_key`` was used before with another spec.
        """
        bodies = []
        for i, job in enumerate(jobs):
            if not isinstance(job, Mapping):
                raise TypeError(f"jobs[{i}] must be a mapping, not {type(job).__name__}")
            options = dict(job)
            try:
                job_type = options.pop("job_type")
            except KeyError:
                raise ValueError(f"jobs[{i}] has no job_type") from None
            params = options.pop("params", {})
            unknown = sorted(set(options) - set(_JOB_OPTIONS))
            if unknown:
                raise TypeError(f"jobs[{i}] has unknown options: {', '.join(unknown)}")
            bodies.append(_submit_body(job_type, params, **options))
        if not bodies:
            return []
        _, data = self._transport.request("POST", "/jobs/batch", body={"jobs": bodies})
        answered = _object(data, "POST /jobs/batch").get("jobs")
        if not isinstance(answered, list):
            raise NexaForgeError("POST /jobs/batch answered no jobs")
        return [str(j.get("job_id")) for j in answered if isinstance(j, Mapping)]

    # The helpers send only what they are given: the server applies every default, so a
    # default is defined once, there (see each parameter's ``default`` in the docs).

    def generate(
        self,
        domain: str,
        num_samples: int,
        seed: Optional[int] = None,
        *,
        task: Optional[str] = None,
        classes: Optional[int] = None,
        noise: Optional[float] = None,
        options: Optional[Mapping[str, Any]] = None,
        **job_options: Any,
    ) -> Job:
        """Submits a ``generate`` job: ``num_samples`` (1 to 10,000,000) synthetic examples
        for ``domain`` (``physics``, ``circuits``, a problem such as ``pendulum``, or
        ``domain/problem``). ``task`` is ``"classification"`` (default; ``classes``, 2 to
        64, default 4) or ``"regression"``; ``noise`` the relative measurement noise (0 to
        0.5, default 0.01); ``options`` go to a ``--handler`` program untouched.
        ``job_options`` are :meth:`submit`'s job options."""
        params = _generate_params(
            domain=domain,
            num_samples=num_samples,
            seed=seed,
            task=task,
            classes=classes,
            noise=noise,
            options=options,
        )
        return self._submit_with("generate", params, job_options)

    def audit(
        self,
        dataset_uri: str,
        label_column: Optional[str] = None,
        expected_sha256: Optional[str] = None,
        *,
        options: Optional[Mapping[str, Any]] = None,
        **job_options: Any,
    ) -> Job:
        """Submits an ``audit`` job: rows, columns, duplicates, missing values and outliers of
        a CSV, JSON Lines or Parquet file (a path or a ``nexa://``, ``file://``, ``s3://``,
        ``gs://``, ``http(s)://`` URI), the class balance of ``label_column``, and a check of
        the file against ``expected_sha256``. ``job_options`` are :meth:`submit`'s job
        options."""
        params = _audit_params(
            dataset_uri=dataset_uri,
            label_column=label_column,
            expected_sha256=expected_sha256,
            options=options,
        )
        return self._submit_with("audit", params, job_options)

    def distill(
        self,
        teacher_model: str,
        student_model: str,
        dataset_uri: str,
        temperature: Optional[float] = None,
        epochs: Optional[int] = None,
        *,
        alpha: Optional[float] = None,
        hyperparameters: Optional[Mapping[str, HyperparameterValue]] = None,
        prompt_template: Optional[str] = None,
        options: Optional[Mapping[str, Any]] = None,
        **job_options: Any,
    ) -> Job:
        """Submits a ``distill`` job: trains ``student_model`` to imitate ``teacher_model``
        (a registered model) on ``dataset_uri``, at ``temperature`` (default 2) with
        ``alpha`` the weight of the hard labels (default 0.5), for ``epochs`` (default 3),
        with the trainer's ``hyperparameters``. ``prompt_template`` and ``options`` are for
        a ``--handler`` program (the built-in stage refuses them). ``job_options`` are
        :meth:`submit`'s job options."""
        params = _distill_params(
            teacher_model=teacher_model,
            student_model=student_model,
            dataset_uri=dataset_uri,
            temperature=temperature,
            epochs=epochs,
            alpha=alpha,
            hyperparameters=hyperparameters,
            prompt_template=prompt_template,
            options=options,
        )
        return self._submit_with("distill", params, job_options)

    def train(
        self,
        model_id: str,
        dataset_uri: str,
        epochs: Optional[int] = None,
        *,
        hyperparameters: Optional[Mapping[str, HyperparameterValue]] = None,
        options: Optional[Mapping[str, Any]] = None,
        priority: Optional[int] = None,
        max_attempts: Optional[int] = None,
        timeout_seconds: Optional[float] = None,
        resources: Optional[Mapping[str, Any]] = None,
        depends_on: Optional[Sequence[JobRef]] = None,
        idempotency_key: Optional[str] = None,
        **more_hyperparameters: HyperparameterValue,
    ) -> Job:
        """Submits a ``train`` job: ``model_id`` is the name the model is registered under,
        ``epochs`` passes over ``dataset_uri`` (default 1).

        Extra keywords are hyperparameters (numbers, strings or booleans), sent as
        ``params.hyperparameters``: ``client.train("mlp", "data.csv", learning_rate=3e-4)``.
        Names that are not Python identifiers (``"optimizer/beta1"``) go in
        ``hyperparameters={...}``; both are merged, the keywords winning. ``options`` go to a
        ``--handler`` program untouched. The job options are named keywords here, so they
        never become hyperparameters.
        """
        params = _train_params(
            model_id=model_id,
            dataset_uri=dataset_uri,
            epochs=epochs,
            hyperparameters=hyperparameters,
            options=options,
            more_hyperparameters=more_hyperparameters,
        )
        return self.submit(
            "train",
            params,
            priority=priority,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
            resources=resources,
            depends_on=depends_on,
            idempotency_key=idempotency_key,
        )

    def evaluate(
        self,
        model_id: str,
        dataset_uri: Optional[str] = None,
        metrics: Optional[Sequence[str]] = None,
        *,
        split: Optional[str] = None,
        suite: Optional[str] = None,
        options: Optional[Mapping[str, Any]] = None,
        **job_options: Any,
    ) -> Job:
        """Submits an ``evaluate`` job scoring ``model_id`` (``name`` or ``name:version``) on
        ``dataset_uri``: on its ``split`` (``train``, ``validation``, ``test`` or ``all``;
        by default the test part of a dataset that records a split), reporting ``metrics``
        (e.g. ``["accuracy", "macro_f1"]``; none means all). ``suite`` names a benchmark
        suite for a ``--handler`` program. ``job_options`` are :meth:`submit`'s job
        options."""
        params = _evaluate_params(
            model_id=model_id,
            dataset_uri=dataset_uri,
            metrics=metrics,
            split=split,
            suite=suite,
            options=options,
        )
        return self._submit_with("evaluate", params, job_options)

    def deploy(
        self,
        model_id: str,
        target: Optional[str] = None,
        replicas: Optional[int] = None,
        *,
        region: Optional[str] = None,
        options: Optional[Mapping[str, Any]] = None,
        **job_options: Any,
    ) -> Job:
        """Submits a ``deploy`` job: a replica serving ``model_id`` (a registered ``name`` or
        ``name:N``) on a worker, ready once its smoke test passes.

        ``target`` names the endpoint requests use; the default, ``local``, names it after the
        model (``iris:2`` serves as ``iris``). ``region`` places it on a worker labelled
        ``region=REGION``. ``replicas`` (1 to 64, default 1) makes one deploy job per
        replica, each placed, supervised and restarted on its own; the endpoint routes to
        every ready one. The job answered is the first; its :attr:`Job.replica_job_ids` lists
        all of them. ``job_options`` are :meth:`submit`'s job options.

        A replica's job stays ``running`` while it serves. :meth:`undeploy` the endpoint to
        stop every replica (cancelling one job stops that replica). Use :meth:`wait_ready` to
        wait until it answers and :meth:`predict` to ask it.
        """
        params = _deploy_params(
            model_id=model_id,
            target=target,
            replicas=replicas,
            region=region,
            options=options,
        )
        return self._submit_with("deploy", params, job_options)

    def _submit_with(self, job_type: str, params: Dict[str, Any], job_options: Dict[str, Any]) -> Job:
        unknown = sorted(set(job_options) - set(_JOB_OPTIONS))
        if unknown:
            raise TypeError(
                f"{job_type}() got unexpected keyword argument(s) {', '.join(unknown)}; "
                f"the job options are {', '.join(_JOB_OPTIONS)}"
            )
        return self.submit(job_type, params, **job_options)

    # ---------------------------------------------------------------- read

    def get_job(self, job_id: JobRef) -> Job:
        """The job now, with its :attr:`~Job.events`.

        Raises:
            NotFoundError: there is no such job.
        """
        path = f"/jobs/{_quote(_job_id(job_id))}"
        _, data = self._transport.request("GET", path)
        return Job.from_dict(_object(data, f"GET {path}"))

    def list_jobs(
        self,
        status: Optional[Union[str, JobStatus]] = None,
        job_type: Optional[Union[str, JobType]] = None,
        worker: Optional[str] = None,
        limit: int = 50,
        cursor: Optional[str] = None,
    ) -> JobPage:
        """One page of jobs, newest first: a list with a ``next_cursor`` attribute.

        Pass ``cursor=page.next_cursor`` for the next page; it is ``None`` on the last.
        :meth:`iter_jobs` walks every page for you.

        Args:
            status: only jobs in this status.
            job_type: only jobs of this type.
            worker: only jobs with an attempt on this worker.
            limit: jobs per page, 1 to 500.
            cursor: where the page starts (``next_cursor`` of the page before).
        """
        query = {
            "status": status,
            "type": job_type,
            "worker": worker,
            "limit": limit,
            "cursor": cursor,
        }
        _, data = self._transport.request("GET", "/jobs", query=query)
        body = _object(data, "GET /jobs")
        jobs = body.get("jobs")
        next_cursor = body.get("next_cursor")
        return JobPage(
            [Job.from_dict(j) for j in jobs if isinstance(j, Mapping)]
            if isinstance(jobs, list)
            else [],
            next_cursor if isinstance(next_cursor, str) and next_cursor else None,
        )

    def iter_jobs(
        self,
        status: Optional[Union[str, JobStatus]] = None,
        job_type: Optional[Union[str, JobType]] = None,
        worker: Optional[str] = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Every job that matches, newest first, fetching pages of ``page_size`` as it goes."""
        cursor: Optional[str] = None
        seen: Set[str] = set()
        while True:
            page = self.list_jobs(status, job_type, worker, limit=page_size, cursor=cursor)
            for job in page:
                yield job
            if page.next_cursor is None or page.next_cursor in seen:
                return
            seen.add(page.next_cursor)
            cursor = page.next_cursor

    @overload
    def events(self, job_id: JobRef) -> List[Event]: ...

    @overload
    def events(self, job_id: JobRef, follow: Literal[False]) -> List[Event]: ...

    @overload
    def events(self, job_id: JobRef, follow: Literal[True]) -> Iterator[Event]: ...

    def events(self, job_id: JobRef, follow: bool = False) -> Union[List[Event], Iterator[Event]]:
        """The job's status changes, oldest first.

        With ``follow``, an iterator that yields them as they are stored, pushed by the
        server (an event stream), and ends once the job has finished. A stream that drops is
        reopened, and no event is yielded twice.
        """
        jid = _job_id(job_id)
        path = f"/jobs/{_quote(jid)}/events"
        if follow:
            return self._follow_events(jid, path)
        _, data = self._transport.request("GET", path)
        events = _object(data, f"GET {path}").get("events")
        if not isinstance(events, list):
            return []
        return [Event.from_dict(e) for e in events if isinstance(e, Mapping)]

    def _stream(
        self, path: str, query: Mapping[str, Any], what: str
    ) -> Iterator[Tuple[str, Mapping[str, Any]]]:
        """The events of one event stream as (name, data), up to its ``end`` (yielded, with
        no data); an ``error`` event raises. A read that fails raises as it does."""
        with self._transport.open_stream(path, query) as resp:
            for ev in read_events(resp):
                if ev.event == "end":
                    yield "end", {}
                    return
                data = _json_or_none(ev.data)
                if not isinstance(data, Mapping):
                    continue
                if ev.event == "error":
                    raise NexaForgeError(
                        f"following {what} failed: "
                        f"{data.get('message') or 'the server gave no reason'}",
                        code="stream_error",
                    )
                yield ev.event, data

    def _follow_events(self, job_id: str, path: str) -> Iterator[Event]:
        seen = 0
        while True:
            progressed = False
            try:
                query = {"follow": True, "from": seen}
                for event, data in self._stream(path, query, f"the events of {job_id}"):
                    if event == "end":
                        return
                    if event == "event":
                        index = data.get("index")
                        if isinstance(index, int) and index < seen:
                            continue
                        seen = index + 1 if isinstance(index, int) else seen + 1
                        progressed = True
                        yield Event.from_dict(data)
            except (OSError, http.client.HTTPException):
                pass  # a read timed out or the connection dropped: reopen where it stopped
            if not progressed:
                if self.get_job(job_id).is_finished:
                    yield from self.events(job_id)[seen:]
                    return
                time.sleep(_RECONNECT_PAUSE)

    def logs(
        self,
        job_id: JobRef,
        follow: bool = False,
        *,
        attempt: Optional[int] = None,
        from_seq: int = 0,
    ) -> Iterator[LogLine]:
        """The lines the job printed, in order.

        Without ``follow``, the lines stored now of ``attempt`` (by default the latest),
        from ``from_seq`` on, fetched page by page.

        With ``follow``, the lines as they are printed, through the event stream: it starts
        with the lines already stored, goes on across new attempts (each line carries its
        ``attempt``), and ends when the job has finished and every line was sent. It starts
        at ``attempt``, by default the first, so every attempt of a retried job shows; given
        ``from_seq`` without ``attempt``, at the latest. A stream that drops is reopened
        where it stopped.

        The iterator is lazy: nothing is fetched until the first ``next()``. Close it (or
        ``break`` out of the loop) to stop following early.
        """
        job = _job_id(job_id)
        if follow:
            return self._follow_logs(job, attempt, from_seq)
        return self._stored_logs(job, attempt, from_seq)

    def _stored_logs(
        self, job_id: str, attempt: Optional[int], from_seq: int, page: int = 1000
    ) -> Iterator[LogLine]:
        path = f"/jobs/{_quote(job_id)}/logs"
        seq = from_seq
        while True:
            query = {"attempt": attempt, "from_seq": seq, "limit": page}
            _, data = self._transport.request("GET", path, query=query)
            body = _object(data, f"GET {path}")
            body_attempt = body.get("attempt")
            if isinstance(body_attempt, int) and not isinstance(body_attempt, bool):
                attempt = body_attempt  # later pages read the same attempt
            lines = body.get("lines")
            if not isinstance(lines, list) or not lines:
                return
            for line in lines:
                if isinstance(line, Mapping):
                    yield LogLine.from_dict(line, attempt=attempt)
            next_seq = body.get("next_seq")
            if not isinstance(next_seq, int) or next_seq <= seq:
                return
            seq = next_seq

    def _follow_logs(
        self, job_id: str, attempt: Optional[int], from_seq: int
    ) -> Iterator[LogLine]:
        path = f"/jobs/{_quote(job_id)}/logs"
        if attempt is None and from_seq > 0:
            # `from_seq` counts within one attempt; without one, it means the latest.
            attempt = self.get_job(job_id).attempt or None
        # The highest seq yielded per attempt: a reopened stream may repeat lines.
        last_seq: Dict[int, int] = {}
        if attempt is not None:
            last_seq[attempt] = from_seq - 1
        current = attempt
        while True:
            query: Dict[str, Any] = {"follow": True}
            if current is not None:
                query["attempt"] = current
                query["from_seq"] = last_seq.get(current, -1) + 1
            progressed = False
            try:
                for event, data in self._stream(path, query, f"the logs of {job_id}"):
                    if event == "end":
                        return
                    if event == "attempt":
                        number = data.get("attempt")
                        if isinstance(number, int) and not isinstance(number, bool):
                            current = number
                    elif event == "log":
                        line = LogLine.from_dict(data, attempt=current)
                        key = line.attempt if line.attempt is not None else -1
                        if line.seq <= last_seq.get(key, -1):
                            continue
                        last_seq[key] = line.seq
                        current = line.attempt
                        progressed = True
                        yield line
            except (OSError, http.client.HTTPException):
                pass  # a read timed out or the connection dropped: look at the job, reopen
            # The stream stopped without `end`. If the job has finished, its stored lines
            # are complete: read what is left of them, attempt by attempt, and stop.
            job = self.get_job(job_id)
            if job.is_finished:
                first = current if current is not None else 1
                for number in range(first, (job.attempt or 0) + 1):
                    start = last_seq.get(number, -1) + 1
                    for line in self._stored_logs(job_id, number, start):
                        yield line
                return
            if not progressed:
                time.sleep(_RECONNECT_PAUSE)

    # ---------------------------------------------------------------- wait

    def wait(
        self,
        job_id: JobRef,
        timeout: Optional[float] = None,
        poll_interval: float = 1.0,
    ) -> Job:
        """Waits until the job has finished (succeeded, failed or cancelled) and answers it.

        A failed or cancelled job is answered, not raised: look at ``job.status`` and
        ``job.error``. The server answers the moment the job's end is stored (a long poll,
        asked again every 25 s at most, within the client's ``timeout``), so nothing sleeps
        in between; ``poll_interval`` is not used any more and stays for compatibility.

        Raises:
            WaitTimeoutError: still unfinished after ``timeout`` seconds (a
                :class:`TimeoutError`); the job goes on, and the error holds it as last seen.
        """
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval!r}")
        jid = _job_id(job_id)
        path = f"/jobs/{_quote(jid)}/wait"
        deadline = None if timeout is None else time.monotonic() + timeout
        # Each ask ends well within the transport's read timeout.
        longest = min(_LONGEST_WAIT, self.timeout * 0.8)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            ask = longest if left is None else max(min(longest, left), 0.001)
            _, data = self._transport.request("GET", path, query={"timeout": f"{ask:.3f}"})
            job = Job.from_dict(_object(data, f"GET {path}"))
            if job.is_finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"job {jid} is still {job.status} after {timeout:g} s", job_id=jid, job=job
                )

    def wait_many(
        self,
        jobs: Sequence[JobRef],
        timeout: Optional[float] = None,
        return_when: str = "all",
    ) -> Tuple[List[Job], List[str]]:
        """Waits for several jobs, as :func:`concurrent.futures.wait` does: until all of them
        have finished (``return_when="all"``) or the first one has (``"any"``), or
        ``timeout`` seconds have passed. Answers ``(done, pending)``: the finished jobs, and
        the ids of the others, in the order given. The server answers the moment the jobs'
        ends are stored; nothing polls.
        """
        if return_when not in ("all", "any"):
            raise ValueError(f'return_when must be "all" or "any", not {return_when!r}')
        ids = [_job_id(j) for j in jobs]
        if not ids:
            return [], []
        deadline = None if timeout is None else time.monotonic() + timeout
        longest = min(_LONGEST_WAIT, self.timeout * 0.8)
        done: Dict[str, Job] = {}
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            ask = longest if left is None else max(min(longest, left), 0.001)
            pending = [i for i in ids if i not in done]
            # The server takes at most 10,000 ids an ask.
            chunk = pending[:_WAIT_MANY_CHUNK]
            body = {"job_ids": chunk, "timeout": round(ask, 3), "return_when": return_when}
            _, data = self._transport.request("POST", "/jobs/wait", body=body)
            answered = _object(data, "POST /jobs/wait").get("done")
            for item in answered if isinstance(answered, list) else []:
                if isinstance(item, Mapping):
                    job = Job.from_dict(item)
                    done[job.job_id] = job
            finished = len(done) == len(set(ids)) or (return_when == "any" and done)
            out_of_time = deadline is not None and time.monotonic() >= deadline
            if finished or out_of_time:
                return (
                    [done[i] for i in dict.fromkeys(ids) if i in done],
                    [i for i in dict.fromkeys(ids) if i not in done],
                )

    # ---------------------------------------------------------------- change

    def cancel(self, job_id: JobRef, reason: Optional[str] = None) -> Job:
        """Cancels a job and answers it: ``cancelled``, or ``cancelling`` while its worker
        stops it (:meth:`wait` for the end).

        Raises:
            ConflictError: the job has already finished.
            NotFoundError: there is no such job.
        """
        path = f"/jobs/{_quote(_job_id(job_id))}/cancel"
        body = {} if reason is None else {"reason": reason}
        _, data = self._transport.request("POST", path, body=body)
        return Job.from_dict(_object(data, f"POST {path}"))

    # ---------------------------------------------------------------- artifacts and models

    def artifact(self, ref: ArtifactRef) -> Artifact:
        """What the control plane knows of an artifact: name, kind, size, the job that made
        it.

        Args:
            ref: ``nexa://artifacts/<sha256>``, the 64 hex digits alone, an
                :class:`Artifact` or a :class:`ModelVersion`.

        Raises:
            NotFoundError: the control plane keeps no artifact with that digest.
            ValueError: ``ref`` does not name an artifact (a ``file://`` or ``s3://`` URI,
                say).
        """
        path = f"/artifacts/{_artifact_digest(ref)}"
        _, data = self._transport.request("GET", path)
        return Artifact.from_dict(_object(data, f"GET {path}"))

    def artifacts(self, job_id: JobRef) -> List[Artifact]:
        """The artifacts a job made (its dataset, model, checkpoints, reports), by name.

        Raises:
            NotFoundError: there is no such job.
        """
        path = f"/jobs/{_quote(_job_id(job_id))}/artifacts"
        _, data = self._transport.request("GET", path)
        items = _object(data, f"GET {path}").get("artifacts")
        if not isinstance(items, list):
            return []
        return [Artifact.from_dict(a) for a in items if isinstance(a, Mapping)]

    def download(
        self, ref: ArtifactRef, path: Optional[Union[str, "os.PathLike[str]"]] = None
    ) -> Path:
        """Downloads an artifact's content and answers where it was written.

        The bytes are streamed to a temporary file beside the destination, their SHA-256 is
        checked against the digest that names the artifact, and only then is the file moved
        into place (replacing a file that is there).

        Args:
            ref: ``nexa://artifacts/<sha256>``, the 64 hex digits alone, an
                :class:`Artifact` or a :class:`ModelVersion`.
            path: where to write it. ``None``: a file named by the artifact's name in the
                current folder; an existing folder: that name inside it; anything else:
                that file.

        Raises:
            NotFoundError: the control plane keeps no artifact with that digest.
            IntegrityError: what arrived does not have that SHA-256 (nothing is written).
            ServerUnavailableError: the server could not be reached, or the transfer
                stopped part way.
            ValueError: ``ref`` does not name an artifact.
        """
        digest = _artifact_digest(ref)
        dest = Path(path) if path is not None else None
        if dest is None or dest.is_dir():
            name = ref.name if isinstance(ref, Artifact) and ref.name else ""
            if not name:
                name = self.artifact(digest).name
            folder = dest if dest is not None else Path.cwd()
            dest = folder / _safe_file_name(name, digest)
        url_path = f"/artifacts/{digest}/content"
        folder = dest.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=folder)
        tmp = Path(tmp_name)
        try:
            hasher = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                with self._transport.open_binary(url_path) as resp:
                    while True:
                        try:
                            chunk = resp.read(_DOWNLOAD_CHUNK)
                        except (OSError, http.client.HTTPException) as e:
                            raise self._transport.interrupted(
                                f"downloading {digest}", e
                            ) from None
                        if not chunk:
                            break
                        hasher.update(chunk)
                        out.write(chunk)
            actual = hasher.hexdigest()
            if actual != digest:
                raise IntegrityError(
                    f"the content downloaded for nexa://artifacts/{digest} has SHA-256 "
                    f"{actual}; it is not the artifact asked for (nothing was written to "
                    f"{dest})",
                    expected=digest,
                    actual=actual,
                )
            # mkstemp makes the file private (0600); a download gets the usual permissions.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, dest)
        except BaseException:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise
        return dest

    def models(self) -> List[ModelSummary]:
        """The registered models, by name, each with its version count and latest version."""
        _, data = self._transport.request("GET", "/models")
        items = _object(data, "GET /models").get("models")
        if not isinstance(items, list):
            return []
        return [ModelSummary.from_dict(m) for m in items if isinstance(m, Mapping)]

    def model(self, name: str) -> Model:
        """A registered model with all its versions, oldest first.

        Args:
            name: the model's name: a train job's ``model_id`` or a distill job's
                ``student_model``.

        Raises:
            NotFoundError: no model has that name; the message lists those that exist.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"expected a model name such as 'teacher', not {name!r}")
        path = f"/models/{_quote(name)}"
        _, data = self._transport.request("GET", path)
        return Model.from_dict(_object(data, f"GET {path}"))

    # ---------------------------------------------------------------- deployed models

    def endpoints(self) -> List[Endpoint]:
        """The deployed models by name, each with its replicas: the deploy jobs not finished
        (queued, being placed, loading or serving)."""
        _, data = self._transport.request("GET", "/endpoints")
        items = _object(data, "GET /endpoints").get("endpoints")
        if not isinstance(items, list):
            return []
        return [Endpoint.from_dict(e) for e in items if isinstance(e, Mapping)]

    def endpoint(self, name: EndpointRef) -> Endpoint:
        """One endpoint, as it is now.

        Args:
            name: the endpoint's name: a deploy job's ``target``, or its model's name.

        Raises:
            NotFoundError: no unfinished deploy job serves that name; the message lists the
                endpoints that exist.
        """
        path = f"/endpoints/{_quote(_endpoint_name(name))}"
        _, data = self._transport.request("GET", path)
        return Endpoint.from_dict(_object(data, f"GET {path}"))

    def undeploy(self, endpoint: EndpointRef) -> List[str]:
        """Undeploys an endpoint: cancels the deploy job of each of its replicas, and answers
        their ids. Each ends ``cancelled`` once its replica has stopped.

        Raises:
            NotFoundError: nothing serves that name; the message lists what does.
            AuthError: a read-only token.
        """
        path = f"/endpoints/{_quote(_endpoint_name(endpoint))}"
        _, data = self._transport.request("DELETE", path)
        cancelled = _object(data, f"DELETE {path}").get("cancelled")
        return [str(j) for j in cancelled] if isinstance(cancelled, list) else []

    def wait_ready(
        self,
        endpoint: Union[EndpointRef, Job],
        timeout: Optional[float] = None,
        poll_interval: float = 1.0,
        replicas: int = 1,
    ) -> Endpoint:
        """Polls until a deployed model can answer, and answers its endpoint.

        Args:
            endpoint: an endpoint's name (``"iris"``, or an :class:`Endpoint`): waits until it
                has a ready replica. Or a deploy job (a :class:`Job`, or an id such as
                ``"job-42"``): waits until that job's own replica is ready, and answers the
                endpoint it serves.
            timeout: seconds to wait; ``None`` waits as long as it takes.
            poll_interval: the longest pause between polls; they start 0.1 s apart.
            replicas: for an endpoint's name, how many of its replicas must be ready.

        Raises:
            WaitTimeoutError: still no ready replica after ``timeout`` seconds; the message
                says what the deploy job is doing (queued and why, or its failed attempts).
                The deploy goes on.
            NexaForgeError: the deploy job ended (failed or was cancelled) before its replica
                was ready: code ``deploy_failed`` or ``deploy_cancelled``, the job's error in
                the message.
            NotFoundError: no endpoint has that name (nothing is deployed under it), or there
                is no such job.
            ValueError: the job is not a deploy job.
        """
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval!r}")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas must be a whole number from 1, not {replicas!r}")
        job_id: Optional[str] = None
        name: Optional[str] = None
        if isinstance(endpoint, Job):
            job_id = endpoint.job_id
        elif isinstance(endpoint, str) and _JOB_ID.match(endpoint) is not None:
            job_id = endpoint
        else:
            name = _endpoint_name(endpoint)
        if job_id is not None:
            job = self.get_job(job_id)
            if job.job_type != JobType.DEPLOY:
                raise ValueError(f"{job_id} is a {job.job_type} job, not a deploy job")
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(0.1, poll_interval)
        seen: List[str] = []  # the deploy jobs seen serving `name`, newest first
        while True:
            if job_id is not None:
                for ep in self.endpoints():
                    replica = ep.replica(job_id)
                    if replica is not None and replica.ready:
                        return ep
                job = self.get_job(job_id)
                if job.is_finished or job.status == JobStatus.CANCELLING:
                    raise _deploy_ended(job)
            else:
                assert name is not None
                try:
                    ep = self.endpoint(name)
                except NotFoundError:
                    # Its deploy jobs have all ended: say why, when one failed.
                    for jid in seen:
                        ended = self.get_job(jid)
                        if ended.is_finished:
                            raise _deploy_ended(ended) from None
                    raise
                if ep.ready_replicas >= replicas:
                    return ep
                seen = [r.job_id for r in ep.replicas] or seen
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._not_ready(job_id or (seen[0] if seen else None), name, timeout)
                time.sleep(min(delay, left))
            else:
                time.sleep(delay)
            delay = min(delay * 2, poll_interval)

    def _not_ready(
        self, job_id: Optional[str], name: Optional[str], timeout: Optional[float]
    ) -> WaitTimeoutError:
        job = self.get_job(job_id) if job_id else None
        what = f"endpoint {name!r}" if name is not None else f"deploy job {job_id}"
        message = f"{what} has no ready replica after {timeout:g} s"
        if job is not None:
            message += f": {_deploy_state(job)}"
        return WaitTimeoutError(message, job_id=job_id or "", job=job)

    def predict(self, endpoint: EndpointRef, rows: Any) -> Dict[str, Any]:
        """Asks a deployed model for predictions: ``POST /api/endpoints/<name>/predict``.

        Args:
            endpoint: the endpoint's name, or an :class:`Endpoint`.
            rows: a list of rows, each a list of numbers as wide as the model's input
                (``[[1.0, 2.0, 3.0], [0.5, 0.1, 2.0]]``); a flat list of numbers is one row. A
                NumPy array works too.

        Answers the server's answer: ``{"predictions": [[...], ...]}`` with one list of
        outputs per row, and ``"classes"`` (each row's class) for a classifier.

        Raises:
            ValidationError: rows the model cannot take (e.g. ``row 0 has 2 values; the model
                takes 3``).
            NotFoundError: no endpoint has that name.
            ServerUnavailableError: no replica is ready yet (:meth:`wait_ready` first).
            NexaForgeError: no replica answered (HTTP 502).
            TypeError, ValueError: ``rows`` holds something other than finite numbers.
        """
        path = f"/endpoints/{_quote(_endpoint_name(endpoint))}/predict"
        _, data = self._transport.request("POST", path, body={"inputs": _rows(rows)})
        return _object(data, f"POST {path}")

    # ---------------------------------------------------------------- pipelines

    def pipeline(self, name: str) -> Pipeline:
        """A new, empty :class:`Pipeline` named ``name``, bound to this client: add its steps,
        then :meth:`Pipeline.run` it.

        Example::

            p = client.pipeline("physics")
            data = p.generate(domain="physics", num_samples=2000)
            teacher = p.train(model_id="teacher", dataset_uri=data.dataset, epochs=8)
            scored = p.evaluate(teacher.model, data.dataset)
            p.gate(scored, min_metrics={"accuracy": 0.8})
            run = client.wait_pipeline(p.run(), timeout=600)
        """
        return Pipeline(name, self)

    def run_pipeline(self, spec: Union[Pipeline, Mapping[str, Any]]) -> PipelineRun:
        """Runs a pipeline and answers the run as started (``running``, its first steps
        submitted or about to be); :meth:`wait_pipeline` waits for its end.

        Args:
            spec: a :class:`Pipeline`, or the spec as the API takes it:
                ``{"name": "physics", "steps": {"generate": {"job_type": "generate",
                "params": {...}}, ...}}``.

        Raises:
            ValidationError: a fault in the spec, found before anything runs (an unknown
                step, a cycle, an output a step type does not make, a param of the wrong
                type); ``field`` names its path (``steps.train.params.dataset_uri``, or
                ``steps`` for a cycle).
        """
        _, data = self._transport.request("POST", "/pipelines", body=_pipeline_spec(spec))
        return PipelineRun.from_dict(_object(data, "POST /pipelines"))

    def get_pipeline(self, pipeline_id: PipelineRef) -> PipelineRun:
        """The run now: each step's state, job, outputs and gate verdict, and its
        :attr:`~PipelineRun.events`.

        Raises:
            NotFoundError: there is no such run.
        """
        path = f"/pipelines/{_quote(_pipeline_id(pipeline_id))}"
        _, data = self._transport.request("GET", path)
        return PipelineRun.from_dict(_object(data, f"GET {path}"))

    def list_pipelines(self) -> List[PipelineRun]:
        """Every pipeline run, newest first (without their events)."""
        _, data = self._transport.request("GET", "/pipelines")
        items = _object(data, "GET /pipelines").get("pipelines")
        if not isinstance(items, list):
            return []
        return [PipelineRun.from_dict(r) for r in items if isinstance(r, Mapping)]

    def cancel_pipeline(self, pipeline_id: PipelineRef) -> PipelineRun:
        """Cancels a run and answers it, ``cancelling`` (or already ``cancelled``): its
        running steps' jobs are cancelled, its pending steps never start. It ends
        ``cancelled`` once they have stopped (:meth:`wait_pipeline`).

        Raises:
            ConflictError: the run has already ended.
            NotFoundError: there is no such run.
        """
        path = f"/pipelines/{_quote(_pipeline_id(pipeline_id))}/cancel"
        _, data = self._transport.request("POST", path, body={})
        return PipelineRun.from_dict(_object(data, f"POST {path}"))

    def rerun_pipeline(
        self,
        pipeline_id: PipelineRef,
        from_step: Optional[Union[str, StepRef, PipelineStep]] = None,
        spec: Optional[Union[Pipeline, Mapping[str, Any]]] = None,
    ) -> PipelineRun:
        """Reruns an ended run as a new one, and answers it as started.

        Each step whose work is unchanged (its job type, its params with their references
        resolved, its job options) reuses the old run's job, output and all: its
        :attr:`~PipelineStep.reused_from` names the run that first did the work. The others
        run again.

        Args:
            pipeline_id: the run to rerun.
            from_step: run this step and every step after it again, unchanged or not.
            spec: the pipeline as fixed (a :class:`Pipeline` or a spec); by default the old
                run's own.

        Raises:
            ConflictError: the run has not ended yet (cancel it, or wait for it).
            ValidationError: a fault in ``spec``, or ``from_step`` is no step of it
                (``field`` is ``from``).
            NotFoundError: there is no such run.
        """
        path = f"/pipelines/{_quote(_pipeline_id(pipeline_id))}/rerun"
        body: Dict[str, Any] = {}
        if from_step is not None:
            body["from"] = _step_name(from_step)
        if spec is not None:
            body["spec"] = _pipeline_spec(spec)
        _, data = self._transport.request("POST", path, body=body)
        return PipelineRun.from_dict(_object(data, f"POST {path}"))

    def wait_pipeline(
        self,
        pipeline_id: PipelineRef,
        timeout: Optional[float] = None,
        poll_interval: float = 1.0,
    ) -> PipelineRun:
        """Polls the run until it has ended (succeeded, failed or cancelled) and answers it,
        with its events.

        A failed or cancelled run is answered, not raised: look at ``run.status``,
        ``run.failed_step`` and ``run.error``. Polls start 0.1 s apart and slow down to
        ``poll_interval``. A deploy step ends once its replica is ready; its job serves on.

        Raises:
            WaitTimeoutError: still running after ``timeout`` seconds (a
                :class:`TimeoutError`); the message names the steps still running. The run
                goes on; the error's ``job_id`` is the run's id and its ``job`` the run as
                last seen.
        """
        pid = _pipeline_id(pipeline_id)
        return _poll(
            lambda: self.get_pipeline(pid),
            lambda run: run.is_finished,
            lambda run: WaitTimeoutError(
                f"pipeline run {pid} is still {run.status} after {timeout:g} s: "
                f"{_pipeline_state(run)}",
                job_id=pid,
                job=run,
            ),
            timeout,
            poll_interval,
        )

    # ---------------------------------------------------------------- cluster

    def workers(self) -> List[Worker]:
        """The workers the control plane knows, alive or not."""
        _, data = self._transport.request("GET", "/workers")
        workers = _object(data, "GET /workers").get("workers")
        if not isinstance(workers, list):
            return []
        return [Worker.from_dict(w) for w in workers if isinstance(w, Mapping)]

    def health(self) -> Dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok"}`` when the server and its store work.

        Raises:
            ServerUnavailableError: the server cannot be reached, or its store failed.
        """
        _, data = self._transport.request("GET", "/healthz", root=True)
        return _object(data, "GET /healthz")


def _job_id(job: JobRef) -> str:
    if isinstance(job, Job):
        return job.job_id
    if isinstance(job, str) and job:
        return job
    raise TypeError(f"expected a Job or a job id such as 'job-42', not {job!r}")


def _pipeline_id(run: PipelineRef) -> str:
    if isinstance(run, PipelineRun):
        return run.pipeline_id
    if isinstance(run, str) and run:
        return run
    raise TypeError(f"expected a PipelineRun or a run id such as 'pl-3', not {run!r}")


def _pipeline_spec(spec: Union[Pipeline, Mapping[str, Any]]) -> Dict[str, Any]:
    if isinstance(spec, Pipeline):
        return spec.spec()
    if isinstance(spec, Mapping):
        return dict(spec)
    raise TypeError(
        f"expected a Pipeline or a spec such as {{'name': 'physics', 'steps': {{...}}}}, "
        f"not {spec!r}"
    )


def _pipeline_state(run: PipelineRun) -> str:
    """What an unfinished run is doing, for people: its running steps with their jobs, and
    the steps still waiting."""
    running = [s for s in run.steps if s.status == StepStatus.RUNNING]
    pending = [s.name for s in run.steps if s.status == StepStatus.PENDING]
    parts = []
    if running:
        parts.append(
            "running "
            + ", ".join(f"{s.name} ({s.job_id})" if s.job_id else s.name for s in running)
        )
    if pending:
        parts.append("waiting " + ", ".join(pending))
    text = "; ".join(parts) or "no step is running"
    if any(s.job_type == JobType.DEPLOY for s in running):
        text += " (a deploy step ends once its replica is ready)"
    return text


_T = TypeVar("_T")


#: The longest one wait request asks the server to hold (it holds at most 60 s).
_LONGEST_WAIT = 25.0

# The most job ids one ask of ``POST /jobs/wait`` carries.
_WAIT_MANY_CHUNK = 10_000


def _submit_body(
    job_type: Union[str, JobType],
    params: Mapping[str, Any],
    *,
    priority: Optional[int] = None,
    max_attempts: Optional[int] = None,
    timeout_seconds: Optional[float] = None,
    resources: Optional[Mapping[str, Any]] = None,
    depends_on: Optional[Sequence[JobRef]] = None,
    idempotency_key: Optional[str] = None,
) -> Dict[str, Any]:
    """A job as ``POST /jobs`` takes it: only the options given (the server applies every
    default)."""
    body: Dict[str, Any] = {"job_type": str(job_type), "params": dict(params)}
    if priority is not None:
        body["priority"] = priority
    if max_attempts is not None:
        body["max_attempts"] = max_attempts
    if timeout_seconds is not None:
        body["timeout_seconds"] = _whole_if_integral(timeout_seconds)
    if resources is not None:
        body["resources"] = dict(resources)
    if depends_on is not None:
        if isinstance(depends_on, (str, Job)):
            depends_on = [depends_on]
        body["depends_on"] = [_job_id(d) for d in depends_on]
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    return body


def _poll(
    fetch: Callable[[], _T],
    done: Callable[[_T], bool],
    too_late: Callable[[_T], Exception],
    timeout: Optional[float],
    poll_interval: float,
) -> _T:
    """Fetches until ``done`` says so, 0.1 s apart at first and slowing down to
    ``poll_interval``; raises ``too_late(last)`` after ``timeout`` seconds (``None``: no
    limit)."""
    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be positive, not {poll_interval!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = min(0.1, poll_interval)
    while True:
        last = fetch()
        if done(last):
            return last
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise too_late(last)
            time.sleep(min(delay, left))
        else:
            time.sleep(delay)
        delay = min(delay * 2, poll_interval)


def _endpoint_name(endpoint: EndpointRef) -> str:
    if isinstance(endpoint, Endpoint):
        return endpoint.name
    if isinstance(endpoint, str) and endpoint:
        return endpoint
    raise TypeError(f"expected an Endpoint or an endpoint name such as 'iris', not {endpoint!r}")


def _deploy_state(job: Job) -> str:
    """What a deploy job is doing, for people: its status, why it waits, where it runs, and
    its latest failed attempt."""
    text = f"{job.job_id} is {job.status}"
    if job.status in (JobStatus.QUEUED, JobStatus.WAITING) and job.pending_reason:
        text += f" ({job.pending_reason})"
    elif job.status in (JobStatus.ASSIGNED, JobStatus.RUNNING) and job.worker_id:
        text += f" on worker {job.worker_id} (loading the model or smoke-testing it)"
    failed = [a for a in job.attempts if a.outcome_error is not None]
    if failed:
        text += f"; attempt {failed[-1].number} failed: {failed[-1].outcome_error}"
    return text


def _deploy_ended(job: Job) -> NexaForgeError:
    """The error of a deploy job that ended (or is being cancelled) before it served."""
    if job.status == JobStatus.FAILED:
        what, code = "failed", "deploy_failed"
    elif job.status in (JobStatus.CANCELLED, JobStatus.CANCELLING):
        what, code = f"was {job.status}", "deploy_cancelled"
    else:
        what, code = f"ended {job.status}", "deploy_failed"
    why = f": {job.error}" if job.error is not None else ""
    return NexaForgeError(
        f"deploy job {job.job_id} {what} before its replica was ready{why}", code=code
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _rows(rows: Any) -> List[List[Union[int, float]]]:
    """``rows`` as the list of rows the API takes; a flat list of numbers is one row."""
    if hasattr(rows, "tolist") and not isinstance(rows, (list, tuple)):
        rows = rows.tolist()  # a NumPy array
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
        raise TypeError(f"expected rows of numbers such as [[1.0, 2.0, 3.0]], not {rows!r}")
    rows = list(rows)
    if rows and all(_is_number(x) for x in rows):
        rows = [rows]
    out: List[List[Union[int, float]]] = []
    for i, row in enumerate(rows):
        if hasattr(row, "tolist") and not isinstance(row, (list, tuple)):
            row = row.tolist()
        if isinstance(row, (str, bytes, Mapping)) or not isinstance(row, Iterable):
            raise TypeError(f"row {i} is {row!r}, not a list of numbers")
        values = list(row)
        for x in values:
            if not _is_number(x):
                raise TypeError(f"row {i} holds {x!r}, which is not a number")
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError(f"row {i} holds {x}, which is not a finite number")
        out.append(values)
    return out


def _artifact_digest(ref: ArtifactRef) -> str:
    if isinstance(ref, Artifact):
        return artifact_digest(ref.sha256 or ref.uri)
    if isinstance(ref, ModelVersion):
        return artifact_digest(ref.uri)
    return artifact_digest(ref)


def _safe_file_name(name: str, digest: str) -> str:
    """The last part of ``name``, so a name from the server never leaves the folder."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if base in ("", ".", "..") or "\x00" in base:
        return digest
    return base


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _object(data: Any, what: str) -> Dict[str, Any]:
    if isinstance(data, dict):
        return data
    raise NexaForgeError(f"the server answered {what} with {type(data).__name__}, not an object")


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _given(**params: Any) -> Dict[str, Any]:
    """The params that were given: ``None`` means "the server's default"."""
    return {k: (dict(v) if k == "options" else v) for k, v in params.items() if v is not None}


# Each job type's params as the API takes them, built alike for a job (the submit helpers
# above) and for a pipeline step (:class:`~nexa_forge.Pipeline`, where a value may also be a
# ``${step.output}`` reference).


def _generate_params(
    *,
    domain: Any,
    num_samples: Any,
    seed: Any,
    task: Any,
    classes: Any,
    noise: Any,
    options: Optional[Mapping[str, Any]],
) -> Dict[str, Any]:
    return _given(
        domain=domain,
        num_samples=num_samples,
        seed=seed,
        task=task,
        classes=classes,
        noise=noise,
        options=options,
    )


def _audit_params(
    *,
    dataset_uri: Any,
    label_column: Any,
    expected_sha256: Any,
    options: Optional[Mapping[str, Any]],
) -> Dict[str, Any]:
    return _given(
        dataset_uri=dataset_uri,
        label_column=label_column,
        expected_sha256=expected_sha256,
        options=options,
    )


def _distill_params(
    *,
    teacher_model: Any,
    student_model: Any,
    dataset_uri: Any,
    temperature: Any,
    epochs: Any,
    alpha: Any,
    hyperparameters: Optional[Mapping[str, Any]],
    prompt_template: Any,
    options: Optional[Mapping[str, Any]],
) -> Dict[str, Any]:
    return _given(
        teacher_model=teacher_model,
        student_model=student_model,
        dataset_uri=dataset_uri,
        temperature=temperature,
        alpha=alpha,
        epochs=epochs,
        hyperparameters=dict(hyperparameters) if hyperparameters is not None else None,
        prompt_template=prompt_template,
        options=options,
    )


def _train_params(
    *,
    model_id: Any,
    dataset_uri: Any,
    epochs: Any,
    hyperparameters: Optional[Mapping[str, Any]],
    options: Optional[Mapping[str, Any]],
    more_hyperparameters: Mapping[str, Any],
) -> Dict[str, Any]:
    """``hyperparameters`` and the extra keywords merged, the keywords winning."""
    hp: Dict[str, Any] = dict(hyperparameters or {})
    hp.update(more_hyperparameters)
    return _given(
        model_id=model_id,
        dataset_uri=dataset_uri,
        epochs=epochs,
        hyperparameters=hp or None,
        options=options,
    )


def _evaluate_params(
    *,
    model_id: Any,
    dataset_uri: Any,
    metrics: Optional[Union[str, Sequence[str]]],
    split: Any,
    suite: Any,
    options: Optional[Mapping[str, Any]],
) -> Dict[str, Any]:
    if isinstance(metrics, str):
        metrics = [metrics]
    return _given(
        model_id=model_id,
        dataset_uri=dataset_uri,
        split=split,
        suite=suite,
        metrics=list(metrics) if metrics is not None else None,
        options=options,
    )


def _deploy_params(
    *,
    model_id: Any,
    target: Any,
    replicas: Any,
    region: Any,
    options: Optional[Mapping[str, Any]],
) -> Dict[str, Any]:
    return _given(
        model_id=model_id, target=target, region=region, replicas=replicas, options=options
    )


def _whole_if_integral(x: float) -> Union[int, float]:
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x
