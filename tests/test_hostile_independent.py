"""Hostile files and values, built independently of test_hostile.py: each case plants one thing in a private copy
of the real export (or a hostile image or option), runs the real CLI in a subprocess, and checks the README's
promise: a documented exit code, one `error:` line, no traceback, no hang, nothing outside the folder touched.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "toolkit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def _snapshot(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p), p.lstat().st_mtime_ns, p.lstat().st_size) for p in folder.rglob("*"))


def _check(result: subprocess.CompletedProcess, code: int) -> str:
    both = result.stdout + result.stderr
    assert "Traceback" not in both, both
    assert result.returncode == code, both
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if code == 0:
        assert not errors, result.stderr
        return ""
    assert len(errors) == 1 and not any(line.startswith("internal error") for line in lines), result.stderr
    assert len(lines) == 1, result.stderr  # nothing else on stderr: no warnings, no log lines
    return errors[0]


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sentinel")
    (folder / "secret.txt").write_text("untouched\n")
    return folder


@pytest.fixture
def work(tmp_path, exported, trained, sentinel):
    """A private copy of the export (with its checkpoint beside it); checks the sentinel after the case."""
    folder = tmp_path / "exp"
    shutil.copytree(exported, folder)
    shutil.copy(trained / "checkpoint.pt", folder / "checkpoint.pt")
    before = _snapshot(sentinel)
    yield folder
    assert _snapshot(sentinel) == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def _digit_png(path: Path, seed: int = 0) -> Path:
    Image.fromarray((np.random.default_rng(seed).random((28, 28)) * 255).astype("uint8")).save(path)
    return path


def _set(field, value, file="model.onnx"):
    def plant(m, d):
        next(a for a in m["artifacts"] if a["file"] == file)[field] = value
    return plant


def _replace(name, make):
    def plant(m, d):
        p = d / name
        p.unlink()
        make(p, d)
    return plant


# (id, how the manifest dict / folder is changed: returns replacement manifest text or None)
MANIFEST_CASES = [
    ("file-int", _set("file", 5)), ("file-dotdot", _set("file", "..")), ("file-trailing-slash", _set("file", "model.onnx/")),
    ("file-absolute", _set("file", "/etc/passwd")), ("file-nul", _set("file", "model\0.onnx")),
    ("file-empty", _set("file", "")), ("file-list", _set("file", ["model.onnx"])),
    ("sha-int", _set("sha256", 1)), ("sha-uppercase", lambda m, d: _set("sha256", m["artifacts"][0]["sha256"].upper(), m["artifacts"][0]["file"])(m, d)),
    # field types that used to pass the reader and crash a later stage with exit 3
    ("source-checkpoint-int", _set("source_checkpoint", 5)), ("size-text", _set("size_bytes", "x")),
    ("inputs-text", _set("inputs", "x", "model.fp16.onnx")), ("outputs-null", _set("outputs", None)),
    ("opset-text", _set("opset", "20")), ("settings-list", _set("settings", [1])),
    ("input-spec-garbage", _set("inputs", [{"name": 1}])), ("path-field", _set("path", "/etc/passwd")),
    ("extra-field", _set("evil", 1)), ("format-int", _set("format", 1)),
    ("artifacts-object", lambda m, d: m.update(artifacts={"a": 1})), ("top-level-list", lambda m, d: "[1, 2]"),
    ("deep-nesting", lambda m, d: "[" * 100_000 + "]" * 100_000), ("empty-manifest", lambda m, d: ""),
    ("utf8-bom", lambda m, d: "\ufeff" + json.dumps(m)), ("over-1mib", lambda m, d: " " * (2 << 20)),
    # the folder's files
    ("artifact-symlink-out", _replace("model.onnx", lambda p, d: os.symlink("/etc/hostname", p))),
    ("artifact-symlink-loop", _replace("model.onnx", lambda p, d: os.symlink(p.name, p))),
    ("artifact-sparse-8gib", lambda m, d: os.truncate(d / "model.app.onnx", 8 << 30)),
    ("artifact-truncated", lambda m, d: (d / "model.app.onnx").write_bytes((d / "model.app.onnx").read_bytes()[:999])),
    ("artifact-empty", lambda m, d: (d / "model.app.onnx").write_bytes(b"")),
    # a manifest.json that exists but is no regular file must not switch the SHA-256 check off
    ("manifest-fifo", _replace("manifest.json", lambda p, d: os.mkfifo(p))),
    ("manifest-folder", _replace("manifest.json", lambda p, d: p.mkdir())),
    ("manifest-symlink-loop", _replace("manifest.json", lambda p, d: os.symlink(p.name, p))),
    ("manifest-dev-zero", _replace("manifest.json", lambda p, d: os.symlink("/dev/zero", p))),
]


@pytest.mark.parametrize("plant", [c[1] for c in MANIFEST_CASES], ids=[c[0] for c in MANIFEST_CASES])
def test_predict_refuses_a_hostile_export_folder(work, tmp_path, plant):
    manifest = json.loads((work / "manifest.json").read_text())
    text = plant(manifest, work)
    if (work / "manifest.json").is_file() and not (work / "manifest.json").is_symlink():
        (work / "manifest.json").write_text(text if isinstance(text, str) else json.dumps(manifest))
    _check(_cli("predict", _digit_png(tmp_path / "d.png"), "--model", work / "model.app.onnx", cwd=tmp_path,
                timeout=30), 2)


def test_verify_does_not_hang_on_a_fifo_artifact(work, tmp_path, mnist_dir):
    (work / "model.onnx").unlink()
    os.mkfifo(work / "model.onnx")
    line = _check(_cli("verify", "--artifacts", work, "--format", "onnx", "--precision", "fp32",
                       "--data-dir", mnist_dir, cwd=tmp_path, timeout=60), 1)
    assert "not a regular file" in line


def test_export_refuses_a_kept_entry_with_garbage_fields(work, tmp_path, trained, mnist_dir):
    manifest = json.loads((work / "manifest.json").read_text())
    _set("inputs", "x", "model.fp16.onnx")(manifest, work)
    (work / "manifest.json").write_text(json.dumps(manifest))
    before = (work / "model.onnx").read_bytes()
    _check(_cli("export", "--checkpoint", trained / "checkpoint.pt", "--out", work, "--data-dir", mnist_dir,
                cwd=tmp_path, timeout=120), 2)
    assert (work / "model.onnx").read_bytes() == before


def _png_bomb(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + chunk(b"IEND", b""))
    return path


IMAGE_CASES = [
    ("bomb-100-megapixels", lambda p: _png_bomb(p.with_suffix(".png"), 10_000, 10_000)),  # also: no Pillow warning
    ("bomb-10-gigapixels", lambda p: _png_bomb(p.with_suffix(".png"), 100_000, 100_000)),
    ("truncated-png", lambda p: (p.with_suffix(".png").write_bytes(_digit_png(p.with_suffix(".x.png")).read_bytes()[:60]),
                                 p.with_suffix(".png"))[1]),
    ("text-as-png", lambda p: (p.with_suffix(".png").write_text("hello"), p.with_suffix(".png"))[1]),
    ("empty-png", lambda p: (p.with_suffix(".png").write_bytes(b""), p.with_suffix(".png"))[1]),
    ("eps-for-ghostscript", lambda p: (p.with_suffix(".eps").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n"),
                                       p.with_suffix(".eps"))[1]),
    ("fifo", lambda p: (os.mkfifo(p.with_suffix(".png")), p.with_suffix(".png"))[1]),
    ("dev-zero-link", lambda p: (os.symlink("/dev/zero", p.with_suffix(".png")), p.with_suffix(".png"))[1]),
    ("folder", lambda p: p.parent),
]


@pytest.mark.parametrize("make", [c[1] for c in IMAGE_CASES], ids=[c[0] for c in IMAGE_CASES])
def test_predict_refuses_a_hostile_image(exported, tmp_path, sentinel, make):
    before = _snapshot(sentinel)
    image = make(tmp_path / "img")
    _check(_cli("predict", image, "--model", exported / "model.app.onnx", cwd=tmp_path, timeout=30), 2)
    assert _snapshot(sentinel) == before


def test_a_16_bit_png_gives_the_same_digit_as_its_8_bit_twin(exported, tmp_path):
    eight = _digit_png(tmp_path / "eight.png", seed=3)
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(np.asarray(Image.open(eight)).astype(np.uint16) * 257).save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")
    result = _cli("predict", "--json", "-", eight, sixteen, "--model", exported / "model.app.onnx", cwd=tmp_path)
    _check(result, 0)
    a, b = json.loads(result.stdout)
    assert a["probabilities"] == b["probabilities"]


OPTION_CASES = [
    ("train-lr-nan", ["train", "--lr", "nan"]), ("train-lr-1e309", ["train", "--lr", "1e309"]),
    ("train-epochs-huge", ["train", "--epochs", "99999999999999999999"]), ("train-seed-negative", ["train", "--seed", "-1"]),
    ("train-batch-hex", ["train", "--batch-size", "0x10"]),
    ("export-opset-huge", ["export", "--opset", "99999999999999999999"]),
    ("export-calibration-negative", ["export", "--calibration-size", "-1", "--precision", "int8"]),
    ("export-triton-batch-zero", ["export", "--triton-max-batch-size", "0", "--format", "triton"]),
    ("verify-batch1-negative", ["verify", "--batch1-images", "-1"]),
    ("verify-tolerance-nan", ["verify", "--tolerance", "fp32.max_abs_diff=nan"]),
    ("verify-tolerance-inf", ["verify", "--tolerance", "fp16.min_agreement=inf"]),
    ("bench-seconds-minus-zero", ["bench", "--seconds", "-0"]), ("bench-seconds-1e309", ["bench", "--seconds", "1e309"]),
    ("bench-iterations-huge", ["bench", "--iterations", "99999999999999999999"]),
    ("bench-batch-zero", ["bench", "--batch-sizes", "1,0"]), ("bench-threads-negative", ["bench", "--threads", "-1"]),
    ("bench-concurrency-nan", ["bench", "--concurrency", "nan"]), ("bench-warmup-negative", ["bench", "--warmup", "-1"]),
    ("bench-rounds-zero", ["bench", "--rounds", "0"]),
    ("web-port-huge", ["web", "--port", "70000"]),
]


@pytest.mark.parametrize("args", [c[1] for c in OPTION_CASES], ids=[c[0] for c in OPTION_CASES])
def test_every_numeric_option_is_checked_before_work(work, tmp_path, mnist_dir, args):
    where = {"train": ["--out", tmp_path / "run", "--train-limit", "256", "--data-dir", mnist_dir],
             "export": ["--checkpoint", work / "checkpoint.pt", "--out", tmp_path / "out", "--data-dir", mnist_dir],
             "verify": ["--artifacts", work, "--data-dir", mnist_dir],
             "bench": ["--artifacts", work, "--data-dir", mnist_dir, "--runtime", "onnxruntime"],
             "web": ["--model", work / "model.app.onnx"]}[args[0]]
    _check(_cli(*args, *where, cwd=tmp_path, timeout=60), 2)
    assert not (tmp_path / "out").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()
