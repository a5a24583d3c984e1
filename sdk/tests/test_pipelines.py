"""Pipelines through the SDK, on the built-in stages: the lifecycle built with
`client.pipeline(...)` and run to its end, then rerun with a deploy step that serves until it
is undeployed; the spec's faults refused before anything runs, each named by its path; a gate
that stops a run; reruns that reuse the steps whose work is unchanged; cancelling a run; and
the builder's spec, offline."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, Optional, Union

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # the example is TOML; Python before 3.11 reads it with the tomli package
    import tomli as tomllib

from conftest import wait_for
from nexa_forge import (
    ARTIFACT_URI_PREFIX,
    ConflictError,
    GateVerdict,
    JobStatus,
    JobType,
    NexaForgeClient,
    NotFoundError,
    Pipeline,
    PipelineRun,
    PipelineStatus,
    StepOutputs,
    StepRef,
    StepStatus,
    ValidationError,
    WaitTimeoutError,
)

# Small enough for a few seconds per run on two slow cores. With these the teacher scores
# about 0.9 on the test split and the student about 0.87 (four classes: 0.25 is chance; at
# the default learning rate the student stays near 0.68), so the 0.25 margin below never
# decides by luck.
SAMPLES = 2000
TEACHER_EPOCHS = 8
STUDENT_EPOCHS = 5
STUDENT_LEARNING_RATE = 1e-2
MARGIN = 0.25


def finished(client: NexaForgeClient, run: PipelineRun, timeout: float = 300) -> PipelineRun:
    return client.wait_pipeline(run, timeout=timeout, poll_interval=0.25)


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipelines" / "physics.toml"


def test_the_example_pipeline_runs_end_to_end_and_deploys_its_student(
    builtin_client: NexaForgeClient,
) -> None:
    client = builtin_client
    with EXAMPLE.open("rb") as f:
        spec = tomllib.load(f)
    run = finished(client, client.run_pipeline(spec))
    try:
        assert run.status == PipelineStatus.SUCCEEDED, describe(run)
        assert [s.name for s in run.steps if s.kind == "gate"] == ["data_ok", "student_ok"]
        assert all(s.gate is not None and s.gate.passed for s in run.steps if s.kind == "gate")
        # Each step's job names the run and step that made it.
        teacher = run.step("teacher").job_id
        assert teacher is not None
        assert client.get_job(teacher).pipeline == (run.pipeline_id, "teacher")
        # The student serves under the deploy step's target.
        answer = client.predict("physics", [[1.0, 2.0, 3.0]])
        assert len(answer["predictions"]) == 1
    finally:
        client.undeploy("physics")


def outputs(run: PipelineRun, step: Union[str, StepRef]) -> StepOutputs:
    """What a step of `run` made; it must have succeeded."""
    made = run.step(step).outputs
    assert made is not None, f"step {step} made nothing: {run.step(step)!r}"
    return made


def describe(run: PipelineRun) -> str:
    """The run and its steps, for a failed assertion."""
    return f"{run!r}: " + "; ".join(f"{s.name} {s.status} {s.reason or ''}" for s in run.steps)


def test_the_lifecycle_as_a_pipeline(builtin_client: NexaForgeClient) -> None:
    client = builtin_client
    p = client.pipeline("physics")
    data = p.generate(domain="physics", num_samples=SAMPLES, seed=7)
    audit = p.audit(data.dataset, label_column="range_m_class")
    clean = p.gate(audit, max_missing=0.01, max_duplicates=0.05, min_rows=1000, name="clean")
    teacher = p.train(model_id="pl_teacher", dataset_uri=data.dataset, epochs=TEACHER_EPOCHS,
                      base="teacher_large", learning_rate=2e-3, needs=[clean], name="teacher")
    student = p.distill(teacher.model, "pl_student", data.dataset, epochs=STUDENT_EPOCHS,
                        hyperparameters={"learning_rate": STUDENT_LEARNING_RATE}, name="student")
    eval_teacher = p.evaluate(teacher.model, data.dataset, name="eval_teacher")
    eval_student = p.evaluate(student.model, data.dataset, name="eval_student")
    close = p.gate(eval_student, within=(eval_teacher, "accuracy", MARGIN), name="close")

    started = p.run()
    assert isinstance(started, PipelineRun)
    assert started.pipeline_id.startswith("pl-") and started.name == "physics"
    assert started.status == PipelineStatus.RUNNING and not started.is_finished
    assert started.events is None, "only GET /pipelines/{id} lists the events"
    assert started.rerun_of is None and started.from_step is None
    # The steps come each after those it needs.
    order = [s.name for s in started.steps]
    for s in started.steps:
        assert all(order.index(n) < order.index(s.name) for n in s.needs), order
    assert started.step(teacher).needs == ["clean", "generate"]
    assert started.step("close").needs == ["eval_student", "eval_teacher"]
    assert started.step("clean").is_gate and started.step("clean").job_type is None
    assert started.step("student").job_type == JobType.DISTILL
    assert started.spec == p.spec()

    run = finished(client, started)
    assert run.status == PipelineStatus.SUCCEEDED and run.succeeded, describe(run)
    assert run.failed_step is None and run.error is None and run.finished_at is not None
    assert all(s.status == StepStatus.SUCCEEDED for s in run.steps), describe(run)

    # Each job step ran its own job, with its references resolved.
    dataset = outputs(run, data).artifacts["dataset"]
    assert dataset.startswith(ARTIFACT_URI_PREFIX)
    jobs = {name: client.get_job(job_id) for name, job_id in run.job_ids.items()}
    assert set(jobs) == {"generate", "audit", "teacher", "student", "eval_teacher",
                         "eval_student"}
    assert len({j.job_id for j in jobs.values()}) == len(jobs)
    for name, job in jobs.items():
        step = run.step(name)
        assert job.status == JobStatus.SUCCEEDED and job.job_type == step.job_type, job
        assert step.reused_from is None and step.outputs is not None
    assert jobs["audit"].params["dataset_uri"] == dataset
    assert jobs["teacher"].params["hyperparameters"]["base"] == "teacher_large"
    assert outputs(run, teacher).model == "pl_teacher:1"
    assert outputs(run, student).model == "pl_student:1"
    assert jobs["student"].params["teacher_model"] == "pl_teacher:1"
    assert jobs["eval_student"].params["model_id"] == "pl_student:1"
    assert outputs(run, audit).metrics["rows"] == SAMPLES

    # The gates' verdicts.
    for gate in ("clean", "close"):
        verdict = run.step(gate).gate
        assert isinstance(verdict, GateVerdict) and verdict.passed and verdict.reasons == []
        assert run.step(gate).job_id is None and run.step(gate).outputs is None
        assert verdict.on == {"clean": "audit", "close": "eval_student"}[gate]
    teacher_acc = outputs(run, eval_teacher).metrics["accuracy"]
    student_acc = outputs(run, eval_student).metrics["accuracy"]
    assert teacher_acc > 0.7 and student_acc >= teacher_acc - MARGIN, (teacher_acc, student_acc)
    messages = [e.message for e in run.events or []]
    assert messages[0] == "started" and messages[-1] == "succeeded", messages
    assert "gate close passed" in messages, messages
    assert run.pipeline_id in [r.pipeline_id for r in client.list_pipelines()]

    # Deploy the student: rerun with a deploy step added. Every step's work is unchanged, so
    # each reuses its job; only the deploy step runs.
    deploy = p.deploy(student.model, needs=[close])
    assert deploy == StepRef("deploy", "deploy")
    rerun = client.rerun_pipeline(run, spec=p)
    assert rerun.rerun_of == run.pipeline_id and rerun.pipeline_id != run.pipeline_id
    deploy_job = wait_for(lambda: client.get_pipeline(rerun).step(deploy).job_id, timeout=60)
    serving = client.get_pipeline(rerun)
    for name, job_id in run.job_ids.items():
        assert serving.step(name).job_id == job_id, describe(serving)
        assert serving.step(name).reused_from == run.pipeline_id, describe(serving)
    assert deploy_job not in run.job_ids.values()
    try:
        # A deploy step has done its work once its replica is ready: the run succeeds while
        # the model goes on serving.
        deployed = client.wait_pipeline(rerun, timeout=120, poll_interval=0.25)
        assert deployed.status == PipelineStatus.SUCCEEDED, describe(deployed)
        assert deployed.step(deploy).status == StepStatus.SUCCEEDED
        assert client.get_job(deploy_job).status == JobStatus.RUNNING
        endpoint = client.wait_ready(deploy_job, timeout=10, poll_interval=0.25)
        assert endpoint.name == "pl_student" and endpoint.model_id == "pl_student:1"
        answer = client.predict(endpoint, [[1.0, 2.0, 3.0]])
        assert len(answer["predictions"]) == 1
    finally:
        assert client.undeploy("pl_student") == [deploy_job]
    assert client.wait(deploy_job, timeout=60, poll_interval=0.25).status == JobStatus.CANCELLED
    # The run stays as it ended: undeploying later is no failure of it.
    assert client.get_pipeline(rerun).status == PipelineStatus.SUCCEEDED
    print(f"pipeline accuracies: teacher {teacher_acc:.3f}, student {student_acc:.3f}")


def test_faults_are_refused_before_anything_runs(builtin_client: NexaForgeClient) -> None:
    client = builtin_client
    before = len(client.list_pipelines())

    # A cycle: each step needs the other. The fault is the steps as a whole.
    p = client.pipeline("cycle")
    p.generate(domain="physics", num_samples=10, name="a", needs="b")
    p.generate(domain="physics", num_samples=10, name="b", needs="a")
    with pytest.raises(ValidationError) as cycle:
        p.run()
    assert cycle.value.status == 422 and cycle.value.field == "steps", cycle.value
    assert "cycle" in cycle.value.message and "a → b → a" in cycle.value.message

    # A reference to an output the step does not make, and to a step that does not exist.
    p = client.pipeline("bad-reference")
    data = p.generate(domain="physics", num_samples=10)
    p.train(model_id="m", dataset_uri=data.model)
    with pytest.raises(ValidationError) as bad:
        p.run()
    assert bad.value.field == "steps.train.params.dataset_uri", bad.value
    assert "register no model" in bad.value.message, bad.value
    with pytest.raises(ValidationError) as unknown:
        client.run_pipeline({"name": "x", "steps": {
            "train": {"job_type": "train",
                      "params": {"model_id": "m", "dataset_uri": "${nope.artifacts.dataset}"}},
        }})
    assert unknown.value.field == "steps.train.params.dataset_uri", unknown.value
    assert '"nope"' in unknown.value.message

    # A reference of the wrong type for its param (a job id is no number of epochs), an
    # unknown step in `needs`, and a gate that mixes an audit's checks with an evaluation's.
    p = client.pipeline("typed")
    data = p.generate(domain="physics", num_samples=10)
    p.train(model_id="m", dataset_uri=data.dataset, epochs=data.job_id)
    with pytest.raises(ValidationError) as typed:
        p.run()
    assert typed.value.field == "steps.train.params.epochs", typed.value
    p = client.pipeline("needs")
    p.generate(domain="physics", num_samples=10, needs=["nowhere"])
    with pytest.raises(ValidationError) as needs:
        p.run()
    assert needs.value.field == "steps.generate.needs[0]", needs.value
    with pytest.raises(ValidationError) as mixed:
        client.run_pipeline({"name": "x", "steps": {
            "data": {"job_type": "generate", "params": {"domain": "physics", "num_samples": 10}},
            "check": {"gate": {"on": "data", "min_rows": 1, "min_metrics": {"accuracy": 0.5}}},
        }})
    assert mixed.value.field == "steps.check.gate", mixed.value

    assert len(client.list_pipelines()) == before, "a refused pipeline never runs"
    with pytest.raises(NotFoundError):
        client.get_pipeline("pl-999999")
    with pytest.raises(NotFoundError):
        client.rerun_pipeline("pl-999999")


def test_a_gate_that_does_not_pass_stops_the_run(builtin_client: NexaForgeClient) -> None:
    client = builtin_client
    p = client.pipeline("gated")
    data = p.generate(domain="physics", num_samples=600, seed=3)
    model = p.train(model_id="pl_gated", dataset_uri=data.dataset, epochs=1)
    scored = p.evaluate(model.model, data.dataset)
    gate = p.gate(scored, min_metrics={"accuracy": 0.999}, name="good_enough")
    p.deploy(model.model, needs=[gate])
    p.evaluate(model.model, data.dataset, split="all", needs=gate)

    run = finished(client, p.run())
    assert run.status == PipelineStatus.FAILED and not run.succeeded, describe(run)
    assert run.failed_step == "good_enough"
    assert run.error is not None and "accuracy" in run.error, run.error
    stopped = run.step(gate)
    assert stopped.status == StepStatus.FAILED and stopped.gate is not None
    assert not stopped.gate.passed and stopped.gate.on == "evaluate"
    [reason] = stopped.gate.reasons
    assert "accuracy is" in reason and "0.999" in reason, reason
    for name in ("deploy", "evaluate_2"):
        after = run.step(name)
        assert after.status == StepStatus.SKIPPED and after.job_id is None, describe(run)
        assert after.reason is not None and "good_enough" in after.reason, after.reason
    assert all(run.step(s).succeeded for s in ("generate", "train", "evaluate"))
    assert any("good_enough" in e.message for e in run.events or [])
    assert "pl_gated" not in [e.name for e in client.endpoints()]


def test_a_rerun_reuses_the_steps_whose_work_is_unchanged(
    builtin_client: NexaForgeClient,
) -> None:
    client = builtin_client
    p = client.pipeline("rerun")
    data = p.generate(domain="physics", num_samples=600, seed=5)
    model = p.train(model_id="pl_rerun", dataset_uri=data.dataset, epochs=1)
    p.evaluate(model.model, data.dataset)
    first = finished(client, p.run())
    assert first.succeeded, describe(first)

    # From `train`: generate is reused, train and what follows run again.
    second = client.rerun_pipeline(first, from_step=model)
    assert second.rerun_of == first.pipeline_id and second.from_step == "train"
    second = finished(client, second)
    assert second.succeeded, describe(second)
    assert second.step("generate").job_id == first.step("generate").job_id
    assert second.step("generate").reused_from == first.pipeline_id
    for name in ("train", "evaluate"):
        assert second.step(name).job_id not in (None, first.step(name).job_id), describe(second)
        assert second.step(name).reused_from is None
    assert outputs(second, model).model == "pl_rerun:2"
    assert client.get_job(second.job_ids["evaluate"]).params["model_id"] == "pl_rerun:2"
    assert any("reused from " + first.pipeline_id in e.message for e in second.events or [])

    # Unchanged: every step is reused, each naming the run that did the work.
    third = finished(client, client.rerun_pipeline(second.pipeline_id))
    assert third.succeeded and third.job_ids == second.job_ids, describe(third)
    assert [third.step(s).reused_from for s in ("generate", "train", "evaluate")] == [
        first.pipeline_id, second.pipeline_id, second.pipeline_id]

    # A fixed spec: only the step that changed runs again.
    p.evaluate(model.model, data.dataset, metrics=["accuracy"], name="accuracy_only")
    fourth = finished(client, client.rerun_pipeline(third, spec=p.spec()))
    assert fourth.succeeded, describe(fourth)
    assert {s.name for s in fourth.steps if s.reused_from is None} == {"accuracy_only"}
    assert outputs(fourth, "accuracy_only").metrics.keys() == {"accuracy"}

    with pytest.raises(ValidationError) as unknown:
        client.rerun_pipeline(fourth, from_step="nowhere")
    assert unknown.value.field == "from", unknown.value
    runs = [r.pipeline_id for r in client.list_pipelines()]
    assert runs.index(fourth.pipeline_id) < runs.index(first.pipeline_id), "newest first"


def test_cancel_a_run(builtin_client: NexaForgeClient) -> None:
    client = builtin_client
    p = client.pipeline("slow")
    data = p.generate(domain="physics", num_samples=500, seed=9)
    # Many epochs: it is still training when cancelled.
    slow = p.train(model_id="pl_cancelled", dataset_uri=data.dataset, epochs=10000)
    p.evaluate(slow.model, data.dataset)
    run = p.run()

    def training() -> Optional[PipelineRun]:
        now = client.get_pipeline(run)
        assert not now.is_finished, describe(now)
        job_id = now.step(slow).job_id
        return now if job_id and client.get_job(job_id).status == JobStatus.RUNNING else None

    now = wait_for(training, timeout=60)
    train_job = now.step(slow).job_id
    assert train_job is not None
    with pytest.raises(WaitTimeoutError) as waiting:
        client.wait_pipeline(run, timeout=0.3, poll_interval=0.1)
    message = str(waiting.value)
    assert f"running train ({train_job})" in message and "waiting evaluate" in message, message
    with pytest.raises(ConflictError):
        client.rerun_pipeline(run)

    answer = client.cancel_pipeline(run)
    assert answer.status in (PipelineStatus.CANCELLING, PipelineStatus.CANCELLED)
    ended = finished(client, answer, timeout=60)
    assert ended.status == PipelineStatus.CANCELLED and ended.is_finished, describe(ended)
    assert ended.error is not None and ended.failed_step is None
    statuses: Dict[str, StepStatus] = {s.name: s.status for s in ended.steps}
    assert statuses == {"generate": StepStatus.SUCCEEDED, "train": StepStatus.CANCELLED,
                        "evaluate": StepStatus.CANCELLED}, describe(ended)
    assert client.get_job(train_job).status == JobStatus.CANCELLED
    assert ended.step("evaluate").job_id is None, "a step not started never starts"
    with pytest.raises(ConflictError):
        client.cancel_pipeline(ended)


def test_the_builder_writes_the_spec() -> None:
    p = Pipeline("physics")
    data = p.generate(domain="physics", num_samples=100)
    assert data == StepRef("generate", "generate") and str(data) == "generate"
    assert (data.dataset, data.job_id) == ("${generate.artifacts.dataset}", "${generate.job_id}")
    first = p.train(model_id="a", dataset_uri=data.dataset, base="medium",
                    hyperparameters={"optimizer/beta1": 0.9}, timeout_seconds=60.0, gpus=0)
    second = p.train(model_id="b", dataset_uri=data.dataset, epochs=first.metric("steps"))
    assert (first.name, second.name, second.model) == ("train", "train_2", "${train_2.model}")
    distilled = p.distill(first.model, "s", data.dataset, name="student", max_attempts=2)
    assert distilled.artifact("teacher_labelled") == "${student.artifacts.teacher_labelled}"
    scores = [p.evaluate(m.model, data.dataset, "accuracy") for m in (first, distilled)]
    p.gate(scores[1], within={"of": scores[0], "metric": "accuracy", "points": 0.1})
    p.gate(scores[0], min_metrics={"accuracy": 0.5}, needs=[scores[1], "gate"])
    assert [s.name for s in p.steps] == ["generate", "train", "train_2", "student", "evaluate",
                                         "evaluate_2", "gate", "gate_2"]
    spec = p.spec()
    assert spec["name"] == "physics"
    steps = spec["steps"]
    assert steps["train"] == {
        "job_type": "train",
        "params": {"model_id": "a", "dataset_uri": "${generate.artifacts.dataset}",
                   "hyperparameters": {"optimizer/beta1": 0.9, "base": "medium"}},
        "timeout_seconds": 60,
        "gpus": 0,
    }
    assert steps["train_2"]["params"]["epochs"] == "${train.metrics.steps}"
    assert steps["student"]["max_attempts"] == 2
    assert steps["evaluate_2"]["params"] == {"model_id": "${student.model}",
                                             "dataset_uri": "${generate.artifacts.dataset}",
                                             "metrics": ["accuracy"]}
    assert steps["gate"] == {"gate": {"on": "evaluate_2", "within": {
        "of": "evaluate", "metric": "accuracy", "points": 0.1}}}
    assert steps["gate_2"] == {"gate": {"on": "evaluate", "min_metrics": {"accuracy": 0.5}},
                               "needs": ["evaluate_2", "gate"]}
    # The spec is a copy.
    spec["steps"]["train"]["params"]["model_id"] = "changed"
    assert p.spec()["steps"]["train"]["params"]["model_id"] == "a"

    with pytest.raises(ValueError, match="already has a step named 'student'"):
        p.audit(data.dataset, name="student")
    with pytest.raises(TypeError, match="step options"):
        p.audit(data.dataset, priority=3)
    with pytest.raises(TypeError, match="generate.dataset"):
        p.audit(data)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="within is"):
        p.gate(scores[0], within=(scores[1], "accuracy"))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not bound to a client"):
        p.run()
    with pytest.raises(KeyError, match="no step 'nope'"):
        PipelineRun.from_dict({"pipeline_id": "pl-1", "steps": [{"name": "a"}]}).step("nope")


def test_records_tolerate_missing_fields() -> None:
    run = PipelineRun.from_dict({"pipeline_id": "pl-7", "status": "paused", "steps": [
        {"name": "a", "job_type": "train", "status": "running", "job_id": "job-3",
         "outputs": {"metrics": {"loss": 1, "bad": "x"}, "artifacts": {"model": "nexa://x"}}},
        {"name": "g", "kind": "gate", "gate": {"on": "a", "passed": False, "reasons": ["no"]}},
        "not a step",
    ], "from": "a"})
    assert run.status == "paused" and not run.is_finished and run.from_step == "a"
    assert [s.name for s in run.steps] == ["a", "g"] and run.job_ids == {"a": "job-3"}
    a = run.step("a")
    assert a.job_type == JobType.TRAIN and a.kind == "job" and not a.is_finished
    assert a.outputs is not None and a.outputs.metrics == {"loss": 1.0}
    assert a.outputs.model is None and a.outputs.artifacts == {"model": "nexa://x"}
    g = run.step("g")
    assert g.is_gate and g.gate is not None and g.gate.reasons == ["no"] and not g.gate.passed
    assert run.events is None and run.spec == {} and run.created_at is None
    assert run["pipeline_id"] == "pl-7" and "pl-7" in repr(run)
    empty = PipelineRun.from_dict({})
    assert empty.pipeline_id == "" and empty.steps == [] and empty.failed_step is None
