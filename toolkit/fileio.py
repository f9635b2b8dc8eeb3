"""Atomic writes, the one JSON encoder and checksums shared by every stage.

Every file the toolkit writes goes through `atomic_path`: it writes a regular file where the path is absent or
already a regular file, and refuses anything else (a device such as /dev/null, a FIFO, a socket, a symbolic
link, a folder) in one line, leaving it as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, to: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on error delete it.

    A reader therefore sees either the old file or the complete new one, never a half-written file. `to`: a
    temporary file already made for `path` (an export's scratch file, renamed to `path` when the export commits),
    yielded itself and kept on success; errors name `path` all the same.
    """
    from toolkit.errors import OutputError

    path = Path(path)
    tmp_path = None
    written = False
    try:
        if to is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            check_target(path)
        tmp_path = temp_beside(path) if to is None else Path(to)
        yield tmp_path
        if to is None:
            os.replace(tmp_path, path)
        written = True
    except OSError as e:  # disk full, read-only folder, a folder in the way: the old file stays as it was
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp_path is not None and not (written and to is not None):  # a half-written scratch file goes too
            tmp_path.unlink(missing_ok=True)


# Every hidden scratch name the toolkit makes carries SCRATCH_MARK, which ordinary names do not ("toolkit-" after
# the leading dot, or after the name a scratch file stands in for), so that what removes the ones a killed export left
# (toolkit/staging.py) never takes a user's ".model.onnx.original.tmp" for one. Each name is here only, so that what
# makes one and what removes one cannot drift apart. tempfile's names: the prefix, then 8 random characters.
SCRATCH_MARK = "toolkit-"
_RANDOM = "[a-z0-9_]{8}"  # tempfile's alphabet


def temp_beside(path: Path) -> Path:
    """A new empty hidden file in `path`'s folder, to be renamed to `path` once written. OSError if it cannot be."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{SCRATCH_MARK}", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make artifacts unreadable to others
    return Path(tmp)


# the name `temp_beside` gives a file for NAME: ".NAME.toolkit-" + mkstemp's 8 random characters + ".tmp"
_TEMP_NAME = re.compile(rf"\.(.+)\.{re.escape(SCRATCH_MARK)}{_RANDOM}\.tmp")


def temp_name_of(name: str) -> str | None:
    """The name whose `temp_beside` file `name` is named like (".model.onnx.toolkit-k3_x9abq.tmp": "model.onnx"), or
    None."""
    found = _TEMP_NAME.fullmatch(name)
    return found.group(1) if found else None


# The other hidden scratch names an export makes in its folder.
OPENVINO_SCRATCH = f".{SCRATCH_MARK}openvino-"  # a folder (mkdtemp): OpenVINO saves its two files there, then moved
TRITON_SCRATCH = f".{SCRATCH_MARK}triton-"  # a folder (mkdtemp): the Triton repository, laid out before put in place
WRITE_TEST = f".{SCRATCH_MARK}write-test-"  # a file (mkstemp): check_writable_dir's probe
# int8 quantization's work files: INT8_SCRATCH, time.time_ns(), "-", a part and ".onnx"; ONNX Runtime may write
# others beside one, under its name and more ("-opt.onnx", ".onnx.data")
INT8_SCRATCH = f".{SCRATCH_MARK}int8-"
INT8_PARTS = ("raw", "pre", "out")
# the folder an export's commit sets the earlier files aside in (toolkit/staging.py): ASIDE_SCRATCH, the first 16 hex
# digits of the new manifest's SHA-256, "-" and mkdtemp's random part; settled, not merely removed, by the next export
ASIDE_SCRATCH = f".{SCRATCH_MARK}export-old-"
ASIDE_NAME = re.compile(rf"{re.escape(ASIDE_SCRATCH)}([0-9a-f]{{16}})-{_RANDOM}")
_SCRATCH = ((re.compile(re.escape(OPENVINO_SCRATCH) + _RANDOM), stat.S_IFDIR),
            (re.compile(re.escape(TRITON_SCRATCH) + _RANDOM), stat.S_IFDIR),
            (re.compile(re.escape(WRITE_TEST) + _RANDOM), stat.S_IFREG),
            (re.compile(rf"{re.escape(INT8_SCRATCH)}[0-9]+-(?:{'|'.join(INT8_PARTS)})[-.].+"), stat.S_IFREG))


def int8_scratch_stem(stamp: int) -> str:
    """The start of the names of one quantization's work files (`stamp`: time.time_ns()): then a part and ".onnx"."""
    return f"{INT8_SCRATCH}{stamp}-"


def scratch_folder(parent: Path, prefix: str) -> Path:
    """A new hidden folder (0700) in `parent`, named `prefix` and tempfile's random part. OSError if it cannot be."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def scratch_kind(name: str) -> int | None:
    """stat.S_IFDIR or stat.S_IFREG if `name` is that of one of the scratch folders or files above, else None."""
    return next((kind for pattern, kind in _SCRATCH if pattern.fullmatch(name)), None)


def check_target(path: Path) -> None:
    """Refuse to replace what is not a regular file: renaming over /dev/null or a FIFO would destroy it."""
    from toolkit.errors import OutputError

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "Is a directory")
    kind = ("a symbolic link" if stat.S_ISLNK(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")
    raise OutputError(f"cannot write {path}: it is {kind}, not a regular file; give the path of a new or "
                      "regular file (or - for standard output where the option allows it)")


def write_bytes(path: str | os.PathLike, data: bytes, to: str | os.PathLike | None = None) -> None:
    """Atomically write `data` to `path` (or into `to`, its scratch file: see `atomic_path`)."""
    with atomic_path(path, to) as tmp:
        tmp.write_bytes(data)


def json_text(obj: Any, indent: int | None = 2) -> str:
    """`obj` as strict JSON: NaN and infinities, which JSON has no words for, become null."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any, to: str | os.PathLike | None = None) -> None:
    """Atomically write `obj` as indented strict JSON (see `json_text`; `to`: see `atomic_path`)."""
    write_bytes(path, (json_text(obj) + "\n").encode(), to)


def digest(data: bytes, algorithm: str = "sha256") -> str:
    return hashlib.new(algorithm, data).hexdigest()


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    with open(path, "rb") as f:
        return stream_digest(f, algorithm)


def stream_digest(f: BinaryIO, algorithm: str = "sha256") -> str:
    """The digest of what is left to read in the open file `f`."""
    h = hashlib.new(algorithm)
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def open_regular(path: str | os.PathLike, *, follow_links: bool = True) -> BinaryIO:
    """`path` opened for reading, if what was opened is a regular file: checked (fstat) on the very descriptor then
    read, so nothing put in its place after an earlier look is read instead. `follow_links=False`: a symbolic link at
    `path` is refused too (O_NOFOLLOW). O_NONBLOCK: a FIFO does not hold the open. OSError if not."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def shortest(path: str | os.PathLike) -> Path:
    """`path` as a person would write it ("exported/../runs/x" reads runs/x), where that names the same file:
    through a symlinked folder, ".." leads elsewhere than the text suggests, and the path is kept as given."""
    short = os.path.normpath(path)
    try:
        return Path(short if os.path.samefile(short, path) else path)
    except OSError:
        return Path(path)


def absent(path: str | os.PathLike, hint: str = "") -> str:
    """What is wrong with a file to read at `path` that is not a regular file, to follow its name in a message: a
    folder, something else (a FIFO, a device, a broken link), or nothing there (then `hint`, what to do)."""
    path = Path(path)
    if path.is_dir():
        return "is a folder, not a file"
    if path.exists() or path.is_symlink():
        return "is not a regular file"
    return "does not exist" + (f"; {hint}" if hint else "")


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create `path` if needed and make sure files can be written there, or raise ConfigError. A file where the
    folder or one of the folders above it would be is named, not left to the OS's "Not a directory"."""
    from toolkit.errors import ConfigError

    path = Path(path)
    there = next(p for p in (path, *path.parents) if p.exists() or p.is_symlink())  # "." or "/" at the latest
    if not there.is_dir():
        which = "it" if there == path else str(there)
        kind = "a file" if there.is_file() else "a link to nothing" if not there.exists() else "a special file"
        raise ConfigError(f"cannot write the {what} to {path}: {which} is {kind}, not a folder; choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=WRITE_TEST)
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):  # an export that holds the folder's lock may have removed it
            os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"cannot write the {what} to {path}: {e.strerror or e}; choose another folder") from None
    return path


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, wait_s: float = 600.0) -> Iterator[None]:
    """Hold an exclusive advisory lock on `folder` itself.

    Two exports into one folder then run one after the other instead of mixing their files. The lock is
    taken on the folder's own descriptor, so no lock file is left behind. Waits up to `wait_s`, then raises.
    """
    import time

    from toolkit.errors import ConfigError

    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise ConfigError(f"cannot open {folder}/ to lock it: {e.strerror or e}") from None
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError(f"{folder}/ stayed locked by another toolkit export for {wait_s:.0f} s; "
                                      "try again when it has finished") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
