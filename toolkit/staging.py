"""An export's new files, written under hidden scratch names in its folder and put in place together at the end.

Until `commit`, the folder's own files are untouched: a failed or interrupted export discards its scratch files
and leaves the folder exactly as it was. `commit` only renames (it needs no disk space, and copies nothing): into
one hidden folder it makes in the export folder, `.export-old-<tag>-...`, go first the previous export's stale files,
then, one by one, each file of a name a new file takes, before the new one is renamed to it; the Triton repository
likewise, and the manifest last, over the previous one. That last rename is the point of no return: should any step
before it fail (an error, Ctrl-C), every rename made is undone, in reverse order, and the folder is again exactly as
it was; once it is done, the folder set aside is deleted (should that fail, it is said, and the export stands).

A crash in between (the process killed, the power gone) leaves the folder set aside. `recover`, run by the next
export before it reads the folder, settles it: the tag is the start of the new manifest's SHA-256, so if the
manifest in place is that one, the commit had passed its point of no return and the folder set aside is deleted;
otherwise its files are put back under their names (over the new ones), and the new files of names the previous
manifest does not list, with the scratch files the commit had not yet renamed, are removed: the commit notes in the
folder set aside, before its first rename, each name it puts in place with its scratch file's name and inode, and
only a file of that inode is removed. Until then the previous manifest's hashes refuse the new files that took its
files' names. A crash before the commit (while the files are written) leaves only scratch files, which `recover`
removes too, with the other scratch files and folders an export makes there (`fileio.scratch_kind`: OpenVINO's,
the Triton repository laid out, int8 quantization's work files, the probe of a writable folder): under the folder's
exclusive lock, which every export holds while its scratch files exist, a scratch file of a name an export writes is
no live export's (the probe, made before the lock is taken, may be, and its maker does not mind it gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from toolkit import fileio
from toolkit.artifacts import GOLDEN_NAME, MANIFEST_NAME
from toolkit.errors import OutputError
from toolkit.formats import FORMATS
from toolkit.refinputs import INPUTS_NAME

Log = Callable[[str], None]

ASIDE_PREFIX = ".export-old-"  # then the start of the new manifest's SHA-256, "-" and mkdtemp's random part
_TAG = 16
_WRITTEN = ".written"  # in the folder set aside: what its commit puts in place (no name an export writes is hidden)
# each file name an export writes, with the endings of the companion files a builder writes beside its scratch file
# (exporters.scratch_path: ".model.xml.<random>.tmp.bin"); verify's and bench's results are no export's: they are
# written without the lock, and their scratch files may be a live command's
_OWN_FILES = {MANIFEST_NAME: (), GOLDEN_NAME: (), INPUTS_NAME: (),
              **{f.file_name(p): f.companions for f in FORMATS.values() for p in f.precisions}}


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
            for leftover in [scratch, *scratch.parent.glob(f"{_escaped(scratch.name)}?*")]:
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
            tag = fileio.file_digest(manifest)[:_TAG]
            aside = Path(tempfile.mkdtemp(prefix=f"{ASIDE_PREFIX}{tag}-", dir=self.out_dir))
            self._note_written(aside)
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
            _delete_aside(aside, log)
        return list(self.stale)

    def _note_written(self, aside: Path) -> None:
        """Note in `aside` each name commit puts in place, with its scratch file's (or folder's) name and inode, so
        that `recover` removes exactly what a stopped commit left. OSError, `aside` removed, if it cannot."""
        staged = [*self.files.items(), *([self.folder] if self.folder is not None else [])]
        try:
            (aside / _WRITTEN).write_text(json.dumps([[name, scratch.name, os.lstat(scratch).st_ino]
                                                      for name, scratch in staged]))
        except OSError:
            shutil.rmtree(aside, ignore_errors=True)
            raise

    def recover(self, log: Log) -> None:
        """Settle the folders set aside by commits a crash stopped, and remove the scratch files of exports a crash
        stopped before their commit (see the module's docstring); only under the folder's exclusive lock. OutputError
        if a file cannot be put back."""
        manifest = self.out_dir / MANIFEST_NAME
        digest = fileio.file_digest(manifest) if manifest.is_file() and not manifest.is_symlink() else ""
        for aside in sorted(self.out_dir.glob(f"{_escaped(ASIDE_PREFIX)}*")):
            if not aside.is_dir() or aside.is_symlink():
                continue
            tag = aside.name[len(ASIDE_PREFIX):].split("-")[0]
            if len(tag) == _TAG and digest.startswith(tag):  # the commit was done but for deleting it
                _delete_aside(aside, log)
                log(f"removed {aside}/, the earlier files of an export that was stopped once it was done")
                continue
            names = sorted(p.name for p in aside.iterdir() if p.name != _WRITTEN)
            for name in names:
                _put_back(aside / name, self.out_dir / name)
            removed = _take_back(self.out_dir, aside)
            with contextlib.suppress(OSError):
                (aside / _WRITTEN).unlink(missing_ok=True)
                aside.rmdir()
            if names or not removed:
                log(f"put back {', '.join(names) or 'nothing'} from {aside}/, where an export that was stopped "
                    "part-way had set the earlier export's files aside")
            if removed:
                log(f"removed {', '.join(removed)} from {self.out_dir}/, which an export that was stopped part-way "
                    "had put in place")
        _remove_scratch(self.out_dir, log)


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
        (aside / _WRITTEN).unlink(missing_ok=True)
        aside.rmdir()
    except OSError:
        log(f"could not put back every file of {aside.parent}/: those left are in {aside}/, and the next export "
            f"into {aside.parent}/ puts them back and removes the new ones")


def _put_back(kept: Path, path: Path) -> None:
    """Put a file (or folder) set aside back as `path`, over what a stopped commit put there."""
    try:
        if kept.is_dir() and not kept.is_symlink() and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # the stopped export's Triton repository: copies that no hash guards
        os.replace(kept, path)
    except OSError as e:
        raise OutputError(f"cannot put back {path} from {kept}: {e.strerror or e}; put it back, or remove "
                          f"{kept.parent} to lose the earlier export") from None


def _take_back(out_dir: Path, aside: Path) -> list[str]:
    """Remove what the commit stopped with `aside` left, as it noted there: each new file (or folder) still in place
    of a name nothing was set aside for, and each scratch file it had not yet renamed; only one of the inode noted,
    never a link, and only a plain name in `out_dir`. The names removed."""
    try:
        noted = json.loads((aside / _WRITTEN).read_text())
    except (OSError, ValueError):  # none: set aside before the note was made, or before any rename
        return []
    removed = []
    for entry in noted if isinstance(noted, list) else []:
        if not (isinstance(entry, list) and len(entry) == 3 and all(_plain(n) for n in entry[:2])
                and isinstance(entry[2], int)):
            continue
        name, scratch, inode = entry
        if _remove_file(out_dir / name, inode):
            removed.append(name)
        _remove_file(out_dir / scratch, inode)
    return sorted(removed)


def _plain(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name


def _remove_file(path: Path, inode: int) -> bool:
    """Remove `path` if it is the regular file or folder of `inode` (a link is never followed); whether it was."""
    try:
        st = os.lstat(path)
        if st.st_ino != inode or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return False
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)  # the stopped export's Triton repository
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    except OSError as e:
        raise OutputError(f"cannot remove {path}, which an export that was stopped part-way wrote: "
                          f"{e.strerror or e}; remove it") from None
    return True


def _remove_scratch(out_dir: Path, log: Log) -> None:
    """Remove the scratch files and folders a stopped export left in `out_dir`: each named as `fileio.temp_beside`
    names one for a file an export writes, or as a companion file beside one (a regular file), or as one of the
    other names of `fileio.scratch_kind` and of its kind (a regular file, or a folder that is not a link), never a
    link; said in one line."""
    removed, failed = [], []
    try:
        entries = sorted(os.scandir(out_dir), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        kind = stat.S_IFREG if _own_scratch(entry.name) else fileio.scratch_kind(entry.name)
        try:
            if kind is None or stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode) != kind:
                continue
            if kind == stat.S_IFDIR:
                shutil.rmtree(entry.path)  # which never follows a link in it
            else:
                os.unlink(entry.path)
            removed.append(entry.name + "/" * (kind == stat.S_IFDIR))
        except FileNotFoundError:
            continue
        except OSError as e:
            failed.append(f"{entry.name} ({e.strerror or e})")
    if removed:
        log(f"removed {', '.join(removed)} from {out_dir}/, the scratch files of an export that was stopped before "
            "it was done")
    if failed:
        log(f"could not remove {', '.join(failed)} from {out_dir}/, the scratch files of an export that was stopped")


def _own_scratch(name: str) -> bool:
    """Whether `name` is that of a scratch file of a name an export writes, or of a companion file beside one."""
    if fileio.temp_name_of(name) in _OWN_FILES:
        return True
    stem, ending = os.path.splitext(name)
    return ending in _OWN_FILES.get(fileio.temp_name_of(stem) or "", ())


def _delete_aside(aside: Path, log: Log) -> None:
    try:
        shutil.rmtree(aside)
    except OSError as e:
        log(f"could not remove {aside}/ (the files this export replaced): {e.strerror or e}")


def _escaped(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


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
