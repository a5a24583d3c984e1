"""Workers, health, and a server that is not there."""

from __future__ import annotations

import socket

import pytest

from nexa_forge import NexaForgeClient, NexaForgeError, ServerUnavailableError


def test_workers(client: NexaForgeClient) -> None:
    workers = client.workers()
    local = {w.worker_id: w for w in workers}["local"]
    assert local.status == "alive" and local.is_alive
    assert {"audit", "generate", "train", "distill", "evaluate", "deploy"} <= set(local.job_types)
    assert local.registered_at is not None and local.last_heartbeat is not None
    assert isinstance(local.running_jobs, list)
    assert local["worker_id"] == "local"


def test_health(client: NexaForgeClient) -> None:
    assert client.health() == {"status": "ok"}


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_server_that_is_not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEXA_TOKEN", raising=False)
    url = f"http://127.0.0.1:{closed_port()}/api"
    client = NexaForgeClient(api_url=url, timeout=5)
    for call in (client.health, client.workers, lambda: client.generate("physics", 1)):
        with pytest.raises(ServerUnavailableError) as e:
            call()
        assert isinstance(e.value, NexaForgeError)
        assert e.value.status is None
        assert url in str(e.value)
        assert "nexa up" in str(e.value)


def test_a_server_that_does_not_answer() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        client = NexaForgeClient(api_url=f"http://127.0.0.1:{port}/api", timeout=0.3)
        with pytest.raises(ServerUnavailableError, match="did not answer within"):
            client.health()


def test_a_url_without_api_is_an_error_not_a_crash(api_url: str) -> None:
    client = NexaForgeClient(api_url=api_url[: -len("/api")])
    with pytest.raises(NexaForgeError):
        client.workers()
    assert client.health() == {"status": "ok"}
