"""An export whose commit fails part-way: the folder holds nothing of it that no manifest lists, and the earlier
export still verifies, or verify refuses what changed."""

import errno
import json
import os

from tests.conftest import run_cli
from toolkit.artifacts import read_manifest


def _listed(out) -> set[str]:
    """Every name the manifest in `out` lists, itself included."""
    manifest = json.loads((out / "manifest.json").read_text())
    names = {file for a in read_manifest(out) for file in a.files} | {"manifest.json", manifest["golden"]["file"]}
    return names | ({manifest["triton"]["repository"]} if "triton" in manifest else set())


def _export_failing(monkeypatch, args, n: int, interrupt: bool) -> list[str]:
    """Export with `args`, the `n`-th rename failing (as Ctrl-C, with `interrupt`); the names renamed to."""
    real_replace, calls = os.replace, []

    def replace(src, dst, *rest, **kwargs):
        calls.append(os.path.basename(dst))
        if len(calls) == n:
            raise KeyboardInterrupt if interrupt else PermissionError(errno.EACCES, "Permission denied")
        return real_replace(src, dst, *rest, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        result = run_cli(*args)
    last = result.stderr.strip().splitlines()[-1]  # after the log of what was built
    if interrupt:
        assert result.exit_code == 130 and last.endswith("interrupted"), result.stderr
    else:
        assert result.exit_code == 2 and last.startswith("error: cannot write") and "Permission denied" in last
    assert "Traceback" not in result.stderr
    return calls


def _still_verifies_or_is_refused(out, mnist_dir) -> None:
    verified = run_cli("verify", "--artifacts", out, "--data-dir", mnist_dir, "--batch1-images", "0")
    if verified.exit_code != 0:  # a file rebuilt in place: the earlier manifest's hash refuses it
        assert "changed since export" in verified.stdout + verified.stderr, verified.stderr


def test_a_commit_that_fails_part_way_leaves_nothing_unlisted(tmp_path, short_run, mnist_dir, monkeypatch):
    out = tmp_path / "exp"
    args = ("export", "--checkpoint", short_run / "checkpoint.pt", "--out", out, "--data-dir", mnist_dir)
    assert run_cli(*args, "--format", "onnx").exit_code == 0
    manifest, listed = (out / "manifest.json").read_bytes(), _listed(out)
    assert listed == {"manifest.json", "model.onnx", "golden.npy"}
    # the renames of the commit of the Triton repository and the files it serves, in order
    renames = ["model.onnx", "model.app.onnx", "model.ts.pt", "golden.npy", "triton", "manifest.json"]
    for n in (3, 5, 6):  # an unlisted new file in place (on Ctrl-C), then the Triton repository, then the manifest
        calls = _export_failing(monkeypatch, (*args, "--format", "onnx,triton"), n, interrupt=n == 3)
        assert calls[:n] == renames[:n]
        assert (out / "manifest.json").read_bytes() == manifest
        assert {p.name for p in out.iterdir()} == listed, n  # no new file but model.onnx, no hidden scratch file
    _still_verifies_or_is_refused(out, mnist_dir)  # the listed names hold the earlier bytes or are refused by hash

    # nothing left in the way: the next export needs no --overwrite
    assert run_cli(*args, "--format", "onnx,triton").exit_code == 0
    manifest, listed = (out / "manifest.json").read_bytes(), _listed(out)
    assert listed == {p.name for p in out.iterdir()} == set(renames)
    # with a Triton repository in place: it goes aside, the new one comes in (failing: the earlier one is put back),
    # then the manifest
    renames[4:5] = ["triton", "triton"]
    for n in (6, 7):
        repository = (out / "triton").stat().st_ino
        calls = _export_failing(monkeypatch, (*args, "--format", "onnx,triton"), n, interrupt=n == 6)
        assert calls[:n] == renames[:n]
        assert (out / "manifest.json").read_bytes() == manifest
        if n == 6:  # the earlier repository stays
            assert {p.name for p in out.iterdir()} == listed and (out / "triton").stat().st_ino == repository
        else:  # the new one goes again: the manifest there describes another
            assert {p.name for p in out.iterdir()} == listed - {"triton"}
    _still_verifies_or_is_refused(out, mnist_dir)
    assert run_cli(*args, "--format", "onnx,triton").exit_code == 0
    assert _listed(out) == {p.name for p in out.iterdir()} == listed
    assert run_cli("verify", "--artifacts", out, "--data-dir", mnist_dir).exit_code == 0
