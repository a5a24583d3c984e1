"""Deployed models through the SDK, on the built-in stages: train a model, deploy it, wait
until its replica is ready, ask it for predictions, list the endpoints, add replicas, and
undeploy them all; and what waiting says when a deployment fails or cannot start."""

from __future__ import annotations

import pytest

from conftest import NexaServer, wait_for
from nexa_forge import (
    Endpoint,
    Job,
    JobStatus,
    NexaForgeClient,
    NexaForgeError,
    NotFoundError,
    ValidationError,
    WaitTimeoutError,
)


def succeeded(client: NexaForgeClient, job: Job, timeout: float = 300) -> Job:
    done = client.wait(job, timeout=timeout, poll_interval=0.25)
    assert done.status == JobStatus.SUCCEEDED, f"{done.job_id} ({done.job_type}): {done.error}"
    assert done.result is not None
    return done


def test_a_deployed_model_answers_until_its_job_is_cancelled(
    builtin_client: NexaForgeClient, builtin_server: NexaServer
) -> None:
    client = builtin_client
    generated = succeeded(client, client.generate(domain="physics", num_samples=600, seed=11))
    assert generated.result is not None
    dataset = generated.result.artifacts["dataset"]
    succeeded(client, client.train(model_id="served", dataset_uri=dataset, epochs=2))

    deployed = client.deploy("served")
    assert deployed.params["model_id"] == "served"
    try:
        endpoint = client.wait_ready(deployed, timeout=120, poll_interval=0.25)
        assert isinstance(endpoint, Endpoint)
        # The default target ("local") names the endpoint after the model.
        assert (endpoint.name, endpoint.model_id, endpoint.ready_replicas) == ("served", "served", 1)
        assert endpoint.is_ready
        [replica] = endpoint.replicas
        assert replica.job_id == deployed.job_id and replica.ready
        assert replica.status == JobStatus.RUNNING and replica.worker_id == "local"
        assert replica.url and replica.url.startswith("http://127.0.0.1:"), replica
        assert endpoint.predict_url == f"{builtin_server.base_url}/api/endpoints/served/predict"
        assert endpoint.infer_url == f"{builtin_server.base_url}/v2/models/served/infer"
        # Waiting by name answers at once now.
        assert client.wait_ready("served", timeout=10).replicas[0].job_id == deployed.job_id

        # The physics datasets have three features; the classifier four classes.
        answer = client.predict("served", [[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])
        predictions, classes = answer["predictions"], answer["classes"]
        assert len(predictions) == 2 and all(len(p) == 4 for p in predictions), answer
        assert len(classes) == 2 and all(c in range(4) for c in classes), answer
        # A flat list of numbers is one row; an Endpoint names itself.
        one = client.predict(endpoint, [1.0, 2.0, 3.0])
        assert one["predictions"] == [predictions[0]] and one["classes"] == [classes[0]]

        # Rows the model cannot take: the replica's message, as a ValidationError.
        with pytest.raises(ValidationError, match="takes 3") as bad:
            client.predict("served", [[1.0, 2.0]])
        assert bad.value.status == 400 and bad.value.code == "bad_request"
        with pytest.raises(NotFoundError, match="served"):
            client.predict("no-such-endpoint", [[1.0, 2.0, 3.0]])
        with pytest.raises(NotFoundError, match="served"):
            client.endpoint("no-such-endpoint")
        with pytest.raises(ValueError, match="not a deploy job"):
            client.wait_ready(generated, timeout=1)

        listed = client.endpoints()
        assert [e.name for e in listed] == ["served"]
        assert listed[0] == client.endpoint("served")

        # A second deploy of two replicas joins the endpoint: one deploy job per replica.
        more = client.deploy("served", replicas=2)
        assert len(more.replica_job_ids) == 2 and more.replica_job_ids[0] == more.job_id
        assert deployed.replica_job_ids == []
        endpoint = client.wait_ready("served", timeout=120, poll_interval=0.25, replicas=3)
        assert {r.job_id for r in endpoint.replicas} == {deployed.job_id, *more.replica_job_ids}
        for _ in range(6):
            assert client.predict("served", [[1.0, 2.0, 3.0]])["predictions"] == [predictions[0]]
        with pytest.raises(ValueError, match="replicas must be"):
            client.wait_ready("served", replicas=0)
    finally:
        # Undeploy: every replica's job is cancelled.
        cancelled = client.undeploy("served")
    assert sorted(cancelled) == sorted([deployed.job_id, *more.replica_job_ids])
    for job_id in cancelled:
        assert client.wait(job_id, timeout=60, poll_interval=0.25).status == JobStatus.CANCELLED
    with pytest.raises(NotFoundError, match="nothing is deployed"):
        client.undeploy("served")
    assert wait_for(lambda: client.endpoints() == [], timeout=15) is True
    with pytest.raises(NotFoundError, match="nothing is deployed"):
        client.endpoint("served")
    # The stable URL answers 404 too, though not always at once: the control plane does not
    # forget a replica when its deploy job is cancelled, only at its worker's next heartbeat,
    # once not heard from for 3 s, or once a request to it fails (answered 502).
    wait_for(lambda: _not_found(client, "served"), timeout=15)


def _not_found(client: NexaForgeClient, endpoint: str) -> bool:
    """Whether predicting with `endpoint` answers 404 (False for a 502: no replica answered)."""
    try:
        client.predict(endpoint, [[1.0, 2.0, 3.0]])
    except NotFoundError:
        return True
    except NexaForgeError as e:
        if e.status != 502:
            raise
        return False
    raise AssertionError(f"{endpoint!r} still answers predictions")


def test_waiting_fails_at_once_when_the_deploy_job_fails(builtin_client: NexaForgeClient) -> None:
    client = builtin_client
    job = client.deploy("never-trained", max_attempts=1)
    with pytest.raises(NexaForgeError) as failed:
        client.wait_ready(job.job_id, timeout=120, poll_interval=0.25)
    assert failed.value.code == "deploy_failed", failed.value
    assert job.job_id in str(failed.value) and "never-trained" in str(failed.value), failed.value
    assert client.get_job(job).status == JobStatus.FAILED


def test_waiting_times_out_saying_why(builtin_client: NexaForgeClient) -> None:
    client = builtin_client
    # No worker is labelled region=mars: the replica is never placed.
    job = client.deploy("ghost", region="mars")
    try:
        assert job.params["region"] == "mars"
        with pytest.raises(WaitTimeoutError) as by_job:
            client.wait_ready(job, timeout=0.5, poll_interval=0.1)
        assert by_job.value.job_id == job.job_id
        assert f"{job.job_id} is queued" in str(by_job.value), by_job.value
        with pytest.raises(WaitTimeoutError, match="endpoint 'ghost' has no ready replica"):
            client.wait_ready("ghost", timeout=0.5, poll_interval=0.1)
        ghost = client.endpoint("ghost")
        assert ghost.ready_replicas == 0 and not ghost.is_ready
        assert [(r.job_id, r.status, r.ready) for r in ghost.replicas] == [
            (job.job_id, JobStatus.QUEUED, False)
        ]
    finally:
        client.cancel(job)
    # A cancelled deploy job fails the wait at once, naming it.
    with pytest.raises(NexaForgeError) as cancelled:
        client.wait_ready(job, timeout=30)
    assert cancelled.value.code == "deploy_cancelled", cancelled.value
    with pytest.raises(NotFoundError):
        client.wait_ready("ghost", timeout=5)
