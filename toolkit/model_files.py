"""A model file read by its path (predict, bench FILE, compare, the runtime runners): where the manifest beside it lists
it, checked against that entry's size and SHA-256 before anything parses it; a loose file is read as it is.

Torch-free, like artifacts.py: `runtime.py` and apps read model files without importing torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from toolkit import fileio
from toolkit.artifacts import MANIFEST_NAME, Artifact, read_manifest, read_verified, read_verified_parts
from toolkit.errors import ArtifactError
from toolkit.formats import FORMATS, format_of_file


def read_model_bundle(path: str | os.PathLike) -> tuple[bytes, list[bytes]]:
    """`read_model_file`, with the bytes of the file's companions (its format's, e.g. model.bin beside model.xml):
    hash-checked against the manifest beside it when there is one, else read as they are."""
    path = Path(path)
    artifact = _listed_file(path)
    if artifact is not None:
        return read_verified(artifact), read_verified_parts(artifact)
    data = _read_loose(path)
    fmt = FORMATS.get(format_of_file(path.name) or "")
    parts = [path.with_name(path.name[:-len(fmt.suffix)] + suffix) for suffix in fmt.companions] if fmt else []
    try:
        return data, [part.read_bytes() for part in parts]
    except OSError as e:
        raise ArtifactError(f"cannot read the companion of {path.name} ({', '.join(map(str, parts))}): "
                            f"{e.strerror or e}") from None


def read_model_file(path: str | os.PathLike) -> bytes:
    """The bytes of a model file to load: where a manifest lists it (`listed_artifact`), checked against its SHA-256
    before anything parses them; a loose file with no manifest beside it is read as is."""
    return read_listed_model_file(path)[0]


def read_listed_model_file(path: str | os.PathLike) -> tuple[bytes, Artifact | None]:
    """`read_model_file`, with the manifest entry its bytes were checked against (None: a loose file)."""
    path = Path(path)
    artifact = _listed_file(path)
    return (read_verified(artifact) if artifact is not None else _read_loose(path)), artifact


def _listed_file(path: Path) -> Artifact | None:
    """`listed_artifact` of a model file that must exist: ArtifactError where it does not."""
    if not path.is_file():
        raise ArtifactError(f"model file {path} {fileio.absent(path, 'run `toolkit export` first')}")
    return listed_artifact(path)


def _read_loose(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror or e}") from None


def listed_artifact(path: str | os.PathLike) -> Artifact | None:
    """A model file's entry in the manifest beside it, else beside the file a link leads to (a link does not take it
    out of its folder's manifest), which must list it; None where neither folder has a manifest.json."""
    path = Path(path)
    governed = next((c for c in (path, Path(os.path.realpath(path)))
                     if (c.parent / MANIFEST_NAME).exists() or (c.parent / MANIFEST_NAME).is_symlink()), None)
    if governed is None:
        return None
    listed = [a for a in read_manifest(governed.parent) if a.file == governed.name]
    if not listed:
        raise ArtifactError(f"{governed} is not listed in the {MANIFEST_NAME} beside it; refusing to load it, "
                            "export again or move it out of that folder")
    return listed[0]
