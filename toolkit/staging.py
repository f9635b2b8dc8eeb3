"""An export's new files, written under hidden scratch names in its folder and put in place together at the end.

Until `commit`, the folder's own files are untouched: a failed or interrupted export discards its scratch files
and leaves the folder exactly as it was. `commit` only removes and renames (it needs no disk space): first the
previous export's stale files go, then the new files take their names (the previous manifest's hashes refuse them
until the new manifest replaces it), then the Triton repository, and the manifest last. Should one of these steps
fail, the new files already in place that the manifest there does not list, and the new Triton repository, are taken
away again: the folder then holds nothing of this export but files the earlier manifest lists, whose hashes refuse
those that differ from the files it describes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from toolkit import fileio
from toolkit.artifacts import MANIFEST_NAME
from toolkit.errors import OutputError

Log = Callable[[str], None]


class Staging:
    """The scratch files of one export into `out_dir`, and what its commit removes."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.files: dict[str, Path] = {}  # final name -> scratch file, renamed in this order
        self.stale: dict[str, tuple[Callable[[], object], str]] = {}  # name -> (how to remove it, why)
        self.folder: tuple[str, Path, Callable[[Path], object]] | None = None  # name, staged folder, how to put it

    def scratch(self, name: str) -> Path:
        """A new empty file beside `out_dir/name` that commit renames to `name`."""
        try:
            tmp = fileio.temp_beside(self.out_dir / name)
        except OSError as e:
            raise OutputError(f"cannot write {self.out_dir / name}: {e.strerror or e}") from None
        self.files[name] = tmp
        return tmp

    def add(self, name: str, scratch: Path) -> None:
        """A scratch file written elsewhere in `out_dir` (a builder's companion file) that commit renames to `name`."""
        self.files[name] = scratch

    def add_folder(self, name: str, staged: Path, put: Callable[[Path], object]) -> None:
        """A folder laid out elsewhere in `out_dir` (the Triton repository) that commit puts in place as `name` with
        `put`."""
        self.folder = (name, staged, put)

    def remove(self, name: str, how: Callable[[], object], why: str) -> None:
        """Remove `name` at commit (`how` does it), saying `why`."""
        self.stale.setdefault(name, (how, why))

    def discard(self) -> None:
        """Remove every scratch file (and what a builder wrote beside it): the folder is as it was."""
        for scratch in self.files.values():
            for leftover in [scratch, *scratch.parent.glob(f"{_escaped(scratch.name)}?*")]:
                with contextlib.suppress(OSError):
                    leftover.unlink(missing_ok=True)
        if self.folder is not None:
            shutil.rmtree(self.folder[1], ignore_errors=True)
        self.files, self.folder = {}, None

    def commit(self, log: Log, listed: Collection[str]) -> list[str]:
        """Put everything in place (see the module's docstring); the names removed. `listed`: the names the folder's
        manifest lists now. A signal waits until it ends; a failure takes back what was put in place (see the module's
        docstring) and raises."""
        manifest = [(name, path) for name, path in self.files.items() if name == MANIFEST_NAME]
        taken: list[str] = []  # what a failure takes back
        with _signals_deferred():
            for name, (how, why) in self.stale.items():
                how()
                log(f"removed {name}: {why}")
            try:
                for name, scratch in self.files.items():
                    if name != MANIFEST_NAME:
                        _rename(scratch, self.out_dir / name)
                        if name not in listed:
                            taken.append(name)
                if self.folder is not None:
                    name, staged, put = self.folder
                    put(staged)
                    taken.append(name)  # listed or not: no hash in the manifest guards the copies it holds
                for name, scratch in manifest:
                    _rename(scratch, self.out_dir / name)
            except BaseException:
                _take_back(self.out_dir, taken)
                raise
        self.files, self.folder = {}, None
        return list(self.stale)


def _take_back(out_dir: Path, names: list[str]) -> None:
    """Remove what a failed commit put in place under `names` (files, a folder), as far as the file system lets it."""
    for name in names:
        path = out_dir / name
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def _escaped(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _rename(scratch: Path, path: Path) -> None:
    try:
        os.replace(scratch, path)  # a symlink at `path` is replaced itself, never followed
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while the files are put in place, then act on them as their handlers would."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in caught[:1]:
            signal.raise_signal(s)
