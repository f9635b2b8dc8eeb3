"""An export whose commit fails part-way, or is stopped by a crash: the folder is again exactly as it was, and the
earlier export still verifies."""

import errno
import os
import re
import shutil

from tests.conftest import run_cli
from toolkit.staging import ASIDE_PREFIX, Staging


def _snapshot(folder) -> dict[str, bytes | str]:
    """Every name under `folder`, hidden ones too, with its bytes (a folder: "folder", a link: its target)."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        found[name] = f"-> {os.readlink(path)}" if path.is_symlink() else "folder" if path.is_dir() \
            else path.read_bytes()
    return found


def _export_failing(monkeypatch, args, n: int, interrupt: bool = False, crash: bool = False,
                    killed: bool = False) -> list[str]:
    """Export with `args`, the `n`-th rename failing (as Ctrl-C, with `interrupt`; with `crash`, every rename from
    the `n`-th on, so that none is undone; with `killed` too, no scratch file is removed either, as when the process
    is killed); each rename's target, "aside/<name>" for one into the folder set aside."""
    real_replace, calls = os.replace, []

    def replace(src, dst, *rest, **kwargs):
        aside = os.path.basename(os.path.dirname(dst)).startswith(ASIDE_PREFIX)
        calls.append("aside/" * aside + os.path.basename(dst))
        if len(calls) == n or (crash and len(calls) > n):
            raise KeyboardInterrupt if interrupt else PermissionError(errno.EACCES, "Permission denied")
        return real_replace(src, dst, *rest, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        if killed:
            m.setattr(Staging, "discard", lambda self: None)
        result = run_cli(*args)
    last = result.stderr.strip().splitlines()[-1]  # after the log of what was built
    if interrupt:
        assert result.exit_code == 130 and last.endswith("interrupted"), result.stderr
    else:
        assert result.exit_code == 2 and last.startswith("error: cannot ") and "Permission denied" in last, \
            result.stderr
    assert "Traceback" not in result.stderr
    if crash:
        assert "could not put back every file" in result.stderr, result.stderr
    return calls


def _verifies(out, mnist_dir) -> None:
    verified = run_cli("verify", "--artifacts", out, "--data-dir", mnist_dir, "--batch1-images", "0")
    assert verified.exit_code == 0, verified.stdout + verified.stderr


def test_a_commit_that_fails_part_way_leaves_the_folder_as_it_was(tmp_path, short_run, mnist_dir, monkeypatch):
    out = tmp_path / "exp"
    args = ("export", "--checkpoint", short_run / "checkpoint.pt", "--out", out, "--data-dir", mnist_dir)
    assert run_cli(*args, "--format", "onnx").exit_code == 0
    before = _snapshot(out)
    assert set(before) == {"manifest.json", "model.onnx", "golden.npy"}
    # the renames of the commit of the Triton repository and the files it serves, in order: a file of a name the
    # earlier export holds goes aside before the new one takes it
    renames = ["aside/model.onnx", "model.onnx", "model.app.onnx", "model.ts.pt", "aside/golden.npy", "golden.npy",
               "triton", "manifest.json"]
    calls = _export_failing(monkeypatch, (*args, "--format", "onnx,triton"), 7, interrupt=True)  # Ctrl-C
    assert calls[:7] == renames[:7]
    assert _snapshot(out) == before  # every earlier file back, nothing new, no hidden file or folder left

    assert run_cli(*args, "--format", "onnx,triton").exit_code == 0
    before = _snapshot(out)
    assert not [name for name in before if name.startswith(".")]  # no folder set aside, no scratch file
    assert {name for name in before if "/" not in name} == {*renames[1:4], *renames[5:]}
    # without --format triton, the repository, now stale, goes aside first; then the manifest fails
    calls = _export_failing(monkeypatch, (*args, "--format", "onnx"), 6)
    assert calls[:6] == ["aside/triton", "aside/model.onnx", "model.onnx", "aside/golden.npy", "golden.npy",
                         "manifest.json"]
    assert _snapshot(out) == before
    # with --format triton, the earlier repository goes aside when the new one takes its name
    calls = _export_failing(monkeypatch, (*args, "--format", "onnx,triton"), 10)
    assert calls[8:10] == ["aside/triton", "triton"]
    assert _snapshot(out) == before
    _verifies(out, mnist_dir)


def test_the_next_export_settles_what_a_crash_in_a_commit_set_aside(tmp_path, short_run, mnist_dir, monkeypatch):
    out = tmp_path / "exp"
    args = ("export", "--checkpoint", short_run / "checkpoint.pt", "--out", out, "--data-dir", mnist_dir, "--format",
            "onnx,triton")
    assert run_cli(*args).exit_code == 0
    before, lines = _snapshot(out), []
    # stopped as the manifest was to be renamed, and nothing undone: the earlier files wait in the folder set aside
    calls = _export_failing(monkeypatch, args, 11, crash=True)
    assert calls[8:11] == ["aside/triton", "triton", "manifest.json"]
    left = _snapshot(out)
    assert [name for name in left if name.startswith(ASIDE_PREFIX)] and left != before
    Staging(out).recover(lines.append)  # what the next export does first
    assert _snapshot(out) == before
    assert lines[0].startswith(f"put back golden.npy, model.app.onnx, model.onnx, model.ts.pt, triton from {out}/")
    _verifies(out, mnist_dir)

    # stopped after it: the new export stands, and the next export removes the earlier files set aside
    real_rmtree = shutil.rmtree
    with monkeypatch.context() as m:
        m.setattr(shutil, "rmtree", lambda path, *a, **k: (_ for _ in ()).throw(OSError(errno.EBUSY, "Busy"))
                  if ASIDE_PREFIX in str(path) else real_rmtree(path, *a, **k))
        result = run_cli(*args)
    assert result.exit_code == 0 and "could not remove" in result.stderr, result.stderr
    done = _snapshot(out)
    assert [name for name in done if name.startswith(ASIDE_PREFIX)]
    result = run_cli(*args)
    assert result.exit_code == 0 and f"removed {out}/{ASIDE_PREFIX}" in result.stderr, result.stderr
    assert set(_snapshot(out)) == {name for name in done if not name.startswith(ASIDE_PREFIX)}


def test_an_export_after_a_crash_removes_the_new_files_the_crash_left(tmp_path, short_run, mnist_dir, monkeypatch):
    """A crash in the commit leaves new files of names the earlier manifest does not list: the next export removes
    them (they are the toolkit's, not the user's), with the scratch files, so a plain export just works."""
    out = tmp_path / "exp"
    args = ("export", "--checkpoint", short_run / "checkpoint.pt", "--out", out, "--data-dir", mnist_dir)
    assert run_cli(*args, "--format", "onnx").exit_code == 0
    before, lines = _snapshot(out), []
    # killed as the manifest was to be renamed: model.app.onnx, model.ts.pt and triton/ are new names, in place
    calls = _export_failing(monkeypatch, (*args, "--format", "onnx,triton"), 8, crash=True, killed=True)
    assert calls[5:8] == ["golden.npy", "triton", "manifest.json"]
    left = {name for name in _snapshot(out) if "/" not in name}
    assert {"model.app.onnx", "model.ts.pt", "triton"} <= left
    assert [name for name in left if name.startswith(".manifest.json.")]  # the new manifest, never renamed
    Staging(out).recover(lines.append)
    assert _snapshot(out) == before  # the earlier export, and nothing else
    assert lines[1] == f"removed model.app.onnx, model.ts.pt, triton from {out}/, which an export that was " \
        "stopped part-way had put in place", lines

    # the same crash again; then a plain export (no --overwrite) settles it first and writes what it was asked for
    _export_failing(monkeypatch, (*args, "--format", "onnx,triton"), 8, crash=True, killed=True)
    result = run_cli(*args, "--format", "onnx,triton")
    assert result.exit_code == 0, result.stderr
    assert "removed model.app.onnx, model.ts.pt, triton from" in result.stderr
    done = _snapshot(out)
    assert {name for name in done if "/" not in name} == {"manifest.json", "model.onnx", "model.app.onnx",
                                                          "model.ts.pt", "golden.npy", "triton"}
    assert not [name for name in done if "/." in f"/{name}"]  # no folder set aside, no scratch file
    _verifies(out, mnist_dir)


# `python -m toolkit ARGS`, killed (SIGKILL: nothing of it runs after) as it starts to build its TorchScript file,
# once the ONNX file is written under its scratch name
_KILLED_BUILDING_TORCHSCRIPT = (
    "import os, runpy, signal; import toolkit.exporters.torchscript as ts; "
    "ts.build = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
    "runpy.run_module('toolkit', run_name='__main__', alter_sys=True)")


def test_an_export_removes_the_scratch_files_of_one_killed_before_its_commit(tmp_path, short_run, mnist_dir):
    """A process killed while it writes its files leaves their scratch files, which no commit ever saw: the next
    export, which holds the folder's lock, removes them, and only them (no user's file, link or folder that merely
    looks like one, nor the scratch file of a verify or bench result, written without the lock)."""
    import signal
    import sys

    from tests.conftest import run_process

    out = tmp_path / "exp"
    args = ("export", "--checkpoint", short_run / "checkpoint.pt", "--out", out, "--data-dir", mnist_dir)
    killed = run_process(sys.executable, "-c", _KILLED_BUILDING_TORCHSCRIPT, *args, "--format", "onnx,torchscript")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    scratch = sorted(name for name in _snapshot(out) if name.startswith("."))
    assert [re.sub(r"\.toolkit-[a-z0-9_]{8}\.tmp$", "", name) for name in scratch] == [".model.onnx", ".model.ts.pt"], \
        scratch
    assert (out / scratch[0]).stat().st_size > 0  # the ONNX file, written

    (tmp_path / "mine").write_text("a user's file")
    theirs = {".model.onnx.toolkit-abcd_123.tmp": "folder", ".model.ts.pt.toolkit-abcd_123.tmp": "-> ../mine",
              ".verify.json.toolkit-abcd_123.tmp": b"{", ".notes.toolkit-abcd_123.tmp": b"mine",
              ".model.onnx.toolkit-abc.tmp": b"mine", ".model.onnx.toolkit-abcd_123.tmp.bin": b"mine",
              ".model.onnx.abcd_123.tmp": b"mine"}
    (out / ".model.onnx.toolkit-abcd_123.tmp").mkdir()
    (out / ".model.ts.pt.toolkit-abcd_123.tmp").symlink_to("../mine")
    for name, data in theirs.items():
        if isinstance(data, bytes):
            (out / name).write_bytes(data)

    result = run_cli(*args, "--format", "onnx")
    assert result.exit_code == 0, result.stderr
    assert f"removed {', '.join(scratch)} from {out}/, the scratch files of an export that was stopped before it " \
        "was done" in result.stderr.splitlines()
    done = _snapshot(out)
    assert {name: data for name, data in done.items() if name.startswith(".")} == theirs
    assert {name for name in done if not name.startswith(".")} == {"manifest.json", "model.onnx", "golden.npy"}
    assert (tmp_path / "mine").read_text() == "a user's file"


# the next export's first int8 candidate is quantized, its work files written, and the process killed
_KILLED_QUANTIZING = (
    "import os, runpy, signal; import toolkit.exporters.int8_phases as phases; "
    "phases.uint8_max = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
    "runpy.run_module('toolkit', run_name='__main__', alter_sys=True)")


def test_an_export_removes_the_scratch_folders_and_work_files_of_one_killed(tmp_path, short_run, mnist_dir):
    """The other scratch names a killed export leaves in its folder, int8 quantization's work files (and what ONNX
    Runtime writes beside them), OpenVINO's and the Triton repository's scratch folders, the writable folder's probe,
    are removed by the next export too, in one line; a name of another pattern, a link, or a file where a folder is
    made (or the other way round) stays."""
    import signal
    import sys
    import tempfile
    import time

    from tests.conftest import run_process
    from toolkit import fileio
    from toolkit.exporters import triton

    out = tmp_path / "exp"
    args = ("export", "--checkpoint", short_run / "checkpoint.pt", "--out", out, "--data-dir", mnist_dir)
    killed = run_process(sys.executable, "-c", _KILLED_QUANTIZING, *args, "--format", "onnx", "--precision", "int8",
                         "--calibration-size", "100")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    work = sorted(name for name in os.listdir(out) if name.startswith(fileio.INT8_SCRATCH))
    assert [re.sub(rf"^{re.escape(fileio.INT8_SCRATCH)}[0-9]+-", "", name) for name in work] == \
        ["out.onnx", "pre.onnx", "raw.onnx"], work
    side = f"{fileio.int8_scratch_stem(time.time_ns())}pre-opt.onnx"  # as an earlier ONNX Runtime names its own
    (out / side).write_bytes(b"onnx")
    (out / f"{work[0]}.data").write_bytes(b"weights")
    staged = triton.stage_repository(out, [])[1]  # the Triton repository, as an export lays it out
    (staged / "convnet").mkdir()
    (staged / "convnet" / "config.pbtxt").write_text("name: ...")
    (staged / "convnet" / "link").symlink_to(tmp_path / "theirs")  # removed itself, never followed
    openvino = fileio.scratch_folder(out, fileio.OPENVINO_SCRATCH)
    (openvino / "model.bin").write_bytes(b"weights")
    fd, probe = tempfile.mkstemp(dir=out, prefix=fileio.WRITE_TEST)
    os.close(fd)
    ours = [p.name + "/" * p.is_dir() for p in sorted(out.iterdir())]  # with the int8 file's scratch file
    assert len(ours) == 9 and f"{staged.name}/" in ours and f"{openvino.name}/" in ours and os.path.basename(probe) \
        in ours and [n for n in ours if fileio.temp_name_of(n)] == [n for n in ours if n.startswith(".model.int8")]

    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes").write_text("a user's file")
    theirs = {".toolkit-openvino-notes": "folder", ".toolkit-openvino-notes/model.bin": b"mine",
              ".toolkit-triton-abcd_123": "-> ../theirs", ".toolkit-openvino-abcd_123": b"a file, not a folder",
              ".toolkit-write-test-abcd_123": "folder", ".toolkit-write-test-abcd_12": b"mine",
              ".toolkit-int8-123-raw.onnx": "-> ../theirs/notes", ".toolkit-int8-123-other.onnx": b"mine",
              ".toolkit-int8-notes-raw.onnx": b"mine", ".toolkit-int8-123-raw": b"mine", ".int8-123-raw.onnx": b"mine"}
    (out / ".toolkit-openvino-notes").mkdir()
    (out / ".toolkit-write-test-abcd_123").mkdir()
    (out / ".toolkit-triton-abcd_123").symlink_to("../theirs")
    (out / ".toolkit-int8-123-raw.onnx").symlink_to("../theirs/notes")
    for name, data in theirs.items():
        if isinstance(data, bytes):
            (out / name).write_bytes(data)

    result = run_cli(*args, "--format", "onnx")
    assert result.exit_code == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("removed ")]
    assert said == [f"removed {', '.join(ours)} from {out}/, the scratch files of an export that was stopped before "
                    "it was done"], result.stderr
    done = _snapshot(out)
    assert {name: data for name, data in done.items() if name.startswith(".")} == theirs
    assert {name for name in done if not name.startswith(".")} == {"manifest.json", "model.onnx", "golden.npy"}
    assert (tmp_path / "theirs" / "notes").read_text() == "a user's file"


def _folder_with_user_files(tmp_path):
    """An export folder (a manifest, an ONNX file) with a user's notes.txt and sub/important.txt beside them."""
    out = tmp_path / "exp"
    out.mkdir()
    (out / "manifest.json").write_text('{"artifacts": []}\n')
    (out / "model.onnx").write_bytes(b"the earlier model")
    (out / "notes.txt").write_text("user notes ORIGINAL")
    (out / "sub").mkdir()
    (out / "sub" / "important.txt").write_text("keep")
    return out


def test_recover_leaves_alone_a_folder_no_commit_set_aside(tmp_path):
    """A user's folder whose name merely looks like a commit's set-aside folder is left as it is: its files are not
    moved over the user's, nor the user's folders removed; one line says so for a name the toolkit would make."""
    import hashlib
    import json

    from toolkit import fileio

    out = _folder_with_user_files(tmp_path)
    current = hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()[:16]
    note = json.dumps({"written": []})
    folders = {  # name -> {name in it: content}
        ".export-old-mynotes": {"notes.txt": "user notes v2", "sub/other.txt": "other"},  # as the review made it
        f"{fileio.ASIDE_SCRATCH}{'0' * 16}-abcd_123": {"notes.txt": "user notes v2"},  # no note
        f"{fileio.ASIDE_SCRATCH}{current}-abcd_123": {"model.onnx": "mine"},  # the "commit was done" tag, no note
        f"{fileio.ASIDE_SCRATCH}{'1' * 16}-abcd_123": {".written": note, "notes.txt": "v2"},  # a name no export writes
        f"{fileio.ASIDE_SCRATCH}{'2' * 16}-abcd_123": {".written": note, "sub/other.txt": "other"},
        f"{fileio.ASIDE_SCRATCH}{'3' * 16}-abcd_123": {".written": '[["model.ts.pt", "x", 1]]', "model.onnx": "v2"},
        f"{fileio.ASIDE_SCRATCH}mynotes": {".written": note, "model.onnx": "v2"},  # not a tag and a random part
    }
    for folder, files in folders.items():
        for name, text in files.items():
            (out / folder / name).parent.mkdir(parents=True, exist_ok=True)
            (out / folder / name).write_text(text)
    before, lines = _snapshot(out), []
    Staging(out).recover(lines.append)
    assert _snapshot(out) == before
    assert lines == [f"left {out / name}/ alone: it is not a folder an export sets its earlier files aside in (its "
                     "name, its note or a name in it is not one an export makes)"
                     for name in sorted(folders) if name.startswith(fileio.ASIDE_SCRATCH)], lines


def test_recover_removes_only_scratch_names_that_carry_the_toolkit_mark(tmp_path):
    """A user's hidden files named like `<name>.<8 letters>.tmp` are theirs: only the names the toolkit makes,
    which carry its mark, are removed as a stopped export's scratch files."""
    from toolkit import fileio

    out = _folder_with_user_files(tmp_path)
    for name in (".manifest.json.original.tmp", ".model.onnx.previous.tmp", ".model.xml.backup_1.tmp.bin",
                 ".triton-abcd_123", ".model.onnx.abcd_123.tmp", ".int8-123-raw.onnx"):
        (out / name).write_text("the user's")
    before, lines = _snapshot(out), []
    ours = [fileio.temp_beside(out / "model.onnx"), fileio.temp_beside(out / "manifest.json"),
            fileio.scratch_folder(out, fileio.TRITON_SCRATCH), fileio.scratch_folder(out, fileio.OPENVINO_SCRATCH)]
    ours.append(out / f"{fileio.temp_beside(out / 'model.xml').name}.bin")  # OpenVINO's weights beside its graph
    ours[-1].write_bytes(b"weights")
    assert all(fileio.SCRATCH_MARK in p.name for p in ours)
    Staging(out).recover(lines.append)
    assert _snapshot(out) == before
    assert len(lines) == 1 and lines[0].startswith("removed ") and ".model.xml." in lines[0], lines


def test_recover_removes_only_the_very_files_a_stopped_commit_put_in_place(tmp_path, monkeypatch):
    """A commit killed before the manifest's rename left new files in place; before the next export, the user wrote
    their own content into one (the same inode) and a file into the new triton/ folder. Recovery removes a new file
    only while it holds the content the commit noted (its SHA-256), a folder only while its tree is the one noted."""

    from toolkit import fileio

    out = _folder_with_user_files(tmp_path)
    before = _snapshot(out)
    stage = Staging(out)
    for name, data in (("model.onnx", b"the new model"), ("model.ts.pt", b"the new torchscript"),
                       ("model.app.onnx", b"the new app model"), ("manifest.json", b'{"artifacts": [1]}\n')):
        stage.scratch(name).write_bytes(data)
    triton = fileio.scratch_folder(out, fileio.TRITON_SCRATCH)
    (triton / "m" / "1").mkdir(parents=True)
    (triton / "m" / "1" / "model.onnx").write_bytes(b"the new model")
    stage.add_folder("triton", triton)
    _commit_cut_at_manifest(stage, monkeypatch)
    assert (out / "model.ts.pt").read_bytes() == b"the new torchscript"
    with open(out / "model.ts.pt", "r+b") as f:  # the user's own content, written into the same file
        f.write(b"my own torchscript!")
    (out / "triton" / "mine.txt").write_text("the user's")
    lines: list[str] = []
    Staging(out).recover(lines.append)
    assert _snapshot(out) == {**before, "model.ts.pt": b"my own torchscript!", "triton": "folder",
                              "triton/m": "folder", "triton/m/1": "folder", "triton/m/1/model.onnx": b"the new model",
                              "triton/mine.txt": b"the user's"}
    assert lines[1] == f"removed model.app.onnx from {out}/, which an export that was stopped part-way had put in " \
        "place", lines


def test_recover_puts_back_only_over_the_very_files_a_stopped_commit_put_in_place(tmp_path, monkeypatch):
    """A commit killed before the manifest's rename set the earlier files aside; before the next export, the user
    wrote their own model.ts.pt in place of the new one, a file into the new triton/ folder and a model.int8.onnx
    where the commit had removed the earlier one. Recovery puts an earlier file back only where nothing is or over
    the new file noted; the user's entries stay, their earlier files stay set aside (one line says where), and no
    later export settles that folder again."""

    from toolkit import fileio

    out = _folder_with_user_files(tmp_path)
    for name, data in (("model.ts.pt", b"the earlier torchscript"), ("golden.npy", b"the earlier golden"),
                       ("model.int8.onnx", b"the earlier int8 model"), ("triton/m/1/model.onnx", b"the earlier")):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    before = _snapshot(out)
    stage = Staging(out)
    for name, data in (("model.onnx", b"the new model"), ("model.ts.pt", b"the new torchscript"),
                       ("golden.npy", b"the new golden"), ("manifest.json", b'{"artifacts": [1]}\n')):
        stage.scratch(name).write_bytes(data)
    triton = fileio.scratch_folder(out, fileio.TRITON_SCRATCH)
    (triton / "m" / "1").mkdir(parents=True)
    (triton / "m" / "1" / "model.onnx").write_bytes(b"the new model")
    stage.add_folder("triton", triton)
    stage.remove("model.int8.onnx", "stale")
    _commit_cut_at_manifest(stage, monkeypatch)
    [aside] = [name for name in os.listdir(out) if name.startswith(ASIDE_PREFIX)]
    assert (out / "model.ts.pt").read_bytes() == b"the new torchscript" and not (out / "model.int8.onnx").exists()
    (out / "model.ts.pt").unlink()
    (out / "model.ts.pt").write_bytes(b"my own torchscript")  # the user's, of a name the commit put a file at
    (out / "model.int8.onnx").write_bytes(b"my own int8 model")  # the user's, where the commit put nothing
    (out / "triton" / "mine.txt").write_text("the user's")
    (out / "golden.npy").unlink()  # nothing there: the earlier file goes back
    theirs = {"model.ts.pt": b"my own torchscript", "model.int8.onnx": b"my own int8 model", "triton": "folder",
              "triton/m": "folder", "triton/m/1": "folder", "triton/m/1/model.onnx": b"the new model",
              "triton/mine.txt": b"the user's"}
    kept = {f"{aside}/{name}": data for name, data in before.items()
            if name.split("/")[0] in ("model.ts.pt", "model.int8.onnx", "triton")}
    lines: list[str] = []
    Staging(out).recover(lines.append)
    assert _snapshot(out) == {**before, **theirs, f"{aside}": "folder", **kept}, lines
    assert lines == [f"put back golden.npy, model.onnx from {out / aside}/, where an export that was stopped "
                     "part-way had set the earlier export's files aside",
                     *(f"left {out / name} as it is, not what an export that was stopped part-way put there; the "
                       f"earlier export's {name} stays in {out / aside}/"
                       for name in ("model.int8.onnx", "model.ts.pt", "triton"))], lines
    settled, lines = _snapshot(out), []
    Staging(out).recover(lines.append)  # a later export: the folder, now without its note, is left alone
    assert _snapshot(out) == settled
    assert lines == [f"left {out / aside}/ alone: it is not a folder an export sets its earlier files aside in (its "
                     "name, its note or a name in it is not one an export makes)"], lines


def _commit_cut_at_manifest(stage: Staging, monkeypatch) -> None:
    """`stage.commit` stopped as a killed process would be, at the manifest's rename: nothing after it runs, and
    nothing is undone."""
    import pytest

    from toolkit import staging

    real_replace = os.replace

    def replace(src, dst, *rest, **kwargs):
        if os.path.basename(dst) == "manifest.json" and ASIDE_PREFIX not in str(dst):
            raise KeyboardInterrupt  # stands in for the process killed here
        return real_replace(src, dst, *rest, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        m.setattr(staging, "_undo", lambda *a: None)
        with pytest.raises(KeyboardInterrupt):
            stage.commit(lambda line: None)
