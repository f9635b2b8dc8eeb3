"""The one writer: outputs land as regular files, atomically, and nothing else at the path is replaced."""

import json
import math
import os
import stat

import pytest

from tests.conftest import assert_one_line_error, run_cli
from toolkit import fileio
from toolkit.errors import OutputError
from toolkit.staging import Staging


def test_a_regular_file_is_replaced_whole(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    fileio.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left


@pytest.mark.parametrize("kind", ["fifo", "symlink", "dangling-symlink"])
def test_what_is_not_a_regular_file_is_refused_and_left_alone(tmp_path, kind):
    target = tmp_path / "out.json"
    keep = tmp_path / "kept.txt"
    keep.write_text("precious")
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to(keep if kind == "symlink" else tmp_path / "nowhere")
    before = os.lstat(target)
    with pytest.raises(OutputError, match="not a regular file"):
        fileio.write_json(target, {"a": 1})
    after = os.lstat(target)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and after.st_ino == before.st_ino
    assert keep.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt", "out.json"]


def test_json_never_holds_nan_or_infinity():
    text = fileio.json_text({"x": math.nan, "y": [math.inf, -math.inf, 1.5], "z": {"w": 2}})

    def refuse(word):
        raise ValueError(word)

    assert json.loads(text, parse_constant=refuse) == {"x": None, "y": [None, None, 1.5], "z": {"w": 2}}


def test_the_cli_refuses_a_fifo_as_json_output(tmp_path, exported, mnist_dir):
    fifo = tmp_path / "report.json"
    os.mkfifo(fifo)
    model = exported / "model.onnx"
    result = run_cli("compare", model, model, "--json", fifo, "--data-dir", mnist_dir)
    assert "not a regular file" in assert_one_line_error(result, 2)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_an_output_folder_on_a_link_to_nothing_is_not_called_a_file(tmp_path, short_run):
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    for out, named in ((tmp_path / "out", "it"), (tmp_path / "out" / "sub", str(tmp_path / "out"))):
        line = assert_one_line_error(run_cli("export", "--checkpoint", short_run / "checkpoint.pt", "--format",
                                             "onnx", "--out", out), 2)
        assert f"{named} is a link to nothing, not a folder" in line
    assert not (tmp_path / "nowhere").exists()


def test_a_staged_write_fills_its_scratch_file_itself(tmp_path):
    """An export's scratch file is the only temporary file of its write: filled in place, renamed only at commit."""
    staging = Staging(tmp_path)
    scratch = staging.scratch("manifest.json")
    inode = os.stat(scratch).st_ino
    fileio.write_json(tmp_path / "manifest.json", {"a": 1}, to=scratch)
    assert os.stat(scratch).st_ino == inode and json.loads(scratch.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == [scratch.name]
    assert staging.commit(lambda line: None) == []
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    # a write that fails names the file it was to become, and leaves no half-written scratch file behind
    scratch = staging.scratch("golden.npy")
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'golden.npy'}: "):
        with fileio.atomic_path(tmp_path / "golden.npy", to=scratch) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(28, "No space left on device")
    assert not scratch.exists() and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_open_regular_reads_only_the_regular_file_it_checked(tmp_path):
    (tmp_path / "file").write_bytes(b"data")
    (tmp_path / "link").symlink_to("file")
    os.mkfifo(tmp_path / "fifo")
    with fileio.open_regular(tmp_path / "link") as f:  # followed where asked
        assert fileio.stream_digest(f) == fileio.digest(b"data") == fileio.file_digest(tmp_path / "file")
    with pytest.raises(OSError):
        fileio.open_regular(tmp_path / "link", follow_links=False)
    for path in (tmp_path / "fifo", tmp_path):  # refused at once: a FIFO does not block the open
        with pytest.raises(OSError):
            fileio.open_regular(path)


def test_a_writable_folder_check_does_not_mind_its_probe_removed(tmp_path, monkeypatch):
    """An export holding a folder's lock removes the probe files left there, and may remove the live probe of another
    export that is checking that it can write there: that check still passes, and leaves no probe."""
    real_open = os.open

    def open_(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if os.path.basename(path).startswith(fileio.WRITE_TEST):
            os.unlink(path)  # removed at once by the export that holds the lock
        return fd

    monkeypatch.setattr(os, "open", open_)
    assert fileio.check_writable_dir(tmp_path / "exp", "exported artifacts") == tmp_path / "exp"
    assert os.listdir(tmp_path / "exp") == []
