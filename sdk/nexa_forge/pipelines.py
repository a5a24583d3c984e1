"""Pipelines: the lifecycle declared once, as named steps, and run by the server.

A pipeline spec names its steps. A step is a job (a job type and its params, as
:meth:`NexaForgeClient.submit` takes them) or a gate: checks on an earlier ``audit`` or
``evaluate`` step's result that stop the steps after it when they fail. A job's params may
refer to earlier steps' outputs: ``"${generate.artifacts.dataset}"`` (an artifact's URI),
``"${teacher.model}"`` (the model version a train or distill step registered, ``name:N``),
``"${evaluate.metrics.accuracy}"`` and ``"${train.job_id}"``. A reference that is the whole
value keeps the output's type; a step needs the steps it refers to, and those in its
``needs``. The server checks the whole spec before anything runs (unknown steps, cycles,
outputs a step type does not make, params of the wrong type) and names each fault by its
path (``steps.train.params.dataset_uri``).

:class:`Pipeline` builds a spec step by step, each method answering a :class:`StepRef` whose
properties are those references; :meth:`NexaForgeClient.run_pipeline` runs a spec and answers
a :class:`PipelineRun`: each :class:`PipelineStep` with its state, its job, its
:class:`StepOutputs` and, for a gate, its :class:`GateVerdict`.

Example::

    p = client.pipeline("physics")
    data = p.generate(domain="physics", num_samples=2000)
    audit = p.audit(data.dataset, label_column="range_m_class")
    clean = p.gate(audit, max_missing=0.01, min_rows=1000)
    teacher = p.train(model_id="teacher", dataset_uri=data.dataset, epochs=8,
                      base="teacher_large", needs=[clean])
    scored = p.evaluate(teacher.model, data.dataset)
    p.gate(scored, min_metrics={"accuracy": 0.8})
    run = client.wait_pipeline(p.run(), timeout=600)
    print(run.status, run.failed_step, run.error)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from . import client as _client  # the client imports this module: read when a step is added
from .jobs import JobType, _dict, _OpenStrEnum, _opt_str, _Raw
from .timestamps import parse_time

if TYPE_CHECKING:
    from .client import HyperparameterValue, NexaForgeClient

__all__ = [
    "PipelineStatus",
    "StepStatus",
    "Pipeline",
    "StepRef",
    "PipelineRun",
    "PipelineStep",
    "PipelineEvent",
    "StepOutputs",
    "GateVerdict",
]

IntOrRef = Union[int, str]
"""A whole number, or a ``${step.metrics.NAME}`` reference to one."""

FloatOrRef = Union[float, str]
"""A number, or a ``${step.metrics.NAME}`` reference to one."""

StepLike = Union["StepRef", str]
"""A step of the pipeline being built: its :class:`StepRef`, or its name."""

_STEP_OPTIONS = ("name", "needs", "max_attempts", "timeout_seconds", "gpus")


class PipelineStatus(_OpenStrEnum):
    """Where a pipeline run is. Compares equal to its string:
    ``PipelineStatus.FAILED == "failed"``."""

    RUNNING = "running"
    """Steps are running or waiting for their inputs."""
    CANCELLING = "cancelling"
    """Cancel was asked; its running steps' jobs are stopping."""
    SUCCEEDED = "succeeded"
    """Every step succeeded and every gate passed."""
    FAILED = "failed"
    """A step failed or a gate did not pass (``failed_step``); no step could go on."""
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        """True for ``succeeded``, ``failed`` and ``cancelled``: the run will not change again."""
        return self.value in _FINISHED


_FINISHED = frozenset({"succeeded", "failed", "cancelled"})


class StepStatus(_OpenStrEnum):
    """Where one step of a run is. Compares equal to its string."""

    PENDING = "pending"
    """Waiting for the steps it needs."""
    RUNNING = "running"
    """Its job is submitted and not finished."""
    SUCCEEDED = "succeeded"
    """Its job succeeded (or an earlier run's job was reused); a gate passed."""
    FAILED = "failed"
    """Its job failed; a gate did not pass."""
    SKIPPED = "skipped"
    """A step it needs did not succeed: it will not run."""
    CANCELLED = "cancelled"
    """The run was cancelled before the step ended, or its job was cancelled."""

    @property
    def is_finished(self) -> bool:
        """True once the step will not change again (anything but pending and running)."""
        return self.value not in ("pending", "running")


# ---------------------------------------------------------------- records


@dataclass
class StepOutputs(_Raw):
    """What a succeeded job step made: what later steps' references read."""

    artifacts: Dict[str, str]
    """Artifacts' URIs by name, e.g. ``{"dataset": "nexa://artifacts/..."}``."""
    metrics: Dict[str, float]
    """The numbers of its result, e.g. ``{"accuracy": 0.91}``."""
    model: Optional[str]
    """The model version a train or distill step registered, ``name:N``."""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StepOutputs":
        metrics = {
            str(k): float(v)
            for k, v in _dict(data.get("metrics")).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        artifacts = {str(k): str(v) for k, v in _dict(data.get("artifacts")).items()}
        return cls(
            artifacts=artifacts,
            metrics=metrics,
            model=_opt_str(data.get("model")),
            raw=dict(data),
        )


@dataclass
class GateVerdict(_Raw):
    """A gate's verdict on the step it checks."""

    on: str
    """The step whose result it checked."""
    passed: bool
    reasons: List[str]
    """Each check that failed, said plainly; empty when it passed."""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GateVerdict":
        reasons = data.get("reasons")
        return cls(
            on=_opt_str(data.get("on")) or "",
            passed=data.get("passed") is True,
            reasons=[str(r) for r in reasons] if isinstance(reasons, list) else [],
            raw=dict(data),
        )


@dataclass(repr=False)
class PipelineStep(_Raw):
    """One step of a run, as the server last described it."""

    name: str
    kind: str
    """``job`` or ``gate``."""
    job_type: Optional[JobType]
    """A job step's type; ``None`` for a gate."""
    needs: List[str]
    """The steps it needs: those its params refer to, its ``needs``, a gate's steps."""
    status: StepStatus
    job_id: Optional[str]
    """Its job: submitted for this run, or reused from an earlier one (``reused_from``)."""
    reused_from: Optional[str]
    """The run whose job it reuses, its work being unchanged (``pl-1``)."""
    outputs: Optional[StepOutputs]
    """What a succeeded job step made."""
    gate: Optional[GateVerdict]
    """A gate's verdict, once checked."""
    reason: Optional[str]
    """Why it failed, was skipped or was cancelled."""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PipelineStep":
        job_type = _opt_str(data.get("job_type"))
        needs = data.get("needs")
        outputs = data.get("outputs")
        gate = data.get("gate")
        return cls(
            name=str(data.get("name", "")),
            kind=_opt_str(data.get("kind")) or ("job" if job_type else "gate"),
            job_type=JobType(job_type) if job_type else None,
            needs=[str(n) for n in needs] if isinstance(needs, list) else [],
            status=StepStatus(_opt_str(data.get("status")) or ""),
            job_id=_opt_str(data.get("job_id")),
            reused_from=_opt_str(data.get("reused_from")),
            outputs=StepOutputs.from_dict(outputs) if isinstance(outputs, Mapping) else None,
            gate=GateVerdict.from_dict(gate) if isinstance(gate, Mapping) else None,
            reason=_opt_str(data.get("reason")),
            raw=dict(data),
        )

    def __repr__(self) -> str:
        what = f"job_type={str(self.job_type)!r}" if self.job_type else "kind='gate'"
        extra = f", job_id={self.job_id!r}" if self.job_id else ""
        if self.reused_from:
            extra += f", reused_from={self.reused_from!r}"
        if self.reason:
            extra += f", reason={self.reason!r}"
        return (
            f"PipelineStep(name={self.name!r}, {what}, status={str(self.status)!r}{extra})"
        )

    @property
    def is_gate(self) -> bool:
        """True for a gate step (it runs no job)."""
        return self.kind == "gate"

    @property
    def is_finished(self) -> bool:
        """True once the step will not change again."""
        return self.status.is_finished

    @property
    def succeeded(self) -> bool:
        """True when its job succeeded (or was reused), or its gate passed."""
        return self.status == StepStatus.SUCCEEDED


@dataclass
class PipelineEvent(_Raw):
    """Something that happened to a run (a step submitted, a gate passed...)."""

    at: Optional[datetime]
    message: str
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PipelineEvent":
        return cls(
            at=parse_time(data.get("at")),
            message=_opt_str(data.get("message")) or "",
            raw=dict(data),
        )

    def __str__(self) -> str:
        return self.message


@dataclass(repr=False)
class PipelineRun(_Raw):
    """A pipeline run as the server last described it.

    A snapshot: use :meth:`NexaForgeClient.get_pipeline` or
    :meth:`NexaForgeClient.wait_pipeline` for a newer one.
    """

    pipeline_id: str
    """Its id, like ``pl-3``."""
    name: str
    """The spec's name."""
    status: PipelineStatus
    failed_step: Optional[str]
    """The first step that failed: a job that failed, a gate that did not pass."""
    error: Optional[str]
    """Why it failed or was cancelled."""
    rerun_of: Optional[str]
    """The run this one reruns (``pl-2``), whose unchanged steps it reuses."""
    from_step: Optional[str]
    """The step a rerun ran again from, with every step after it (the JSON field ``from``)."""
    created_at: Optional[datetime]
    updated_at: Optional[datetime]
    finished_at: Optional[datetime]
    steps: List[PipelineStep]
    """Every step, each after the steps it needs."""
    spec: Dict[str, Any]
    """The spec it runs, as the server keeps it."""
    events: Optional[List[PipelineEvent]]
    """What happened, oldest first; only :meth:`NexaForgeClient.get_pipeline` includes them."""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PipelineRun":
        steps = data.get("steps")
        events = data.get("events")
        return cls(
            pipeline_id=str(data.get("pipeline_id", "")),
            name=_opt_str(data.get("name")) or "",
            status=PipelineStatus(_opt_str(data.get("status")) or ""),
            failed_step=_opt_str(data.get("failed_step")),
            error=_opt_str(data.get("error")),
            rerun_of=_opt_str(data.get("rerun_of")),
            from_step=_opt_str(data.get("from")),
            created_at=parse_time(data.get("created_at")),
            updated_at=parse_time(data.get("updated_at")),
            finished_at=parse_time(data.get("finished_at")),
            steps=[PipelineStep.from_dict(s) for s in steps if isinstance(s, Mapping)]
            if isinstance(steps, list)
            else [],
            spec=_dict(data.get("spec")),
            events=[PipelineEvent.from_dict(e) for e in events if isinstance(e, Mapping)]
            if isinstance(events, list)
            else None,
            raw=dict(data),
        )

    def __repr__(self) -> str:
        extra = ""
        if self.failed_step is not None:
            extra += f", failed_step={self.failed_step!r}"
        if self.error is not None:
            extra += f", error={self.error!r}"
        return (
            f"PipelineRun(pipeline_id={self.pipeline_id!r}, name={self.name!r}, "
            f"status={str(self.status)!r}{extra})"
        )

    def step(self, name: StepLike) -> PipelineStep:
        """The step named ``name`` (or a :class:`StepRef`'s).

        Raises:
            KeyError: the run has no such step; the message lists its steps.
        """
        wanted = _step_name(name)
        for s in self.steps:
            if s.name == wanted:
                return s
        have = ", ".join(s.name for s in self.steps) or "none"
        raise KeyError(f"run {self.pipeline_id} has no step {wanted!r} (its steps: {have})")

    @property
    def job_ids(self) -> Dict[str, str]:
        """Each job step's job, by step name, for the steps that have one."""
        return {s.name: s.job_id for s in self.steps if s.job_id is not None}

    @property
    def is_finished(self) -> bool:
        """True once the run succeeded, failed or was cancelled."""
        return self.status.is_finished

    @property
    def succeeded(self) -> bool:
        """True when every step succeeded."""
        return self.status == PipelineStatus.SUCCEEDED


# ---------------------------------------------------------------- the builder


@dataclass(frozen=True)
class StepRef:
    """A step added to a :class:`Pipeline`. Its properties are references to its outputs, to
    use as later steps' params; pass the :class:`StepRef` itself as a gate's ``on`` or in a
    step's ``needs``."""

    name: str
    job_type: Optional[str]
    """The job type of a job step; ``None`` for a gate."""

    def __str__(self) -> str:
        return self.name

    @property
    def dataset(self) -> str:
        """``"${NAME.artifacts.dataset}"``: the dataset a generate step made."""
        return self.artifact("dataset")

    @property
    def model(self) -> str:
        """``"${NAME.model}"``: the model version a train or distill step registered, as
        ``name:N``, so later steps use that very version."""
        return f"${{{self.name}.model}}"

    @property
    def job_id(self) -> str:
        """``"${NAME.job_id}"``: the step's job."""
        return f"${{{self.name}.job_id}}"

    def artifact(self, name: str) -> str:
        """``"${NAME.artifacts.<name>}"``: the URI of an artifact the step made (``dataset``
        from generate; ``model`` from train and distill, which also makes
        ``teacher_labelled``)."""
        return f"${{{self.name}.artifacts.{name}}}"

    def metric(self, name: str) -> str:
        """``"${NAME.metrics.<name>}"``: a number of the step's result (audit, train, distill
        and evaluate steps report metrics); as the whole of a param it stays a number."""
        return f"${{{self.name}.metrics.{name}}}"


class Pipeline:
    """A pipeline spec built step by step.

    Each job method takes what the client's submit helper of the same name takes (any value
    may be a reference such as ``step.dataset``) and answers a :class:`StepRef`. The step is
    named after its job type (``train``; ``train_2`` for the second, and so on) unless
    ``name=`` says otherwise, and takes the step options as keywords:

    - ``name``: the step's name (1 to 64 letters, digits, ``_`` or ``-``).
    - ``needs``: steps that must succeed first besides those its params refer to (a
      :class:`StepRef` or a name, or a list of them).
    - ``max_attempts`` (1 to 100), ``timeout_seconds`` (whole seconds) and ``gpus``: the step
      job's options; gates take only ``name`` and ``needs``.

    The spec is checked when it runs, by the server; :meth:`spec` answers it as JSON.
    Build one with :meth:`NexaForgeClient.pipeline` to :meth:`run` it there.
    """

    def __init__(self, name: str, client: Optional["NexaForgeClient"] = None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a pipeline needs a name such as 'physics', not {name!r}")
        self.name = name
        self._client = client
        self._steps: Dict[str, Dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"Pipeline(name={self.name!r}, steps={list(self._steps)!r})"

    @property
    def steps(self) -> List[StepRef]:
        """The steps added so far, in order."""
        return [StepRef(name, s.get("job_type")) for name, s in self._steps.items()]

    def spec(self) -> Dict[str, Any]:
        """The spec as ``POST /api/pipelines`` takes it: ``{"name": ..., "steps": {...}}``
        (a copy)."""
        return {"name": self.name, "steps": copy.deepcopy(self._steps)}

    def run(self, client: Optional["NexaForgeClient"] = None) -> PipelineRun:
        """Runs the pipeline on ``client`` (by default the one it was built with) and answers
        the run as started; :meth:`NexaForgeClient.wait_pipeline` waits for its end.

        Raises:
            ValidationError: a fault in the spec; ``field`` names its path
                (``steps.train.params.dataset_uri``).
        """
        client = client if client is not None else self._client
        if client is None:
            raise RuntimeError(
                "this Pipeline is not bound to a client: build it with client.pipeline(name), "
                "or pass a client to run()"
            )
        return client.run_pipeline(self)

    # ------------------------------------------------------------ job steps

    def step(
        self,
        job_type: Union[str, JobType],
        params: Mapping[str, Any],
        *,
        name: Optional[str] = None,
        needs: Optional[Union[StepLike, Sequence[StepLike]]] = None,
        max_attempts: Optional[int] = None,
        timeout_seconds: Optional[float] = None,
        gpus: Optional[int] = None,
    ) -> StepRef:
        """Adds a job step of any type with its API ``params`` (the helpers below build
        them), like :meth:`NexaForgeClient.submit`."""
        job_type = str(job_type)
        _no_step_refs(params, "params")
        step: Dict[str, Any] = {"job_type": job_type, "params": dict(params)}
        if max_attempts is not None:
            step["max_attempts"] = max_attempts
        if timeout_seconds is not None:
            step["timeout_seconds"] = _client._whole_if_integral(timeout_seconds)
        if gpus is not None:
            step["gpus"] = gpus
        return self._add(name, job_type, step, needs)

    def generate(
        self,
        domain: str,
        num_samples: IntOrRef,
        seed: Optional[IntOrRef] = None,
        *,
        task: Optional[str] = None,
        classes: Optional[IntOrRef] = None,
        noise: Optional[FloatOrRef] = None,
        options: Optional[Mapping[str, Any]] = None,
        **step_options: Any,
    ) -> StepRef:
        """Adds a ``generate`` step, as :meth:`NexaForgeClient.generate`; its
        :attr:`StepRef.dataset` is the dataset it makes."""
        params = _client._generate_params(
            domain=domain,
            num_samples=num_samples,
            seed=seed,
            task=task,
            classes=classes,
            noise=noise,
            options=options,
        )
        return self._job("generate", params, step_options)

    def audit(
        self,
        dataset_uri: str,
        label_column: Optional[str] = None,
        expected_sha256: Optional[str] = None,
        *,
        options: Optional[Mapping[str, Any]] = None,
        **step_options: Any,
    ) -> StepRef:
        """Adds an ``audit`` step, as :meth:`NexaForgeClient.audit`; :meth:`gate` checks its
        report (``label_column`` is needed for ``max_class_ratio``)."""
        params = _client._audit_params(
            dataset_uri=dataset_uri,
            label_column=label_column,
            expected_sha256=expected_sha256,
            options=options,
        )
        return self._job("audit", params, step_options)

    def distill(
        self,
        teacher_model: str,
        student_model: str,
        dataset_uri: str,
        temperature: Optional[FloatOrRef] = None,
        epochs: Optional[IntOrRef] = None,
        *,
        alpha: Optional[FloatOrRef] = None,
        hyperparameters: Optional[Mapping[str, "HyperparameterValue"]] = None,
        prompt_template: Optional[str] = None,
        options: Optional[Mapping[str, Any]] = None,
        **step_options: Any,
    ) -> StepRef:
        """Adds a ``distill`` step, as :meth:`NexaForgeClient.distill`: ``teacher_model`` is
        usually a train step's :attr:`StepRef.model`; this step's own is the student it
        registers."""
        params = _client._distill_params(
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
        return self._job("distill", params, step_options)

    def train(
        self,
        model_id: str,
        dataset_uri: str,
        epochs: Optional[IntOrRef] = None,
        *,
        hyperparameters: Optional[Mapping[str, "HyperparameterValue"]] = None,
        options: Optional[Mapping[str, Any]] = None,
        name: Optional[str] = None,
        needs: Optional[Union[StepLike, Sequence[StepLike]]] = None,
        max_attempts: Optional[int] = None,
        timeout_seconds: Optional[float] = None,
        gpus: Optional[int] = None,
        **more_hyperparameters: "HyperparameterValue",
    ) -> StepRef:
        """Adds a ``train`` step, as :meth:`NexaForgeClient.train`: extra keywords are
        hyperparameters (``base="teacher_large"``, ``learning_rate=2e-3``), merged with
        ``hyperparameters={...}``; the step options are named keywords here, so they never
        become hyperparameters. Its :attr:`StepRef.model` is the version it registers."""
        params = _client._train_params(
            model_id=model_id,
            dataset_uri=dataset_uri,
            epochs=epochs,
            hyperparameters=hyperparameters,
            options=options,
            more_hyperparameters=more_hyperparameters,
        )
        return self.step(
            "train",
            params,
            name=name,
            needs=needs,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
            gpus=gpus,
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
        **step_options: Any,
    ) -> StepRef:
        """Adds an ``evaluate`` step, as :meth:`NexaForgeClient.evaluate`; :meth:`gate`
        checks its metrics (:meth:`StepRef.metric` refers to one)."""
        params = _client._evaluate_params(
            model_id=model_id,
            dataset_uri=dataset_uri,
            metrics=metrics,
            split=split,
            suite=suite,
            options=options,
        )
        return self._job("evaluate", params, step_options)

    def deploy(
        self,
        model_id: str,
        target: Optional[str] = None,
        replicas: Optional[IntOrRef] = None,
        *,
        region: Optional[str] = None,
        options: Optional[Mapping[str, Any]] = None,
        **step_options: Any,
    ) -> StepRef:
        """Adds a ``deploy`` step, as :meth:`NexaForgeClient.deploy`.

        The step succeeds once its replica is ready (its smoke test passed); its job goes on
        serving after the run has ended, until the endpoint is undeployed
        (:meth:`NexaForgeClient.undeploy`).
        """
        params = _client._deploy_params(
            model_id=model_id,
            target=target,
            replicas=replicas,
            region=region,
            options=options,
        )
        return self._job("deploy", params, step_options)

    # ------------------------------------------------------------ gates

    def gate(
        self,
        on: StepLike,
        *,
        max_missing: Optional[float] = None,
        max_duplicates: Optional[float] = None,
        min_rows: Optional[int] = None,
        max_class_ratio: Optional[float] = None,
        no_overlap: bool = False,
        min_metrics: Optional[Mapping[str, float]] = None,
        within: Optional[Union[Tuple[StepLike, str, float], Mapping[str, Any]]] = None,
        better_than_deployed: Optional[Mapping[str, Any]] = None,
        name: Optional[str] = None,
        needs: Optional[Union[StepLike, Sequence[StepLike]]] = None,
    ) -> StepRef:
        """Adds a gate on step ``on``: the steps that need the gate run only when every check
        given holds; when one fails, the gate fails with its reasons, the run fails there, and
        the steps after it are skipped. Named ``gate`` (``gate_2``...) unless ``name`` says.

        One gate holds checks of one kind. On an ``audit`` step: ``max_missing`` (the
        fraction of cells missing, 0 to 1), ``max_duplicates`` (the fraction of rows that
        repeat an earlier one, 0 to 1), ``min_rows``, ``max_class_ratio`` (the largest class
        at most this many times the smallest, from 1; the audit needs a ``label_column``) and
        ``no_overlap`` (no validation or test row is also a train row). On an ``evaluate``
        step: ``min_metrics`` (``{"accuracy": 0.8}``: each at least that) and ``within``
        (``(other_evaluate_step, "accuracy", 0.05)``: at most 0.05 below the other step's
        accuracy; or the API's ``{"of": ..., "metric": ..., "points": ...}``) and
        ``better_than_deployed`` (``{"endpoint": "physics", "metric": "accuracy", "margin":
        0.01}``: at least ``margin`` better than the version the endpoint serves, by its
        evaluation on the same data; passes when nothing serves there).
        """
        check: Dict[str, Any] = {"on": _step_name(on)}
        for key, value in (
            ("max_missing", max_missing),
            ("max_duplicates", max_duplicates),
            ("min_rows", min_rows),
            ("max_class_ratio", max_class_ratio),
        ):
            if value is not None:
                check[key] = value
        if no_overlap:
            check["no_overlap"] = True
        if min_metrics is not None:
            check["min_metrics"] = dict(min_metrics)
        if within is not None:
            check["within"] = _within(within)
        if better_than_deployed is not None:
            check["better_than_deployed"] = dict(better_than_deployed)
        return self._add(name, "gate", {"gate": check}, needs)

    # ------------------------------------------------------------ internals

    def _job(self, job_type: str, params: Dict[str, Any], step_options: Dict[str, Any]) -> StepRef:
        unknown = sorted(set(step_options) - set(_STEP_OPTIONS))
        if unknown:
            raise TypeError(
                f"{job_type}() got unexpected keyword argument(s) {', '.join(unknown)}; "
                f"the step options are {', '.join(_STEP_OPTIONS)}"
            )
        return self.step(job_type, params, **step_options)

    def _add(
        self,
        name: Optional[str],
        default: str,
        step: Dict[str, Any],
        needs: Optional[Union[StepLike, Sequence[StepLike]]],
    ) -> StepRef:
        if name is None:
            name, n = default, 1
            while name in self._steps:
                n += 1
                name = f"{default}_{n}"
        elif not isinstance(name, str) or not name:
            raise TypeError(f"a step's name is a non-empty string, not {name!r}")
        elif name in self._steps:
            raise ValueError(f"pipeline {self.name!r} already has a step named {name!r}")
        if needs is not None:
            if isinstance(needs, (str, StepRef)):
                needs = [needs]
            step["needs"] = [_step_name(n) for n in needs]
        self._steps[name] = step
        return StepRef(name, step.get("job_type"))


def _step_name(step: Any) -> str:
    if isinstance(step, (StepRef, PipelineStep)):
        return step.name
    if isinstance(step, str) and step:
        return step
    raise TypeError(f"expected a StepRef or a step's name such as 'train', not {step!r}")


def _within(within: Union[Tuple[StepLike, str, float], Mapping[str, Any]]) -> Dict[str, Any]:
    """A gate's ``within`` as the API takes it: ``{"of": STEP, "metric": ..., "points": ...}``."""
    if isinstance(within, Mapping):
        out = dict(within)
        if "of" in out:
            out["of"] = _step_name(out["of"])
        return out
    if isinstance(within, (tuple, list)) and len(within) == 3:
        of, metric, points = within
        return {"of": _step_name(of), "metric": metric, "points": points}
    raise TypeError(
        f"within is (other_evaluate_step, metric, points), such as (teacher_eval, "
        f"'accuracy', 0.05), not {within!r}"
    )


def _no_step_refs(value: Any, path: str) -> None:
    """Refuses a :class:`StepRef` given as a param value: it means one of its outputs."""
    if isinstance(value, StepRef):
        raise TypeError(
            f"{path} is the step {value.name!r} itself; pass one of its outputs, such as "
            f"{value.name}.dataset, {value.name}.model or {value.name}.metric('accuracy')"
        )
    if isinstance(value, Mapping):
        for k, v in value.items():
            _no_step_refs(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_step_refs(v, f"{path}[{i}]")
