"""Exported artifacts and their manifest: what export writes, and what verify, bench and predict read.

Torch-free: `runtime.py` and apps read manifests and ONNX metadata without importing torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit import fileio
from toolkit.errors import ArtifactError

MANIFEST_NAME = "manifest.json"
DEFAULT_EXPORT_DIR = Path("exported")
META_KEY = "toolkit.json"  # TorchScript _extra_files entry; ONNX uses one metadata_props key per field
ONNX_SUFFIX = ".onnx"
TORCHSCRIPT_SUFFIX = ".ts.pt"


@dataclass
class Artifact:
    """One exported file, as listed in manifest.json."""

    file: str  # relative to the manifest's folder
    format: str  # a key of export.FORMATS
    precision: str
    size_bytes: int
    sha256: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    source_checkpoint: str
    source_sha256: str
    test_accuracy: float | None
    opset: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    export_seconds: float | None = None
    path: str = ""  # resolved absolute path, filled in when read; not stored

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return d

    @property
    def label(self) -> str:
        return f"{self.format}/{self.precision}"


def read_manifest(folder: str | os.PathLike) -> list[Artifact]:
    """The artifacts listed in `<folder>/manifest.json`, with resolved paths."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"no {MANIFEST_NAME} in {folder}/; run `toolkit export` first")
    try:
        entries = json.loads(path.read_text())["artifacts"]
        artifacts = [Artifact(**entry) for entry in entries]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path} is not a toolkit manifest ({e}); export again") from None
    for artifact in artifacts:
        artifact.path = str((folder / artifact.file).resolve())
    return artifacts


def write_manifest(folder: str | os.PathLike, artifacts: list[Artifact], extra: dict[str, Any]) -> Path:
    path = Path(folder) / MANIFEST_NAME
    fileio.write_json(path, {**extra, "artifacts": [a.to_json() for a in artifacts]})
    return path


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """metadata_props of an ONNX file, read with onnx (no graph execution)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and others for non-ONNX bytes
        raise ArtifactError(f"{path} is not a readable ONNX model ({type(e).__name__}); export it again") from None
    return {p.key: p.value for p in model.metadata_props}


def select(artifacts: list[Artifact], formats: list[str] | None = None,
           precisions: list[str] | None = None) -> list[Artifact]:
    """Artifacts whose format and precision are in the given lists (None keeps all)."""
    return [a for a in artifacts
            if (not formats or a.format in formats) and (not precisions or a.precision in precisions)]


def check_files(artifacts: list[Artifact]) -> list[str]:
    """Problems with the files behind manifest entries: missing, or changed since export."""
    problems = []
    for a in artifacts:
        if not Path(a.path).is_file():
            problems.append(f"{a.file}: missing")
        elif fileio.file_digest(a.path) != a.sha256:
            problems.append(f"{a.file}: changed since export (SHA-256 differs from the manifest)")
    return problems
