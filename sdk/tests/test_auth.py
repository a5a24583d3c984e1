"""A server with tokens: 401 without one, success with one, 403 for a read-only one."""

from __future__ import annotations

import pytest

from conftest import AuthServer
from nexa_forge import AuthenticationError, JobStatus, NexaForgeClient


def test_without_a_token_every_api_call_is_refused(
    auth_server: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEXA_TOKEN", raising=False)
    client = NexaForgeClient(api_url=auth_server.api_url)
    for call in (client.workers, client.list_jobs, lambda: client.generate("physics", 1)):
        with pytest.raises(AuthenticationError) as e:
            call()
        assert e.value.status == 401 and e.value.code == "unauthorized"
        assert "NEXA_TOKEN" in str(e.value)
    # /healthz never needs a token.
    assert client.health()["status"] == "ok"

    wrong = NexaForgeClient(api_url=auth_server.api_url, token="not-a-token")
    with pytest.raises(AuthenticationError) as e:
        wrong.workers()
    assert e.value.status == 401


def test_with_a_token(auth_server: AuthServer) -> None:
    client = NexaForgeClient(api_url=auth_server.api_url, token=auth_server.token)
    job = client.generate("physics", 10)
    assert client.wait(job, timeout=60).status == JobStatus.SUCCEEDED
    assert [line.text for line in client.logs(job, follow=True)]
    assert any(w.worker_id == "local" for w in client.workers())


def test_the_token_from_the_environment(
    auth_server: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXA_TOKEN", auth_server.token)
    monkeypatch.setenv("NEXA_API_URL", auth_server.api_url)
    assert isinstance(NexaForgeClient().list_jobs(), list)


def test_a_read_only_token_reads_but_does_not_change(auth_server: AuthServer) -> None:
    writer = NexaForgeClient(api_url=auth_server.api_url, token=auth_server.token)
    reader = NexaForgeClient(api_url=auth_server.api_url, token=auth_server.read_only_token)
    job = writer.generate("physics", 5)
    assert reader.get_job(job).job_id == job.job_id
    with pytest.raises(AuthenticationError) as e:
        reader.generate("physics", 5)
    assert e.value.status == 403 and e.value.code == "forbidden"
    with pytest.raises(AuthenticationError) as e:
        reader.cancel(job)
    assert e.value.status == 403
    writer.wait(job, timeout=60)
