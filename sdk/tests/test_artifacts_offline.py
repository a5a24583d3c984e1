"""Artifacts and models without a nexa server: reading the records, naming artifacts, and
downloads (where they go, the SHA-256 check) against a scripted server."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple
from urllib.parse import unquote, urlsplit

import pytest

from nexa_forge import (
    Artifact,
    ArtifactKind,
    IntegrityError,
    JobType,
    Model,
    ModelSummary,
    ModelVersion,
    NexaForgeClient,
    NexaForgeError,
    NotFoundError,
    artifact_digest,
)

CONTENT = b"PAR1" + bytes(range(256)) * 40 + b"PAR1"
DIGEST = hashlib.sha256(CONTENT).hexdigest()
URI = "nexa://artifacts/" + DIGEST


def artifact_body(digest: str = DIGEST, name: str = "physics_projectile.parquet") -> Dict[str, Any]:
    return {
        "uri": "nexa://artifacts/" + digest,
        "sha256": digest,
        "name": name,
        "kind": "dataset",
        "size": len(CONTENT),
        "job_id": "job-1",
        "created_at": "2026-11-26T16:00:00.000Z",
        "step": None,
        "download_url": f"/api/artifacts/{digest}/content",
    }


def version_body(name: str, version: int, **more: Any) -> Dict[str, Any]:
    body: Dict[str, Any] = {
        "name": name,
        "version": version,
        "job_id": f"job-{version + 2}",
        "made_by": "train",
        "uri": "nexa://artifacts/" + "ab" * 32,
        "dataset_uri": URI,
        "teacher": None,
        "metrics": {"test_score": 0.75, "steps": 120},
        "created_at": "2026-11-26T16:00:01Z",
        "evaluations": ["job-9"],
        "dataset": artifact_body(),
        "generated_by": "job-1",
    }
    body.update(more)
    return body


def test_artifact_references() -> None:
    assert artifact_digest(URI) == DIGEST
    assert artifact_digest(DIGEST.upper()) == DIGEST
    assert artifact_digest(f"  {URI}\n") == DIGEST
    for bad in ("s3://nexa-data/physics_v1.parquet", "file:///tmp/x.parquet", DIGEST[:-1],
                "nexa://artifacts/" + "g" * 64, ""):
        with pytest.raises(ValueError, match="does not name an artifact"):
            artifact_digest(bad)


def test_artifact_and_model_records() -> None:
    a = Artifact.from_dict(artifact_body())
    assert (a.uri, a.sha256, a.name, a.kind, a.size, a.job_id, a.step) == (
        URI, DIGEST, "physics_projectile.parquet", ArtifactKind.DATASET, len(CONTENT), "job-1", None)
    assert a.kind == "dataset" and a["kind"] == "dataset"
    assert a.created_at is not None and a.created_at.year == 2026
    checkpoint = Artifact.from_dict(dict(artifact_body(), kind="checkpoint", step=300, job_id=None))
    assert checkpoint.kind == ArtifactKind.CHECKPOINT and checkpoint.step == 300
    assert checkpoint.job_id is None
    assert Artifact.from_dict({"uri": URI}).sha256 == DIGEST
    assert Artifact.from_dict({"uri": URI, "kind": "tensorboard"}).kind == "tensorboard"

    v = ModelVersion.from_dict(version_body("teacher", 2, made_by="distill", teacher="big:1"))
    assert v.ref == "teacher:2"
    assert v.made_by == JobType.DISTILL == "distill"
    assert v.teacher == "big:1"
    assert v.metrics == {"test_score": 0.75, "steps": 120.0}
    assert v.evaluations == ["job-9"]
    assert v.dataset is not None and v.dataset.sha256 == DIGEST
    assert v.generated_by == "job-1"
    assert "teacher:2" in repr(v)

    plain = ModelVersion.from_dict(version_body("m", 1, dataset=None, generated_by=None))
    assert plain.dataset is None and plain.generated_by is None

    model = Model.from_dict({"name": "teacher", "versions": [version_body("teacher", 1),
                                                              version_body("teacher", 2)]})
    assert [x.version for x in model.versions] == [1, 2]
    assert model.latest is not None and model.latest.version == 2
    assert model.version(1).job_id == "job-3"
    with pytest.raises(KeyError, match="versions: 1, 2"):
        model.version(3)
    summary = ModelSummary.from_dict({"name": "teacher", "versions": 2, "latest": version_body("teacher", 2)})
    assert summary.versions == 2 and summary.latest is not None and summary.latest.version == 2


# ------------------------------------------------------------------------ a scripted server


class Store:
    def __init__(self) -> None:
        # digest -> (name, content served)
        self.blobs: Dict[str, Tuple[str, bytes]] = {DIGEST: ("physics_projectile.parquet", CONTENT)}
        self.paths: List[str] = []
        self.cut_short = False


@pytest.fixture
def store() -> Iterator[Tuple[Store, str]]:
    st = Store()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def send_json(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def not_found(self) -> None:
            self.send_json(404, {"error": {"code": "not_found", "message": "no artifact here"}})

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            st.paths.append(path)
            parts = path.split("/")
            if path.startswith("/api/artifacts/"):
                digest = parts[3]
                if digest not in st.blobs:
                    return self.not_found()
                name, content = st.blobs[digest]
                if len(parts) == 4:
                    return self.send_json(200, artifact_body(digest, name))
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if st.cut_short:
                    self.wfile.write(content[:100])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(content)
            elif path == "/api/jobs/job-1/artifacts":
                self.send_json(200, {"artifacts": [artifact_body()]})
            elif path == "/api/models":
                self.send_json(200, {"models": [{"name": "a/b", "versions": 1, "latest": version_body("a/b", 1)}]})
            elif path.startswith("/api/models/"):
                name = unquote(path[len("/api/models/"):])
                if name != "a/b":
                    return self.send_json(404, {"error": {"code": "not_found",
                                                          "message": f"no model {name!r}; registered: a/b"}})
                self.send_json(200, {"name": name, "versions": [version_body(name, 1)]})
            else:
                self.not_found()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield st, f"http://127.0.0.1:{httpd.server_address[1]}/api"
    httpd.shutdown()
    httpd.server_close()


def test_download_destinations(store: Tuple[Store, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st, url = store
    client = NexaForgeClient(api_url=url)

    # No path: the artifact's name in the current folder.
    monkeypatch.chdir(tmp_path)
    got = client.download(URI)
    assert got == tmp_path / "physics_projectile.parquet"
    assert got.read_bytes() == CONTENT

    # A folder: the name inside it; an Artifact needs no second look-up for its name.
    folder = tmp_path / "out"
    folder.mkdir()
    artifact = client.artifact(DIGEST)
    st.paths.clear()
    got = client.download(artifact, folder)
    assert got == folder / "physics_projectile.parquet" and got.read_bytes() == CONTENT
    assert st.paths == [f"/api/artifacts/{DIGEST}/content"]

    # A file path (its folder is made), replacing what is there.
    target = tmp_path / "new" / "data.parquet"
    got = client.download(DIGEST.upper(), str(target))
    assert got == target and target.read_bytes() == CONTENT
    target.write_bytes(b"old")
    client.download(URI, target)
    assert target.read_bytes() == CONTENT
    assert not [p for p in tmp_path.rglob("*.part")], "no temporary file is left behind"


def test_a_name_from_the_server_stays_in_the_folder(store: Tuple[Store, str], tmp_path: Path) -> None:
    st, url = store
    st.blobs[DIGEST] = ("../../etc/evil", CONTENT)
    got = NexaForgeClient(api_url=url).download(URI, tmp_path)
    assert got == tmp_path / "evil"
    st.blobs[DIGEST] = ("..", CONTENT)
    assert NexaForgeClient(api_url=url).download(URI, tmp_path) == tmp_path / DIGEST


def test_download_checks_the_sha256(store: Tuple[Store, str], tmp_path: Path) -> None:
    st, url = store
    wrong = "0" * 64
    st.blobs[wrong] = ("x.bin", CONTENT)
    dest = tmp_path / "x.bin"
    with pytest.raises(IntegrityError) as info:
        NexaForgeClient(api_url=url).download(wrong, dest)
    err = info.value
    assert isinstance(err, NexaForgeError)
    assert (err.expected, err.actual, err.code) == (wrong, DIGEST, "digest_mismatch")
    assert wrong in str(err) and DIGEST in str(err)
    assert list(tmp_path.iterdir()) == [], "nothing is written when the digest does not match"


def test_a_download_cut_short_fails_and_leaves_nothing(store: Tuple[Store, str], tmp_path: Path) -> None:
    st, url = store
    st.cut_short = True
    with pytest.raises(NexaForgeError):
        NexaForgeClient(api_url=url, timeout=5).download(URI, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_unknown_artifacts_and_models(store: Tuple[Store, str], tmp_path: Path) -> None:
    _, url = store
    client = NexaForgeClient(api_url=url)
    with pytest.raises(NotFoundError):
        client.download("1" * 64, tmp_path)
    with pytest.raises(NotFoundError):
        client.download("1" * 64, tmp_path / "named")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(NotFoundError):
        client.artifact("nexa://artifacts/" + "1" * 64)
    with pytest.raises(ValueError):
        client.download("s3://nexa-data/physics_v1.parquet")
    with pytest.raises(NotFoundError, match="registered: a/b"):
        client.model("nope")


def test_lists_and_names_with_a_slash(store: Tuple[Store, str]) -> None:
    st, url = store
    client = NexaForgeClient(api_url=url)
    [a] = client.artifacts("job-1")
    assert a.sha256 == DIGEST
    [m] = client.models()
    assert m.name == "a/b" and m.versions == 1
    assert client.model("a/b").versions[0].ref == "a/b:1"
    assert "/api/models/a%2Fb" in st.paths, "the name is one path segment"
