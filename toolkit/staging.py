"""An export's new files, written under hidden scratch names in its folder and put in place together at the end.

Until `commit`, the folder's own files are untouched: a failed or interrupted export discards its scratch files
and leaves the folder exactly as it was. `commit` only renames (it needs no disk space, and copies nothing): into
one hidden folder it makes in the export folder, `.toolkit-export-old-<tag>-...`, go first the previous export's
stale files, then, one by one, each file of a name a new file takes, before the new one is renamed to it; the Triton
repository likewise, and the manifest last, over the previous one. That last rename is the point of no return:
should any step before it fail (an error, Ctrl-C), every rename made is undone, in reverse order, and the folder is
again exactly as it was; once it is done, the folder set aside is deleted (should that fail, it is said, and the
export stands).

A crash in between (the process killed, the power gone) leaves the folder set aside. `recover`, run by the next
export before it reads the folder, settles it (toolkit/recovery.py): the tag is the start of the new manifest's
SHA-256, so if the manifest in place is that one, the commit had passed its point of no return and the folder set
aside is deleted; otherwise its files are put back under their names (over the new ones), and the new files of names
the previous manifest does not list, with the scratch files the commit had not yet renamed, are removed: the commit
notes in the folder set aside, before its first rename, each name it puts in place with its scratch file's name and
content (size and SHA-256, a folder's tree), and only a file of that content is removed. Until then the previous
manifest's hashes refuse the new files that took its files' names. A crash before the commit (while the files are
written) leaves only scratch files, which `recover` removes too, with the other scratch files and folders an export
makes there (`fileio.scratch_kind`: OpenVINO's, the Triton repository laid out, int8 quantization's work files, the
probe of a writable folder): under the folder's exclusive lock, which every export holds while its scratch files
exist, a scratch file of a name an export writes is no live export's (the probe, made before the lock is taken, may
be, and its maker does not mind it gone). Every such name carries `fileio.SCRATCH_MARK`; no other is removed.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from toolkit import fileio, recovery
from toolkit.artifacts import MANIFEST_NAME
from toolkit.errors import OutputError

Log = Callable[[str], None]

ASIDE_PREFIX = fileio.ASIDE_SCRATCH  # then the start of the new manifest's SHA-256, "-" and mkdtemp's random part
_TAG = 16


class Staging:
    """The scratch files of one export into `out_dir`, and what its commit removes."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.files: dict[str, Path] = {}  # final name -> scratch file, renamed in this order
        self.stale: dict[str, str] = {}  # name (a folder's ending in "/") -> why it goes
        self.folder: tuple[str, Path] | None = None  # name, staged folder

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

    def add_folder(self, name: str, staged: Path) -> None:
        """A folder laid out elsewhere in `out_dir` (the Triton repository) that commit renames to `name`."""
        self.folder = (name, staged)

    def remove(self, name: str, why: str) -> None:
        """Remove `name` of `out_dir` (a file, a link, or a folder named with a final "/") at commit, saying `why`."""
        self.stale.setdefault(name, why)

    def discard(self) -> None:
        """Remove every scratch file (and what a builder wrote beside it): the folder is as it was."""
        for scratch in self.files.values():
            for leftover in [scratch, *scratch.parent.glob(f"{glob.escape(scratch.name)}?*")]:
                with contextlib.suppress(OSError):
                    leftover.unlink(missing_ok=True)
        if self.folder is not None:
            shutil.rmtree(self.folder[1], ignore_errors=True)
        self.files, self.folder = {}, None

    def commit(self, log: Log) -> list[str]:
        """Put everything in place, the manifest (which must be among the files) last; the names removed. A signal
        waits until it ends; a failure before the manifest is in place undoes every rename and raises (see the
        module's docstring)."""
        manifest = self.files[MANIFEST_NAME]
        try:
            digest = fileio.file_digest(manifest)
            aside = fileio.scratch_folder(self.out_dir, f"{ASIDE_PREFIX}{digest[:_TAG]}-")
            self._note_written(aside, (os.lstat(manifest).st_size, digest))
        except OSError as e:
            raise OutputError(f"cannot write in {self.out_dir}/: {e.strerror or e}") from None
        done: list[tuple[Path, Path]] = []  # the renames made, which a failure undoes
        with _signals_deferred():
            try:
                for name in self.stale:
                    _move_aside(self.out_dir / name.rstrip("/"), aside, done, "remove")
                for name, scratch in self.files.items():
                    if name != MANIFEST_NAME:
                        _move_aside(self.out_dir / name, aside, done)
                        _rename(scratch, self.out_dir / name, done)
                if self.folder is not None:
                    name, staged = self.folder
                    _check_folder(self.out_dir / name)
                    _move_aside(self.out_dir / name, aside, done)
                    _rename(staged, self.out_dir / name, done)
                _rename(manifest, self.out_dir / MANIFEST_NAME, done)  # the point of no return
            except BaseException:
                _undo(done, aside, log)
                raise
            self.files, self.folder = {}, None
            for name, why in self.stale.items():
                log(f"removed {name}: {why}")
            recovery.delete_aside(aside, log)
        return list(self.stale)

    def _note_written(self, aside: Path, manifest: tuple[int, str]) -> None:
        """Note in `aside` each name commit puts in place, with its scratch file's (or folder's) name and content
        (`recovery.note`; the sizes and SHA-256s the new `manifest`, of that size and SHA-256, lists are not read
        again), so that `recover` removes exactly what a stopped commit left. OSError, `aside` removed, if it
        cannot."""
        staged = [*self.files.items(), *([self.folder] if self.folder is not None else [])]
        try:
            known = {**_listed(self.files[MANIFEST_NAME]), MANIFEST_NAME: manifest}
            recovery.note(aside, staged, known)
        except OSError:
            shutil.rmtree(aside, ignore_errors=True)
            raise

    def recover(self, log: Log) -> None:
        """Settle what exports a crash stopped left in the folder (toolkit/recovery.py); only under the folder's
        exclusive lock. OutputError if a file cannot be put back."""
        recovery.recover(self.out_dir, log)


def _move_aside(path: Path, aside: Path, done: list[tuple[Path, Path]], verb: str = "write") -> None:
    """Rename `path`, if there is one and it was not set aside already, into `aside`."""
    if os.path.lexists(path) and not os.path.lexists(aside / path.name):
        try:
            os.replace(path, aside / path.name)  # a symlink is moved itself, never followed
        except OSError as e:
            raise OutputError(f"cannot {verb} {path}: {e.strerror or e}") from None
        done.append((path, aside / path.name))


def _rename(scratch: Path, path: Path, done: list[tuple[Path, Path]]) -> None:
    try:
        os.replace(scratch, path)  # nothing is at `path` but for the manifest, which it replaces
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    done.append((scratch, path))


def _check_folder(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise OutputError(f"{path} exists and is not a folder; move it away to write the folder there")


def _undo(done: list[tuple[Path, Path]], aside: Path, log: Log) -> None:
    """Undo the renames `done`, last first: each new file back to its scratch name, each earlier file back to its
    own; what cannot go back stays in `aside` (said), for the next export's `recover`."""
    undone = True
    for source, target in reversed(done):
        try:
            os.replace(target, source)
        except OSError:
            undone = False
    try:
        if not undone:  # the note stays, for `recover` to remove the new files left in place
            raise OSError
        (aside / recovery.NOTE).unlink(missing_ok=True)
        aside.rmdir()
    except OSError:
        log(f"could not put back every file of {aside.parent}/: those left are in {aside}/, and the next export "
            f"into {aside.parent}/ puts them back and removes the new ones")


def _listed(manifest: Path) -> dict[str, tuple[int, str]]:
    """{file: (size, SHA-256)} of each file the new manifest lists with both (its artifacts, their companion files,
    the golden outputs, the reference inputs): hashed as written, from the very scratch files commit renames."""
    found: dict[str, tuple[int, str]] = {}

    def walk(value: object) -> None:
        if isinstance(value, dict):
            name, size, sha256 = value.get("file", value.get("inputs")), value.get("size_bytes"), value.get("sha256")
            if isinstance(name, str) and isinstance(size, int) and isinstance(sha256, str):
                found.setdefault(name, (size, sha256))
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    try:
        walk(json.loads(manifest.read_text()))
    except ValueError:
        pass
    return found


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
