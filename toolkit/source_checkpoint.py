"""The checkpoint an export was made from, found near its manifest by the SHA-256 the manifest records, so that a
copied export folder still finds it; a path read from the folder never leads verify or bench elsewhere.

Torch-free: found here, the checkpoint is loaded by its caller.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from toolkit import fileio
from toolkit.artifacts import MANIFEST_NAME, Artifact
from toolkit.errors import CheckpointError
from toolkit.formats import FORMATS


def find_checkpoint(folder: str | os.PathLike, artifacts: list[Artifact], explicit: str | None = None) -> Path:
    """The checkpoint the artifacts were exported from, found by its SHA-256, so a copied folder still works.

    `explicit` (--checkpoint) wins as given (verify then reports a mismatch as a failure). Otherwise the manifest's
    recorded path (relative to the manifest, followed only as `followed` allows), then any `*.pt` beside the
    manifest (`_beside`), is used if its SHA-256 is the one recorded; only regular files are hashed, checked on the
    descriptor read (one beside the manifest opened without following a symbolic link). CheckpointError says
    exactly what is needed when none fits.
    """
    if explicit:
        return Path(explicit)
    folder = Path(folder)
    wanted = {a.source_sha256 for a in artifacts}
    recorded = [folder / a.source_checkpoint for a in artifacts[:1] if a.source_checkpoint]
    reachable = [p for p in recorded if followed(folder, p)]
    beside = _beside(folder)
    candidates = reachable + beside
    for path, follow_links in [*((p, True) for p in reachable), *((p, False) for p in beside)]:
        if _digest(path, follow_links) in wanted:
            return fileio.shortest(path)  # the manifest's path is relative to its folder: exported/../runs/...
    raise CheckpointError(f"the checkpoint these artifacts were exported from (SHA-256 {next(iter(wanted), '')[:16]}"
                          f"...) is not at {_where(recorded, candidates)} nor beside {folder / MANIFEST_NAME}; "
                          "pass it with --checkpoint or copy it next to the manifest")


def _digest(path: Path, follow_links: bool) -> str | None:
    """The SHA-256 of the regular file at `path` (`follow_links=False`: never through a symbolic link), read from the
    descriptor checked; None for anything else, or a file of 1 GiB or more."""
    try:
        with fileio.open_regular(path, follow_links=follow_links) as f:
            return fileio.stream_digest(f) if os.fstat(f.fileno()).st_size < 1 << 30 else None
    except OSError:
        return None


def _beside(folder: Path) -> list[Path]:
    """The `*.pt` files beside the manifest in `folder` that may be its checkpoint: regular files, never a symbolic
    link (a name read from the folder is confined to it, and a link may lead anywhere), nor a TorchScript file."""
    found = []
    for path in sorted(folder.glob("*.pt")):
        try:
            if stat.S_ISREG(os.lstat(path).st_mode) and not path.name.endswith(FORMATS["torchscript"].suffix):
                found.append(path)
        except OSError:  # gone since
            continue
    return found


def _where(recorded: list[Path], candidates: list[Path]) -> str:
    """Where the manifest says its checkpoint is, for a message, and whether that path was followed."""
    if not recorded:
        return "the recorded path"
    if recorded[0] not in candidates and os.path.lexists(recorded[0]):
        return (f"{recorded[0]} (not followed: it is no file in the folder holding the export folder, nor in the "
                "current one)")
    return str(recorded[0])


def followed(folder: Path, path: Path) -> bool:
    """Whether the checkpoint path the manifest in `folder` records is read. A path read from a file stays in its
    folder; export records the run's checkpoint beside the export (exported/../runs/NAME/checkpoint.pt), so it is
    followed to a regular file, symbolic links resolved, inside the folder that holds the export folder or inside
    the current folder (where `toolkit export --out exported/NAME` ran): never to /etc/passwd, a device or a FIFO."""
    try:
        real = path.resolve(strict=True)
        roots = (folder.resolve().parent, Path.cwd().resolve())
        return stat.S_ISREG(real.stat().st_mode) and any(real.is_relative_to(root) for root in roots)
    except (OSError, RuntimeError):  # missing, a loop of links, or the current folder gone
        return False
