"""The README's quick start, as a user would write it."""

from __future__ import annotations

import pytest


def test_quick_start(api_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from nexa_forge import NexaForgeClient

    client = NexaForgeClient(api_url=api_url)
    job = client.generate(domain="physics", num_samples=100)
    print(job.job_id, job.status)

    for line in client.logs(job, follow=True):
        print(line.text)

    job = client.wait(job.job_id, timeout=60)
    print(job.status)
    print(job.result.metrics if job.result else job.error)

    out = capsys.readouterr().out
    assert job.status == "succeeded"
    assert job.is_finished
    assert job["status"] == "succeeded"
    assert job.result is not None and job.result.metrics["loss"] == 0.125
    assert "handler: generate job" in out
    assert "succeeded" in out.splitlines()[-2]


def test_the_client_reads_its_settings_from_the_environment(
    api_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nexa_forge import DEFAULT_API_URL, NexaForgeClient

    monkeypatch.delenv("NEXA_API_URL", raising=False)
    monkeypatch.delenv("NEXA_TOKEN", raising=False)
    assert NexaForgeClient().api_url == DEFAULT_API_URL == "http://localhost:8000/api"

    monkeypatch.setenv("NEXA_API_URL", api_url + "/")
    client = NexaForgeClient()
    assert client.api_url == api_url
    assert client.health()["status"] == "ok"
    assert NexaForgeClient(api_url="http://example.invalid/api").api_url == "http://example.invalid/api"

    with pytest.raises(ValueError, match="not an http"):
        NexaForgeClient(api_url="localhost:8000")
