"""Exported artifacts and their manifest: what export writes, and what verify, bench and predict read.

Torch-free: `runtime.py` and apps read manifests and ONNX metadata without importing torch.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit import fileio
from toolkit.errors import ArtifactError
from toolkit.formats import FORMATS, PRECISIONS

MANIFEST_NAME = "manifest.json"
DEFAULT_EXPORT_DIR = Path("exported")
META_KEY = "toolkit.json"  # TorchScript _extra_files entry; ONNX uses one metadata_props key per field
PTE_METADATA_METHOD = "toolkit_metadata"  # ExecuTorch constant method returning the metadata as JSON text
# Results `make main` writes beside the artifacts, removed with them when `export --overwrite` replaces the model.
RESULT_FILES = ("verify.json", *(f"bench-{p}.{ext}" for p in ("cpu", "cuda") for ext in ("json", "md", "png")))
TRITON_REPOSITORY = "triton"  # the folder `export --format triton` lays out (toolkit/exporters/triton.py)


@dataclass
class Part:
    """A file that comes with an artifact's main file (OpenVINO IR: model.bin beside model.xml), checked like it."""

    file: str  # relative to the manifest's folder
    size_bytes: int
    sha256: str


@dataclass
class Artifact:
    """One exported file (and its companion parts, if its format has any), as listed in manifest.json."""

    file: str  # relative to the manifest's folder
    format: str  # a key of formats.FORMATS
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
    parts: list[Part] = field(default_factory=list)  # the companion files, each hashed on its own
    path: str = ""  # resolved absolute path, filled in when read; not stored

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        if not self.parts:
            d.pop("parts")  # formats without companions keep the manifest entry they always had
        return d

    @property
    def label(self) -> str:
        return f"{self.format}/{self.precision}"

    @property
    def files(self) -> list[str]:
        """The main file and its parts: everything this artifact is on disk."""
        return [self.file, *(p.file for p in self.parts)]

    @property
    def total_bytes(self) -> int:
        return self.size_bytes + sum(p.size_bytes for p in self.parts)


MAX_MANIFEST_BYTES = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIELD_TYPES: dict[str, Any] = {
    "size_bytes": int, "inputs": list, "outputs": list, "source_checkpoint": str,
    "test_accuracy": (int, float, type(None)), "opset": (int, type(None)),
    "settings": dict, "versions": dict, "export_seconds": (int, float, type(None)),
}
_FIELD_WORDS = {name: "a number" if name in ("size_bytes", "test_accuracy", "opset", "export_seconds") else
                "text" if name == "source_checkpoint" else "a list" if name in ("inputs", "outputs") else "an object"
                for name in _FIELD_TYPES}


def confined_file(folder: str | os.PathLike, name: Any) -> Path:
    """`folder/name` for a manifest entry, or ArtifactError when `name` could reach outside `folder`.

    A manifest is input like any other file: an entry must be a plain file name (no separators, no '..',
    not absolute), and if the file is a symbolic link it must stay inside the folder.
    """
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or name != name.strip() or os.path.isabs(name)):
        raise ArtifactError(f"bad manifest in {folder}/: artifact file {str(name)[:80]!r} is not a plain file name "
                            "inside the folder; export again")
    folder = Path(folder)
    path = folder / name
    if path.is_symlink():
        try:
            target = path.resolve()
        except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
            raise ArtifactError(f"bad manifest in {folder}/: {name} is a symbolic link that leads nowhere") from None
        if not target.is_relative_to(folder.resolve()):
            raise ArtifactError(f"bad manifest in {folder}/: {name} is a symbolic link leading out of the folder")
    return path


def _check_vocabulary(artifact: Artifact) -> None:
    if artifact.format not in FORMATS:
        raise ValueError(f"unknown format {str(artifact.format)[:40]!r}")
    if artifact.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {str(artifact.precision)[:40]!r}")


def _check_hashes(artifact: Artifact) -> None:
    if not isinstance(artifact.sha256, str) or not _SHA256.fullmatch(artifact.sha256):
        raise ValueError(f"{artifact.file}: sha256 is not 64 hex digits")
    if not isinstance(artifact.source_sha256, str):
        raise ValueError(f"{artifact.file}: source_sha256 is not text")


def _check_field_types(artifact: Artifact) -> None:
    # every other field is read somewhere (tables, Triton configs, the checkpoint search): wrong types are refused
    # here, once, instead of failing later as a bug
    for name, kinds in _FIELD_TYPES.items():
        value = getattr(artifact, name)
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise ValueError(f"{artifact.file}: {name} is not {_FIELD_WORDS[name]}")


def _is_tensor_spec(spec: Any) -> bool:
    """{name: text, dtype: text, shape: [int or text, ...]}"""
    return (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("dtype"), str)
            and isinstance(spec.get("shape"), list)
            and all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in spec["shape"]))


def _check_parts(folder: Path, artifact: Artifact) -> list[Part]:
    """The entry's parts as Part values: exactly the companions its format names, each confined and hashed."""
    if not isinstance(artifact.parts, list):
        raise ValueError(f"{artifact.file}: parts is not a list")
    parts = []
    for entry in artifact.parts:
        if not isinstance(entry, dict) or set(entry) != {"file", "size_bytes", "sha256"}:
            raise ValueError(f"{artifact.file}: a part is not {{file, size_bytes, sha256}}")
        part = Part(**entry)
        confined_file(folder, part.file)
        if type(part.size_bytes) is not int or part.size_bytes < 0:
            raise ValueError(f"{part.file}: size_bytes is not a whole number")
        if not isinstance(part.sha256, str) or not _SHA256.fullmatch(part.sha256):
            raise ValueError(f"{part.file}: sha256 is not 64 hex digits")
        parts.append(part)
    expected = FORMATS[artifact.format].companion_names(artifact.precision)
    if tuple(p.file for p in parts) != expected:
        raise ValueError(f"{artifact.file}: its parts are not {', '.join(expected) or 'none'}")
    return parts


def _check_entry(folder: Path, entry: Any) -> Artifact:
    if not isinstance(entry, dict):
        raise TypeError("an artifact entry is not an object")
    artifact = Artifact(**entry)
    confined_file(folder, artifact.file)
    _check_vocabulary(artifact)
    _check_hashes(artifact)
    _check_field_types(artifact)
    if not all(_is_tensor_spec(spec) for spec in artifact.inputs + artifact.outputs):
        raise ValueError(f"{artifact.file}: an input or output is not {{name, dtype, shape}}")
    if artifact.path:
        raise ValueError(f"{artifact.file}: 'path' is not a manifest field")
    artifact.parts = _check_parts(folder, artifact)
    return artifact


def _manifest_bytes(folder: Path) -> tuple[Path, bytes]:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        if path.exists() or path.is_symlink():
            raise ArtifactError(f"{path} is not a regular file; not a toolkit manifest, export again")
        if folder.is_file():
            raise ArtifactError(f"{folder} is a file; give the export folder, the one holding {MANIFEST_NAME}")
        raise ArtifactError(f"no {MANIFEST_NAME} in {folder}/; run `toolkit export` first")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; not a toolkit manifest")
    return path, raw


def read_manifest(folder: str | os.PathLike) -> list[Artifact]:
    """The artifacts listed in `<folder>/manifest.json`, each confined to the folder, with resolved paths.

    Every entry is checked (plain file names, known formats and precisions, well-formed hashes); anything
    else makes the whole manifest a bad one (ArtifactError), never a path to follow.
    """
    return read_manifest_fields(folder)[0]


def read_manifest_fields(folder: str | os.PathLike) -> tuple[list[Artifact], dict[str, Any]]:
    """`read_manifest`, with the manifest's top-level fields as written, from the same read: the caller checks each
    field it uses (`golden_entry` checks the golden outputs')."""
    folder = Path(folder)
    path, raw = _manifest_bytes(folder)
    try:
        fields = json.loads(raw.decode("utf-8"))
        entries = fields["artifacts"]
        if not isinstance(entries, list):
            raise TypeError("'artifacts' is not a list")
        artifacts = [_check_entry(folder, entry) for entry in entries]
    except ArtifactError:
        raise
    except UnicodeDecodeError:
        raise ArtifactError(f"{path} is not UTF-8 text; not a toolkit manifest, export again") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError) as e:
        raise ArtifactError(f"{path} is not a toolkit manifest ({str(e)[:200]}); export again") from None
    names = [name for a in artifacts for name in a.files]
    if len(set(names)) != len(names):
        raise ArtifactError(f"{path} lists a file twice; export again")
    for artifact in artifacts:
        artifact.path = str((folder / artifact.file).absolute())
    return artifacts, fields


MAX_MODEL_FLOPS = 10 ** 15


def read_manifest_field(folder: str | os.PathLike, key: str) -> Any:
    """A top-level field of the folder's manifest as written (None: absent, bad JSON); the caller checks its type."""
    _, raw = _manifest_bytes(Path(folder))
    try:
        return json.loads(raw.decode("utf-8")).get(key)
    except (ValueError, AttributeError, RecursionError):  # bad UTF-8 or JSON, or an integer too long to read
        return None


def read_model_flops(folder: str | os.PathLike) -> int | None:
    """The FLOPs per image export recorded (a multiply-add counted as 2), or None: none recorded, or implausible."""
    value = read_manifest_field(folder, "model_flops_per_image")
    return value if type(value) is int and 0 < value <= MAX_MODEL_FLOPS else None


def _read_recorded(path: str | os.PathLike, file: str, size_bytes: Any, sha256: str) -> bytes:
    """The bytes of a file the manifest records, after checking them against its size and SHA-256.

    O_NONBLOCK: a FIFO planted under the file's name must not block the open; only a regular file of the
    recorded size is read (a huge or sparse file is refused before it fills memory).
    """
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ArtifactError(f"{file} is not a regular file; export again")
            if st.st_size != size_bytes:
                raise ArtifactError(f"{file} changed since export (its size is not the manifest's); "
                                    "refusing to load it, export again")
            data = f.read()
    except FileNotFoundError:
        raise ArtifactError(f"{file} is listed in the manifest but missing; export again") from None
    except OSError as e:
        raise ArtifactError(f"cannot read {file}: {e.strerror or e}") from None
    if fileio.digest(data) != sha256:
        raise ArtifactError(f"{file} changed since export (SHA-256 differs from the manifest); "
                            "refusing to load it, export again")
    return data


def read_verified(artifact: Artifact) -> bytes:
    """The bytes of an artifact's file, after checking them against the manifest's SHA-256.

    Loaders take these bytes, never the path: what runs is exactly what was hashed, so a file changed after
    export (TorchScript is code) is refused before anything parses it.
    """
    return _read_recorded(artifact.path, artifact.file, artifact.size_bytes, artifact.sha256)


def read_verified_parts(artifact: Artifact) -> list[bytes]:
    """The bytes of each of an artifact's parts (in manifest order), each checked against its own SHA-256."""
    folder = Path(artifact.path).parent
    return [_read_recorded(folder / p.file, p.file, p.size_bytes, p.sha256) for p in artifact.parts]


def write_manifest(folder: str | os.PathLike, artifacts: list[Artifact], extra: dict[str, Any],
                   golden: GoldenEntry | None = None, to: Path | None = None) -> Path:
    """Write `<folder>/manifest.json` (or the scratch file `to` that becomes it); its final path."""
    path = Path(folder) / MANIFEST_NAME
    listed = {**extra, "artifacts": [a.to_json() for a in artifacts]}
    if golden is not None:
        listed[GOLDEN_KEY] = golden.to_json()
    fileio.write_json(path, listed, to)
    return path


GOLDEN_KEY = "golden"  # the manifest's entry for the reference outputs
GOLDEN_NAME = "golden.npy"  # the only name export gives the file
MAX_GOLDEN_BYTES = 16 << 20  # 10,000 x 10 float32 is 400 KB; nothing larger is read
MAX_GOLDEN_ROWS = 1_000_000


@dataclass
class GoldenEntry:
    """The manifest's description of the golden outputs: the source checkpoint's PyTorch outputs for the
    test images, so that artifacts can be verified where neither torch nor the checkpoint is present."""

    file: str  # relative to the manifest's folder
    what: str
    shape: list[int]
    dtype: str
    size_bytes: int
    sha256: str
    data: dict[str, Any]  # split, and the MD5 of each file the outputs were computed from
    source_checkpoint: str
    source_sha256: str
    reference_accuracy: float | None  # None: outputs on reference inputs, which have no labels
    device: str
    versions: dict[str, str] = field(default_factory=dict)
    path: str = ""  # resolved absolute path, filled in when read; not stored

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return d


def _check_golden(folder: Path, entry: Any) -> GoldenEntry:
    if not isinstance(entry, dict):
        raise TypeError("the golden entry is not an object")
    golden = GoldenEntry(**entry)
    confined_file(folder, golden.file)
    if not isinstance(golden.sha256, str) or not _SHA256.fullmatch(golden.sha256):
        raise ValueError(f"{golden.file}: sha256 is not 64 hex digits")
    if (not isinstance(golden.shape, list) or len(golden.shape) != 2
            or not all(type(d) is int for d in golden.shape)
            or not 1 <= golden.shape[0] <= MAX_GOLDEN_ROWS or golden.shape[1] != 10):
        raise ValueError(f"{golden.file}: shape {str(golden.shape)[:40]} is not [N, 10]")
    if golden.dtype != "float32":
        raise ValueError(f"{golden.file}: dtype {str(golden.dtype)[:20]!r} is not float32")
    if not isinstance(golden.data, dict) or not isinstance(golden.source_sha256, str):
        raise ValueError(f"{golden.file}: data or source_sha256 is malformed")
    return golden


def read_golden_entry(folder: str | os.PathLike) -> GoldenEntry | None:
    """The golden-output entry of `<folder>/manifest.json` (checked like an artifact entry), or None when the
    export did not write one."""
    folder = Path(folder)
    path, raw = _manifest_bytes(folder)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ArtifactError(f"{path} is not UTF-8 text; not a toolkit manifest, export again") from None
    except (ValueError, RecursionError) as e:
        raise ArtifactError(f"{path} has a bad golden-output entry ({str(e)[:200]}); export again") from None
    return golden_entry(folder, manifest)


def golden_entry(folder: str | os.PathLike, manifest: Any) -> GoldenEntry | None:
    """`read_golden_entry` of the manifest of `folder` as already read and parsed (`manifest`)."""
    folder = Path(folder)
    try:
        if not isinstance(manifest, dict):
            raise TypeError("the manifest is not an object")
        if manifest.get(GOLDEN_KEY) is None:
            return None
        golden = _check_golden(folder, manifest[GOLDEN_KEY])
    except ArtifactError:
        raise
    except (TypeError, ValueError, RecursionError) as e:
        raise ArtifactError(f"{folder / MANIFEST_NAME} has a bad golden-output entry ({str(e)[:200]}); "
                            "export again") from None
    golden.path = str((folder / golden.file).absolute())
    return golden


def read_verified_golden(golden: GoldenEntry) -> bytes:
    """The bytes of the golden-output file, no larger than MAX_GOLDEN_BYTES, after checking them against
    the manifest's size and SHA-256: nothing parses them before the hash matched."""
    if not isinstance(golden.size_bytes, int) or not 0 < golden.size_bytes <= MAX_GOLDEN_BYTES:
        raise ArtifactError(f"{golden.file}: the manifest gives it {str(golden.size_bytes)[:20]} bytes, not 1 to "
                            f"{MAX_GOLDEN_BYTES} (10,000 x 10 float32 is 400 KB); export again")
    return _read_recorded(golden.path, golden.file, golden.size_bytes, golden.sha256)


def select(artifacts: list[Artifact], formats: list[str] | None = None,
           precisions: list[str] | None = None) -> list[Artifact]:
    """Artifacts whose format and precision are in the given lists (None keeps all)."""
    return [a for a in artifacts
            if (not formats or a.format in formats) and (not precisions or a.precision in precisions)]
