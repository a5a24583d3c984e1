"""Fixtures: a real `nexa up` (control plane, HTTP API and one local worker) in a temporary
data folder, with tests/handler.py handling every job type but the built-in audit (`server`,
`api_url`, `client`); and a second one whose worker runs the built-in stages for every type
it has one for — generate, audit, train, distill, evaluate — with no handlers
(`builtin_server`, `builtin_api_url`, `builtin_client`).

The binary is $NEXA_BIN, else <repo>/target/debug/nexa (build it with `cargo build -p nexa`).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from nexa_forge import NexaForgeClient

REPO = Path(__file__).resolve().parents[2]
HANDLER = Path(__file__).resolve().parent / "handler.py"
HANDLED_TYPES = ["generate", "distill", "train", "evaluate", "deploy"]
HTTP_ADDR = re.compile(r"http://127\.0\.0\.1:\d+")


def nexa_bin() -> Path:
    path = Path(os.environ.get("NEXA_BIN") or REPO / "target" / "debug" / "nexa")
    if not path.is_file():
        pytest.exit(
            f"the nexa binary is not at {path}: build it with `cargo build -p nexa` "
            "or set NEXA_BIN",
            returncode=2,
        )
    return path


class NexaServer:
    """One `nexa up` process; `api_url` is its HTTP API. With `handlers`, tests/handler.py
    handles the types in HANDLED_TYPES; without, the worker runs its built-in stages."""

    def __init__(
        self,
        data: Path,
        extra_args: Optional[List[str]] = None,
        handlers: bool = True,
        slots: int = 4,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        self.data = data
        self.stdout_lines: List[str] = []
        self._found = threading.Event()
        self.base_url = ""
        handler = f"{shlex.quote(sys.executable)} {shlex.quote(str(HANDLER))}"
        args = [
            str(nexa_bin()),
            "up",
            "--data",
            str(data),
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--slots",
            str(slots),
            "--cancel-grace",
            "2",
        ]
        if handlers:
            for job_type in HANDLED_TYPES:
                args += ["--handler", f"{job_type}={handler}"]
        # Tests write their datasets in pytest's temporary folders, beside `data`.
        args += ["--data-root", str(data.parent.parent)]
        args += extra_args or []
        self.stderr_path = data.parent / f"{data.name}.stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        environment = dict(os.environ)
        environment.setdefault("NEXA_LOG", "warn")
        environment.update(env or {})
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=environment,
            start_new_session=True,
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", errors="replace")
            self.stdout_lines.append(line)
            m = HTTP_ADDR.search(line)
            if m and not self._found.is_set():
                self.base_url = m.group(0)
                self._found.set()

    @property
    def api_url(self) -> str:
        return self.base_url + "/api"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._found.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nexa up did not print its HTTP address:\n{self.describe()}")
        while True:
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"GET /healthz never answered 200:\n{self.describe()}")
            time.sleep(0.1)

    def describe(self) -> str:
        self._stderr.flush()
        stderr = self.stderr_path.read_text(errors="replace")[-4000:]
        return f"exit: {self.proc.poll()}\nstdout:\n{''.join(self.stdout_lines)}\nstderr:\n{stderr}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._stderr.close()


def start_server(
    data: Path,
    extra_args: Optional[List[str]] = None,
    handlers: bool = True,
    slots: int = 4,
    env: Optional[Dict[str, str]] = None,
) -> NexaServer:
    server = NexaServer(data, extra_args, handlers, slots, env)
    server.wait_ready()
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NexaServer]:
    srv = start_server(tmp_path_factory.mktemp("nexa") / "data")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def api_url(server: NexaServer) -> str:
    return server.api_url


@pytest.fixture
def client(api_url: str, monkeypatch: pytest.MonkeyPatch) -> NexaForgeClient:
    monkeypatch.delenv("NEXA_TOKEN", raising=False)
    return NexaForgeClient(api_url=api_url, timeout=10.0)


@pytest.fixture(scope="session")
def builtin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NexaServer]:
    """`nexa up` with no handlers: generate, audit, train, distill and evaluate jobs run the
    worker's built-in stages, and what they make is kept as nexa:// artifacts. Two slots, so
    two trainings never share this machine's cores with two more."""
    srv = start_server(tmp_path_factory.mktemp("nexa-builtin") / "data", handlers=False, slots=2)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def builtin_api_url(builtin_server: NexaServer) -> str:
    return builtin_server.api_url


@pytest.fixture
def builtin_client(builtin_api_url: str, monkeypatch: pytest.MonkeyPatch) -> NexaForgeClient:
    monkeypatch.delenv("NEXA_TOKEN", raising=False)
    return NexaForgeClient(api_url=builtin_api_url, timeout=30.0)


def make_token(data: Path, *extra: str) -> str:
    """`nexa token create --data DATA`: the token is the last line it prints."""
    out = subprocess.run(
        [str(nexa_bin()), "token", "create", "--data", str(data), *extra],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    assert lines, f"nexa token create printed nothing:\n{out.stderr}"
    return lines[-1]


class AuthServer:
    def __init__(self, server: NexaServer, token: str, read_only_token: str) -> None:
        self.server = server
        self.api_url = server.api_url
        self.token = token
        self.read_only_token = read_only_token


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """A second server whose data folder holds a token and a read-only token."""
    data = tmp_path_factory.mktemp("nexa-auth") / "data"
    data.mkdir()
    token = make_token(data)
    read_only = make_token(data, "--read-only")
    srv = start_server(data)
    yield AuthServer(srv, token, read_only)
    srv.stop()


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Polls `predicate` until it answers something truthy; answers that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        time.sleep(interval)
