"""Hostile input, tried on every command the way an attacker or an unlucky user would.

Each case of the table prepares a working folder (planted manifests, tampered artifacts, poisoned checkpoints,
broken data files, absurd numbers), runs the real CLI entry point, and checks three things: the exit code,
one `error:` line with no traceback, and that no file outside the working folder changed (a sentinel folder
beside it, the shared exported folder, the training run and MNIST are all fingerprinted before and after).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import torch

from tests.conftest import PROGRESS_LINE, Result, run_on_a_small_disk
from toolkit.checkpoint import load_checkpoint, save_checkpoint
from toolkit.fileio import file_digest


def run_main(*args: str | os.PathLike) -> Result:
    """Run `toolkit ARGS` through the real entry point (cli.main, as the console script does), in-process."""
    from toolkit import cli

    out, err = io.StringIO(), io.StringIO()
    previous = signal.getsignal(signal.SIGTERM)
    with mock.patch.object(sys, "argv", ["toolkit", *map(str, args)]), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            signal.signal(signal.SIGTERM, previous)
    return Result(code, out.getvalue(), err.getvalue())


def fingerprint(*folders: Path) -> dict[str, str]:
    """Every file and link under `folders`: content hash (size and mtime for big data files)."""
    state = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_symlink():
                state[str(p)] = f"link->{os.readlink(p)}"
            elif p.is_file():
                st = p.stat()
                state[str(p)] = f"{st.st_size}:{st.st_mtime_ns}" if st.st_size > 4 << 20 else file_digest(p)
            else:
                state[str(p)] = "dir"
    return state


@dataclass
class Ctx:
    """What a case may use: its working folder (cwd), a sentinel folder outside it, and the real inputs."""

    work: Path
    outside: Path
    exported: Path  # the test run's real export (read-only here: copy it to damage it)
    checkpoint: Path  # the test run's real checkpoint (read-only here)
    mnist: Path

    def export_copy(self) -> Path:
        copy = self.work / "exported"
        if not copy.exists():
            shutil.copytree(self.exported, copy)
        return copy

    def manifest(self, folder: Path, mutate: Callable[[dict], None]) -> Path:
        path = folder / "manifest.json"
        doc = json.loads(path.read_text())
        mutate(doc)
        path.write_text(json.dumps(doc))
        return folder

    def digit(self) -> Path:
        """A real test digit as a PNG in the working folder."""
        from PIL import Image

        from toolkit.data import load_split

        path = self.work / "digit.png"
        Image.fromarray(load_split(self.mnist, "test")[0][0]).save(path)
        return path

    def data_copy(self, damage: Callable[[Path], None]) -> Path:
        """A data folder of links to the real MNIST files, one of which `damage` replaces."""
        raw = self.work / "data" / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for f in (self.mnist / "MNIST" / "raw").iterdir():
            (raw / f.name).symlink_to(f.resolve())
        damage(raw)
        return self.work / "data"

    def checkpoint_with(self, mutate: Callable[[dict], None], name: str = "bad.pt") -> Path:
        ckpt = load_checkpoint(self.checkpoint)
        mutate(ckpt)
        path = self.work / name
        save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
        return path


class _Exploit:
    """Unpickling this runs os.system: the payload a malicious checkpoint or pickle would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _pickle_bomb_checkpoint(c: Ctx) -> Path:
    path = c.work / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "toolkit-checkpoint", "x": _Exploit(c.outside / "pwned")}))
    return path


def _replace(raw: Path, name: str, data: bytes) -> None:
    for suffix in ("", ".gz"):
        (raw / f"{name}{suffix}").unlink(missing_ok=True)
    (raw / name).write_bytes(data)


def _gzip_bomb(raw: Path) -> None:
    (raw / "t10k-images-idx3-ubyte").unlink(missing_ok=True)
    (raw / "t10k-images-idx3-ubyte.gz").unlink(missing_ok=True)
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb", compresslevel=9) as f:
        block = bytes(1 << 20)
        for _ in range(64):  # 64 MiB of zeros in about 64 KiB: more than the 7.8 MB file can be
            f.write(block)


def _dir_in_place(raw: Path) -> None:
    (raw / "t10k-labels-idx1-ubyte").unlink(missing_ok=True)
    (raw / "t10k-labels-idx1-ubyte.gz").unlink(missing_ok=True)
    (raw / "t10k-labels-idx1-ubyte").mkdir()


def _deep_json(c: Ctx) -> Path:
    folder = c.export_copy()
    (folder / "manifest.json").write_text('{"artifacts": ' + "[" * 100000 + "]" * 100000 + "}")
    return folder


def _link_out(c: Ctx) -> Path:
    folder = c.export_copy()
    (folder / "model.onnx").unlink()
    (folder / "model.onnx").symlink_to(c.outside / "victim.txt")
    return folder


def _tamper(c: Ctx, name: str) -> Path:
    folder = c.export_copy()
    data = bytearray((folder / name).read_bytes())
    data[-1] ^= 0xFF  # one byte: the file still parses, but it is not what was exported
    (folder / name).write_bytes(bytes(data))
    return folder


def _other_torchscript(c: Ctx) -> Path:
    """A valid TorchScript file of a different model in place of model.ts.pt: code the manifest never vouched for."""
    folder = c.export_copy()

    class Other(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 10)

    torch.jit.save(torch.jit.script(Other()), str(folder / "model.ts.pt"))
    return folder


E = "exported"  # the working folder's export copy, after a case has made it

# (case id, setup(ctx) -> argv, expected exit code, a fragment the error line must contain)
CASES: list[tuple[str, Callable[[Ctx], list], int, str]] = [
    # --- data: files under the data folder are input too
    ("data-dir-is-a-file", lambda c: (c.work / "f").write_text("x") and
     ["data", "--data-dir", c.work / "f"], 2, "/f is a file, not a folder"),
    ("train-gzip-bomb", lambda c: ["train", "--epochs", "1", "--train-limit", "64",
                                   "--data-dir", c.data_copy(_gzip_bomb), "--out", "runs/x"], 2, "t10k-images"),
    ("train-data-file-is-a-folder", lambda c: ["train", "--epochs", "1", "--data-dir", c.data_copy(_dir_in_place),
                                               "--out", "runs/x"], 2, "t10k-labels"),
    ("train-truncated-images", lambda c: ["train", "--epochs", "1", "--data-dir", c.data_copy(
        lambda raw: _replace(raw, "t10k-images-idx3-ubyte", b"\0\0\x08\x03" + bytes(100))), "--out", "runs/x"],
     2, "t10k-images"),
    ("verify-corrupt-labels", lambda c: ["verify", "--artifacts", c.exported, "--data-dir", c.data_copy(
        lambda raw: _replace(raw, "t10k-labels-idx1-ubyte", os.urandom(10008)))], 2, "t10k-labels"),
    ("train-data-missing", lambda c: ["train", "--data-dir", c.work / "nothing", "--out", "runs/x"], 2, "missing"),
    # --- train: every number finite and in range, checkpoints are input
    ("train-lr-nan", lambda c: ["train", "--lr", "nan", "--out", "runs/x"], 2, "lr"),
    ("train-lr-inf", lambda c: ["train", "--lr", "inf", "--out", "runs/x"], 2, "lr"),
    ("train-lr-negative", lambda c: ["train", "--lr", "-1", "--out", "runs/x"], 2, "lr"),
    ("train-epochs-zero", lambda c: ["train", "--epochs", "0", "--out", "runs/x"], 2, "epochs"),
    ("train-epochs-huge", lambda c: ["train", "--epochs", "100000000", "--out", "runs/x"], 2, "epochs"),
    ("train-batch-huge", lambda c: ["train", "--batch-size", "1000000000", "--out", "runs/x"], 2, "batch-size"),
    ("train-seed-negative", lambda c: ["train", "--seed", "-1", "--out", "runs/x"], 2, "seed"),
    ("train-limit-zero", lambda c: ["train", "--train-limit", "0", "--out", "runs/x"], 2, "train-limit"),
    ("train-unknown-device", lambda c: ["train", "--device", "tpu", "--out", "runs/x"], 2, "device"),
    ("train-out-is-a-file", lambda c: (c.work / "f").write_text("x") and
     ["train", "--epochs", "1", "--out", c.work / "f", "--data-dir", c.mnist], 2, "run folder"),
    ("resume-unknown-setting", lambda c: (c.work / "runs/r").mkdir(parents=True) or shutil.move(
        c.checkpoint_with(lambda k: k["config"].update(surprise=1)), c.work / "runs/r/checkpoint.pt") and
     ["train", "--resume", "--out", "runs/r", "--data-dir", c.mnist], 2, "unknown key"),
    ("resume-wrong-type", lambda c: (c.work / "runs/r").mkdir(parents=True) or shutil.move(
        c.checkpoint_with(lambda k: k["config"].update(epochs="3")), c.work / "runs/r/checkpoint.pt") and
     ["train", "--resume", "--out", "runs/r", "--data-dir", c.mnist], 2, "epochs"),
    ("resume-nan-lr", lambda c: (c.work / "runs/r").mkdir(parents=True) or shutil.move(
        c.checkpoint_with(lambda k: k["config"].update(lr=float("nan"))), c.work / "runs/r/checkpoint.pt") and
     ["train", "--resume", "--out", "runs/r", "--data-dir", c.mnist], 2, "lr"),
    ("train-holdout-negative", lambda c: ["train", "--holdout", "-5", "--out", "runs/x"], 2, "holdout"),
    ("train-holdout-everything", lambda c: ["train", "--holdout", "30000", "--train-limit", "100", "--out", "runs/x",
                                            "--data-dir", c.mnist], 2, "holdout"),
    ("resume-nan-ema", lambda c: (c.work / "runs/r").mkdir(parents=True) or shutil.move(
        c.checkpoint_with(lambda k: k["config"].update(ema=float("nan"))), c.work / "runs/r/checkpoint.pt") and
     ["train", "--resume", "--out", "runs/r", "--data-dir", c.mnist], 2, "ema"),
    ("resume-unknown-optimizer", lambda c: (c.work / "runs/r").mkdir(parents=True) or shutil.move(
        c.checkpoint_with(lambda k: k["config"].update(optimizer="rmsprop")), c.work / "runs/r/checkpoint.pt") and
     ["train", "--resume", "--out", "runs/r", "--data-dir", c.mnist], 2, "optimizer"),
    ("resume-averaging-without-raw-weights", lambda c: (c.work / "runs/r").mkdir(parents=True) or shutil.move(
        c.checkpoint_with(lambda k: k["config"].update(ema=0.99, epochs=5)), c.work / "runs/r/checkpoint.pt") and
     ["train", "--resume", "--out", "runs/r", "--data-dir", c.mnist], 2, "cannot resume"),
    ("resume-malicious-pickle", lambda c: (c.work / "runs/r").mkdir(parents=True) or shutil.move(
        _pickle_bomb_checkpoint(c), c.work / "runs/r/checkpoint.pt") and
     ["train", "--resume", "--out", "runs/r", "--data-dir", c.mnist], 2, "not a readable checkpoint"),
    # --- export: a planted manifest is never followed; checkpoints never run code
    ("export-manifest-parent-path", lambda c: ["export", "--checkpoint", c.checkpoint, "--out", c.manifest(
        c.export_copy(), lambda d: d["artifacts"][0].update(file="../../outside/victim.txt"))], 2, "plain file name"),
    ("export-manifest-absolute-path", lambda c: ["export", "--checkpoint", c.checkpoint, "--out", c.manifest(
        c.export_copy(), lambda d: d["artifacts"][0].update(file=str(c.outside / "victim.txt")))], 2,
     "plain file name"),
    ("export-manifest-symlink-out", lambda c: ["export", "--checkpoint", c.checkpoint, "--out", _link_out(c)], 2,
     "symbolic link"),
    ("export-manifest-foreign-file", lambda c: (c.export_copy() / "notes.txt").write_text("mine") and [
        "export", "--overwrite", "--checkpoint", c.checkpoint_with(lambda k: k["metrics"].update(test_accuracy=1.0)),
        "--out",
        c.manifest(c.export_copy(), lambda d: d["artifacts"][0].update(file="notes.txt"))], 2,
     "not a file toolkit exports"),
    ("export-manifest-not-utf8", lambda c: (c.export_copy() / "manifest.json").write_bytes(b"\xff\xfe{}") and
     ["export", "--checkpoint", c.checkpoint, "--out", c.export_copy()], 2, "UTF-8"),
    ("export-manifest-unknown-precision", lambda c: ["export", "--checkpoint", c.checkpoint, "--out", c.manifest(
        c.export_copy(), lambda d: d["artifacts"][0].update(precision="fp8"))], 2, "unknown precision"),
    ("export-manifest-deep-json", lambda c: ["export", "--checkpoint", c.checkpoint, "--out", _deep_json(c)], 2,
     "not a toolkit manifest"),
    ("export-artifact-is-a-folder", lambda c: (c.work / "out" / "model.onnx").mkdir(parents=True) or
     ["export", "--checkpoint", c.checkpoint, "--out", c.work / "out"], 2, "model.onnx"),
    ("export-manifest-is-a-folder", lambda c: (c.work / "out" / "manifest.json").mkdir(parents=True) or
     ["export", "--checkpoint", c.checkpoint, "--out", c.work / "out"], 2, "manifest.json"),
    ("export-malicious-checkpoint", lambda c: ["export", "--checkpoint", _pickle_bomb_checkpoint(c)], 2,
     "not a readable checkpoint"),
    ("export-huge-model-args", lambda c: ["export", "--checkpoint", c.checkpoint_with(
        lambda k: k["model"].update(name="mlp", args={"hidden_sizes": [10 ** 9] * 50}))], 2, "hidden_sizes"),
    ("export-checkpoint-is-a-folder", lambda c: ["export", "--checkpoint", c.work], 2, "is a folder"),
    ("predict-model-is-a-folder", lambda c: ["predict", "--model", c.exported, c.digit()], 2, "is a folder"),
    ("compare-file-is-a-folder", lambda c: ["compare", c.exported / "model.onnx", c.work], 2, "is a folder"),
    ("export-opset-out-of-range", lambda c: ["export", "--checkpoint", c.checkpoint, "--opset", "999"], 2, "opset"),
    ("export-calibration-without-int8", lambda c: ["export", "--checkpoint", c.checkpoint, "--calibration-size",
                                                   "300"], 2, "add --precision int8"),
    ("export-triton-size-without-triton", lambda c: ["export", "--checkpoint", c.checkpoint,
                                                     "--triton-max-batch-size", "64"], 2, "add --format triton"),
    ("export-calibration-zero", lambda c: ["export", "--checkpoint", c.checkpoint, "--calibration-size", "0"], 2,
     "calibration-size"),
    ("export-calibration-huge", lambda c: ["export", "--checkpoint", c.checkpoint, "--calibration-size",
                                           "99999999999"], 2, "calibration-size"),
    ("export-unknown-format", lambda c: ["export", "--checkpoint", c.checkpoint, "--format", "coreml"], 2, "format"),
    # --- verify: nothing is loaded before its hash is checked; tolerances cannot be switched off
    ("verify-tampered-torchscript", lambda c: ["verify", "--artifacts", _other_torchscript(c), "--checkpoint",
                                               c.checkpoint, "--format",
                                               "torchscript", "--data-dir", c.mnist, "--batch1-images", "5"], 1,
     "changed since export"),
    ("verify-tampered-onnx", lambda c: ["verify", "--artifacts", _tamper(c, "model.onnx"), "--checkpoint",
                                        c.checkpoint, "--format", "onnx",
                                        "--precision", "fp32", "--data-dir", c.mnist, "--batch1-images", "5"], 1,
     "changed since export"),
    ("verify-manifest-points-outside", lambda c: ["verify", "--artifacts", c.manifest(
        c.export_copy(), lambda d: d["artifacts"][3].update(file="../../outside/evil.ts.pt")), "--data-dir", c.mnist],
     2, "plain file name"),
    ("verify-tolerance-nan", lambda c: ["verify", "--artifacts", c.exported, "--tolerance",
                                        "fp32.min_agreement=nan", "--data-dir", c.mnist], 2, "tolerance"),
    ("verify-tolerance-inf", lambda c: ["verify", "--artifacts", c.exported, "--tolerance",
                                        "fp32.max_abs_diff=inf", "--data-dir", c.mnist], 2, "tolerance"),
    ("verify-tolerance-negative", lambda c: ["verify", "--artifacts", c.exported, "--tolerance",
                                             "int8.max_accuracy_change=-1", "--data-dir", c.mnist], 2, "tolerance"),
    ("verify-agreement-above-one", lambda c: ["verify", "--artifacts", c.exported, "--tolerance",
                                              "fp16.min_agreement=1.5", "--data-dir", c.mnist], 2, "tolerance"),
    ("verify-batch1-negative", lambda c: ["verify", "--artifacts", c.exported, "--batch1-images", "-1",
                                          "--data-dir", c.mnist], 2, "batch1-images"),
    ("verify-unknown-provider", lambda c: ["verify", "--artifacts", c.exported, "--provider", "metal"], 2,
     "provider"),
    ("verify-json-is-a-folder", lambda c: (c.work / "j").mkdir() or [
        "verify", "--artifacts", c.exported, "--json", c.work / "j", "--data-dir", c.mnist], 2, "j"),
    ("verify-no-manifest", lambda c: ["verify", "--artifacts", c.work], 2, "manifest.json"),
    ("export-out-is-a-file", lambda c: (c.work / "f").write_text("x") and [
        "export", "--checkpoint", c.checkpoint, "--out", c.work / "f"], 2, "is a file, not a folder"),
    ("export-out-inside-a-file", lambda c: (c.work / "f").write_text("x") and [
        "export", "--checkpoint", c.checkpoint, "--out", c.work / "f" / "sub"], 2, "/f is a file, not a folder"),
    # an empty path would be the working folder: export would write into it, train would look for MNIST there
    ("export-out-empty", lambda c: ["export", "--checkpoint", c.checkpoint, "--out", ""], 2, "an empty path"),
    ("train-data-dir-empty", lambda c: ["train", "--epochs", "1", "--data-dir", "", "--out", "runs/x"], 2,
     "an empty path"),
    # an empty --model-code would mean a built-in model, an empty --model-args no arguments: each is refused
    *((f"export{opt}-empty", lambda c, opt=opt: ["export", "--checkpoint", c.checkpoint, opt, ""], 2,
       "an empty value") for opt in ("--model", "--model-code", "--model-args", "--input-shape")),
    ("bench-json-empty", lambda c: ["bench", "--artifacts", c.exported, "--json", ""], 2, "an empty path"),
    ("compare-file-empty", lambda c: ["compare", c.exported / "model.onnx", ""], 2, "an empty path"),
    ("bench-batch-sizes-empty", lambda c: ["bench", "--artifacts", c.exported, "--batch-sizes", ""], 2,
     "empty value"),
    ("verify-format-empty", lambda c: ["verify", "--artifacts", c.exported, "--format", ","], 2, "empty value"),
    ("bench-batch-sizes-hole", lambda c: ["bench", "--artifacts", c.exported, "--batch-sizes", "1,,2"], 2,
     "'1,,2' has an empty item"),
    ("verify-format-trailing-comma", lambda c: ["verify", "--artifacts", c.exported, "--format", "onnx,"], 2,
     "'onnx,' has an empty item"),
    ("verify-artifacts-is-a-file", lambda c: ["verify", "--artifacts", c.exported / "model.onnx"], 2,
     "give the export folder"),
    ("verify-unknown-format", lambda c: ["verify", "--artifacts", c.exported, "--format", "bogus"], 2,
     "unknown format 'bogus'"),
    ("bench-hint-without-openvino", lambda c: ["bench", "--artifacts", c.exported, "--runtime", "onnxruntime",
                                               "--hint", "latency"], 2, "leaves OpenVINO out"),
    ("verify-mode-without-openvino", lambda c: ["verify", "--artifacts", c.exported, "--runtime", "onnxruntime",
                                                "--mode", "bf16"], 2, "leaves OpenVINO out"),
    ("bench-unknown-precision", lambda c: ["bench", "--artifacts", c.exported, "--precision", "fp64"], 2,
     "unknown precision 'fp64'"),
    # --- results never replace what a command reads, nor a model file anywhere
    ("verify-json-over-manifest", lambda c: ["verify", "--artifacts", c.exported, "--json",
                                             c.exported / "manifest.json", "--data-dir", c.mnist], 2, "inputs"),
    ("verify-json-over-golden", lambda c: ["verify", "--artifacts", c.exported, "--json", c.exported / "golden.npy",
                                           "--data-dir", c.mnist], 2, "inputs"),
    ("verify-json-over-checkpoint", lambda c: ["verify", "--artifacts", c.exported, "--json", c.checkpoint,
                                               "--data-dir", c.mnist], 2, "inputs"),
    ("verify-json-over-a-model-elsewhere", lambda c: (c.work / "other.onnx").write_bytes(b"model") and [
        "verify", "--artifacts", c.exported, "--json", c.work / "other.onnx", "--data-dir", c.mnist], 2,
     "not a results file"),
    ("predict-json-over-a-renamed-model", lambda c: shutil.copy(c.exported / "model.onnx", c.work / "r.json") and [
        "predict", "--model", c.exported / "model.app.onnx", c.digit(), "--json", c.work / "r.json"], 2,
     "binary data"),
    ("bench-markdown-over-golden", lambda c: ["bench", "--artifacts", c.exported, "--markdown",
                                              c.exported / "golden.npy", "--data-dir", c.mnist], 2, "inputs"),
    ("bench-plot-over-checkpoint", lambda c: ["bench", "--artifacts", c.exported, "--plot", c.checkpoint,
                                              "--data-dir", c.mnist], 2, "inputs"),
    ("predict-json-over-model", lambda c: ["predict", "--model", c.exported / "model.app.onnx", c.digit(), "--json",
                                           c.exported / "model.app.onnx"], 2, "inputs"),
    ("predict-json-over-manifest", lambda c: ["predict", "--model", c.exported / "model.app.onnx", c.digit(),
                                              "--json", c.exported / "manifest.json"], 2, "inputs"),
    # a training run's files beside its checkpoint, Python code (a model's) and a Triton config are no results
    ("verify-json-over-a-runs-history", lambda c: ["verify", "--artifacts", c.exported, "--json",
                                                   c.checkpoint.parent / "history.json", "--data-dir", c.mnist], 2,
     "a training run's file"),
    ("compare-json-over-a-runs-history", lambda c: ["compare", c.exported / "model.onnx", c.exported / "model.onnx",
                                                    "--json", c.checkpoint.parent / "history.json", "--data-dir",
                                                    c.mnist], 2, "a training run's file"),
    ("bench-plot-over-a-runs-errors-png", lambda c: ["bench", "--artifacts", c.exported, "--plot",
                                                     c.checkpoint.parent / "errors.png", "--data-dir", c.mnist], 2,
     "a training run's file"),
    ("verify-json-over-python-code", lambda c: (c.work / "net.py").write_text("from torch import nn\n") and [
        "verify", "--artifacts", c.exported, "--json", c.work / "net.py", "--data-dir", c.mnist], 2, "Python code"),
    ("bench-json-over-a-triton-config", lambda c: (c.work / "config.pbtxt").write_text('name: "m"\n') and [
        "bench", "--artifacts", c.exported, "--json", c.work / "config.pbtxt", "--data-dir", c.mnist], 2,
     "export file"),
    # --- bench: numbers finite and bounded, outputs checked before the work, files checked before loading
    ("bench-seconds-nan", lambda c: ["bench", "--artifacts", c.exported, "--seconds", "nan"], 2, "seconds"),
    ("bench-seconds-inf", lambda c: ["bench", "--artifacts", c.exported, "--seconds", "inf"], 2, "seconds"),
    ("bench-batch-zero", lambda c: ["bench", "--artifacts", c.exported, "--batch-sizes", "0"], 2, "batch"),
    ("bench-batch-huge", lambda c: ["bench", "--artifacts", c.exported, "--batch-sizes", "1000000000000"], 2,
     "batch"),
    ("bench-iterations-negative", lambda c: ["bench", "--artifacts", c.exported, "--iterations", "-5"], 2,
     "iterations"),
    ("bench-threads-zero", lambda c: ["bench", "--artifacts", c.exported, "--threads", "0"], 2, "threads"),
    ("bench-markdown-is-a-folder", lambda c: (c.work / "m").mkdir() or [
        "bench", "--artifacts", c.exported, "--markdown", c.work / "m", "--data-dir", c.mnist], 2, "m"),
    ("bench-plot-is-a-folder", lambda c: (c.work / "p").mkdir() or [
        "bench", "--artifacts", c.exported, "--plot", c.work / "p", "--data-dir", c.mnist], 2, "p"),
    ("bench-tampered-onnx", lambda c: ["bench", "--artifacts", _tamper(c, "model.onnx"), "--checkpoint",
                                       c.checkpoint, "--format", "onnx",
                                       "--precision", "fp32", "--batch-sizes", "1", "--iterations", "3",
                                       "--data-dir", c.mnist], 2, "changed since export"),
    ("bench-tampered-torchscript", lambda c: ["bench", "--artifacts", _other_torchscript(c), "--checkpoint",
                                              c.checkpoint, "--format",
                                              "torchscript", "--batch-sizes", "1", "--iterations", "3",
                                              "--data-dir", c.mnist], 2, "changed since export"),
    # --- predict: file names are text, models are checked
    ("predict-markup-name", lambda c: ["predict", "--model", c.exported / "model.app.onnx", "missing[/].png"], 2,
     "missing[/].png"),
    ("predict-not-an-image", lambda c: (c.work / "x.png").write_text("text") and
     ["predict", "--model", c.exported / "model.app.onnx", c.work / "x.png"], 2, "x.png"),
    ("predict-tampered-model", lambda c: ["predict", "--model", _tamper(c, "model.app.onnx") / "model.app.onnx",
                                          c.digit()], 2, "changed since export"),
    ("predict-model-not-onnx", lambda c: (c.work / "m.onnx").write_bytes(os.urandom(300)) and
     ["predict", "--model", c.work / "m.onnx", c.digit()], 2, "m.onnx"),
]


@pytest.fixture
def ctx(tmp_path, monkeypatch, exported, trained, mnist_dir) -> Ctx:
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "victim.txt").write_text("must survive")
    (outside / "evil.ts.pt").write_bytes((exported / "model.ts.pt").read_bytes())
    monkeypatch.chdir(work)
    return Ctx(work, outside, exported, trained / "checkpoint.pt", mnist_dir)


@pytest.mark.parametrize("setup, code, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_cleanly(ctx, setup, code, fragment):
    watched = (ctx.outside, ctx.exported, ctx.checkpoint.parent, ctx.mnist)
    before = fingerprint(*watched)
    argv = setup(ctx)
    assert fingerprint(*watched) == before, "the case's own setup touched a watched folder"
    result = run_main(*argv)
    output = result.stdout + result.stderr
    assert result.exit_code == code, output
    assert "Traceback" not in output and "internal error" not in output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]
    assert fingerprint(*watched) == before, "a file outside the working folder changed"
    assert not (ctx.outside / "pwned").exists(), "a pickle ran code"


def test_the_corpus_covers_every_command():
    ids = [case_id for case_id, *_ in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    covered = {case_id.split("-")[0] for case_id, *_ in CASES}
    assert {"data", "train", "resume", "export", "verify", "bench", "predict"} <= covered


def test_file_names_are_text_not_markup(ctx):
    digit = ctx.digit()
    odd = [ctx.work / "d[x].png", ctx.work / "[bold]e[red].png"]
    for path in odd:
        shutil.copy(digit, path)
    result = run_main("predict", "--model", ctx.exported / "model.app.onnx", *odd)
    assert result.exit_code == 0, result.stderr
    assert "d[x].png" in result.stdout and "[bold]e[red].png" in result.stdout


def test_an_unexpected_error_is_one_line_with_its_own_exit_code(ctx, monkeypatch):
    import toolkit.export

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(toolkit.export, "plan", broken)
    result = run_main("export", "--checkpoint", ctx.checkpoint)
    assert result.exit_code == 3 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "internal error: ZeroDivisionError: a bug (run with --debug for the traceback, and please report it)"]
    with pytest.raises(ZeroDivisionError):  # --debug shows the real traceback
        run_main("--debug", "export", "--checkpoint", ctx.checkpoint)


def test_debug_adds_the_traceback_and_keeps_the_exit_code(ctx):
    plain = run_main("predict", "--model", ctx.work / "missing.onnx", ctx.digit())
    debug = run_main("--debug", "predict", "--model", ctx.work / "missing.onnx", ctx.digit())
    assert plain.exit_code == debug.exit_code == 2 and "Traceback" not in plain.stderr
    assert "Traceback" in debug.stderr and debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()


def _toolkit(*args, **kwargs):
    import subprocess

    return subprocess.Popen([sys.executable, "-m", "toolkit", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_concurrent_exports_into_one_folder_never_mix_models(ctx):
    other = ctx.checkpoint_with(lambda k: k["state_dict"]["fc_layer2.bias"].add_(0.5), name="other.pt")
    out = ctx.work / "shared-out"
    procs = [_toolkit("export", "--checkpoint", ckpt, "--out", out, "--format", "onnx,torchscript", "--overwrite")
             for ckpt in (ctx.checkpoint, other)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    import onnx

    from toolkit.artifacts import read_manifest

    artifacts = read_manifest(out)
    assert {a.file for a in artifacts} == {"model.onnx", "model.ts.pt"}
    sources = {a.source_sha256 for a in artifacts}
    assert len(sources) == 1 and sources <= {file_digest(ctx.checkpoint), file_digest(other)}
    for a in artifacts:
        assert file_digest(out / a.file) == a.sha256  # the files are the ones the manifest describes
    metadata = {p.key: p.value for p in onnx.load(out / "model.onnx").metadata_props}
    assert metadata["source_checkpoint_sha256"] in sources
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def _wait_for(path: Path, proc, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigterm_ends_an_export_like_ctrl_c(ctx):
    """(train's SIGTERM, which keeps the finished epoch, is test_train.py's killed run.)"""
    import time

    out = ctx.work / "out"
    proc = _toolkit("export", "--checkpoint", ctx.checkpoint, "--out", out, "--format", "all",
                    "--precision", "all", "--data-dir", ctx.mnist)
    _wait_for(out, proc)
    time.sleep(1.0)  # into the exporters
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "terminated"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "hidden temporary files left behind"


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_nothing(ctx):
    out = ctx.work / "run"  # writes beyond 1 MiB fail
    done = run_on_a_small_disk(1 << 20, "train", "--epochs", "1", "--train-limit", "2000", "--out", out,
                               "--data-dir", ctx.mnist)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if not PROGRESS_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write") and "checkpoint" in lines[0], done.stderr
    assert sorted(p.name for p in out.iterdir()) == []  # no checkpoint, no half-written temporary file


def test_control_characters_in_names_never_reach_the_terminal(ctx):
    result = run_main("predict", "--model", ctx.exported / "model.app.onnx", "ctl\x1b[31mred.png")
    assert result.exit_code == 2 and "\x1b" not in result.stderr
    assert "ctl\\x1b[31mred.png" in result.stderr  # shown as an escape, readable
