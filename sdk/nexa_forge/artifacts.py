"""Artifacts and registered models as the API describes them.

An :class:`Artifact` is a file the control plane keeps (a generated dataset, a trained model,
a checkpoint, an evaluation report), named by its content: ``nexa://artifacts/<sha256>``.
A :class:`Model` is a name in the model registry with its :class:`ModelVersion`\\ s, one per
succeeded ``train`` or ``distill`` job that made it; ``GET /models`` lists them as
:class:`ModelSummary`\\ s.

Like the job records, each keeps the decoded JSON it was read from in ``raw``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional

from .jobs import JobType, _OpenStrEnum, _Raw, _dict, _opt_int, _opt_str
from .timestamps import parse_time

__all__ = [
    "ARTIFACT_URI_PREFIX",
    "ArtifactKind",
    "Artifact",
    "ModelVersion",
    "ModelSummary",
    "Model",
    "artifact_digest",
]

ARTIFACT_URI_PREFIX = "nexa://artifacts/"
"""What every artifact URI starts with; the SHA-256 of the content (64 hex digits) follows."""

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def artifact_digest(ref: str) -> str:
    """The SHA-256 (lower-case hex) an artifact reference names: ``nexa://artifacts/<hex>``
    or the 64 hex digits alone.

    Raises:
        ValueError: ``ref`` is neither (a ``file://`` or ``s3://`` URI, say, is not kept by
            the control plane).
    """
    if not isinstance(ref, str):
        raise TypeError(
            f"expected an artifact URI (nexa://artifacts/<sha256>) or a SHA-256, not {ref!r}"
        )
    text = ref.strip()
    digest = text[len(ARTIFACT_URI_PREFIX) :] if text.startswith(ARTIFACT_URI_PREFIX) else text
    if not _HEX64.match(digest):
        raise ValueError(
            f"{ref!r} does not name an artifact: expected nexa://artifacts/ followed by a "
            "SHA-256 (64 hex digits), or the 64 hex digits alone"
        )
    return digest.lower()


class ArtifactKind(_OpenStrEnum):
    """What an artifact is. Compares equal to its string: ``ArtifactKind.MODEL == "model"``."""

    DATASET = "dataset"
    """A dataset (Parquet or JSON Lines), e.g. what a ``generate`` job made."""
    MODEL = "model"
    """Trained weights (safetensors)."""
    CHECKPOINT = "checkpoint"
    """A training checkpoint; :attr:`Artifact.step` says after how many steps."""
    REPORT = "report"
    """A report (JSON), e.g. an evaluation's."""
    FILE = "file"
    """Anything else a handler listed in its result."""


@dataclass
class Artifact(_Raw):
    """A file kept by the control plane, named by the SHA-256 of its content."""

    uri: str
    """``nexa://artifacts/<sha256>``: what job results and parameters use."""
    sha256: str
    """The SHA-256 of the content, 64 lower-case hex digits."""
    name: str
    """A file name for it, e.g. ``physics_projectile.parquet``."""
    kind: ArtifactKind
    size: Optional[int]
    """Bytes."""
    job_id: Optional[str]
    """The job that made it, when a job did."""
    created_at: Optional[datetime]
    step: Optional[int]
    """For a checkpoint, the optimizer steps done; else ``None``."""
    download_url: Optional[str]
    """Where its bytes are, as the server gives it (``/api/artifacts/<sha256>/content``)."""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Artifact":
        uri = _opt_str(data.get("uri")) or ""
        sha = _opt_str(data.get("sha256")) or ""
        if not sha and uri.startswith(ARTIFACT_URI_PREFIX):
            sha = uri[len(ARTIFACT_URI_PREFIX) :]
        if not uri and sha:
            uri = ARTIFACT_URI_PREFIX + sha
        return cls(
            uri=uri,
            sha256=sha.lower(),
            name=_opt_str(data.get("name")) or "",
            kind=ArtifactKind(_opt_str(data.get("kind")) or "file"),
            size=_opt_int(data.get("size")),
            job_id=_opt_str(data.get("job_id")),
            created_at=parse_time(data.get("created_at")),
            step=_opt_int(data.get("step")),
            download_url=_opt_str(data.get("download_url")),
            raw=dict(data),
        )

    def __repr__(self) -> str:
        extra = f", step={self.step}" if self.step is not None else ""
        return (
            f"Artifact(name={self.name!r}, kind={str(self.kind)!r}, size={self.size!r}, "
            f"job_id={self.job_id!r}{extra}, uri={self.uri!r})"
        )


@dataclass
class ModelVersion(_Raw):
    """One version of a registered model: what one succeeded ``train`` or ``distill`` job
    made. Versions are numbered from 1 in the order their jobs finished."""

    name: str
    version: int
    job_id: Optional[str]
    """The train or distill job that made it."""
    made_by: Optional[JobType]
    """``train`` or ``distill`` (a :class:`JobType`, equal to its string)."""
    uri: str
    """Its weights: the job's ``model`` artifact, ``nexa://artifacts/<sha256>``."""
    dataset_uri: Optional[str]
    """The dataset it was trained or distilled on, as its job was given it."""
    teacher: Optional[str]
    """For a distilled model, the teacher as the distill job named it; else ``None``."""
    metrics: Dict[str, float]
    """Its job's metrics."""
    created_at: Optional[datetime]
    """When its job finished."""
    evaluations: List[str]
    """The ids of the succeeded ``evaluate`` jobs that scored this version, oldest first."""
    dataset: Optional[Artifact]
    """The artifact :attr:`dataset_uri` names, when it is one the control plane keeps."""
    generated_by: Optional[str]
    """The job that made that dataset (a ``generate`` job, usually), when known."""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelVersion":
        made_by = _opt_str(data.get("made_by"))
        dataset = data.get("dataset")
        evaluations = data.get("evaluations")
        metrics = {
            str(k): float(v)
            for k, v in _dict(data.get("metrics")).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return cls(
            name=str(data.get("name", "")),
            version=_opt_int(data.get("version")) or 0,
            job_id=_opt_str(data.get("job_id")),
            made_by=JobType(made_by) if made_by else None,
            uri=_opt_str(data.get("uri")) or "",
            dataset_uri=_opt_str(data.get("dataset_uri")),
            teacher=_opt_str(data.get("teacher")),
            metrics=metrics,
            created_at=parse_time(data.get("created_at")),
            evaluations=[str(e) for e in evaluations] if isinstance(evaluations, list) else [],
            dataset=Artifact.from_dict(dataset) if isinstance(dataset, Mapping) else None,
            generated_by=_opt_str(data.get("generated_by")),
            raw=dict(data),
        )

    @property
    def ref(self) -> str:
        """``name:version``: how a job's parameters name exactly this version."""
        return f"{self.name}:{self.version}"

    def __repr__(self) -> str:
        teacher = f", teacher={self.teacher!r}" if self.teacher else ""
        made_by = str(self.made_by) if self.made_by is not None else None
        return (
            f"ModelVersion(ref={self.ref!r}, made_by={made_by!r}, job_id={self.job_id!r}"
            f"{teacher}, evaluations={self.evaluations!r})"
        )


@dataclass
class ModelSummary(_Raw):
    """A registered model as ``GET /models`` lists it: its name, how many versions it has,
    and the latest."""

    name: str
    versions: int
    """How many versions it has."""
    latest: Optional[ModelVersion]
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSummary":
        latest = data.get("latest")
        return cls(
            name=str(data.get("name", "")),
            versions=_opt_int(data.get("versions")) or 0,
            latest=ModelVersion.from_dict(latest) if isinstance(latest, Mapping) else None,
            raw=dict(data),
        )


@dataclass
class Model(_Raw):
    """A registered model with every version, oldest first."""

    name: str
    versions: List[ModelVersion]
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Model":
        versions = data.get("versions")
        return cls(
            name=str(data.get("name", "")),
            versions=[ModelVersion.from_dict(v) for v in versions if isinstance(v, Mapping)]
            if isinstance(versions, list)
            else [],
            raw=dict(data),
        )

    @property
    def latest(self) -> Optional[ModelVersion]:
        """The newest version (what the bare name refers to in a job's parameters)."""
        return max(self.versions, key=lambda v: v.version) if self.versions else None

    def version(self, number: int) -> ModelVersion:
        """Version ``number`` (from 1).

        Raises:
            KeyError: the model has no such version.
        """
        for v in self.versions:
            if v.version == number:
                return v
        have = ", ".join(str(v.version) for v in self.versions) or "none"
        raise KeyError(f"model {self.name!r} has no version {number} (versions: {have})")

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, versions={[v.version for v in self.versions]!r})"
