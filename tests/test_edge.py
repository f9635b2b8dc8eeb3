"""On the device: a fresh virtual environment with the inference-side install only (no torch importable), an
exported folder copied to a new place, and the commands a device runs there.

The environment is built once by `pip install <repo>` (no extras) and kept under .cache/, keyed by a hash of
pyproject.toml and the Python version, so later runs reuse it. The code it runs is this checkout's (on
PYTHONPATH, ahead of the installed copy); the packages are exactly what pip resolved for the base install.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, assert_one_line_error, run_cli
from toolkit.artifacts import GOLDEN_NAME
from toolkit.data import load_split
from toolkit.fileio import file_digest

TORCH_SIDE = ("torch", "torchvision", "onnx", "onnxscript", "onnxslim", "matplotlib")


def _build(venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True, timeout=300)
    done = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-compile",
                           "--disable-pip-version-check", REPO], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def device_python() -> Path:
    """The Python of a cached inference-only environment (built here on the first run)."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    cache = REPO / ".cache"
    cache.mkdir(exist_ok=True)
    venv = cache / f"edge-venv-py{platform.python_version()}-{key}"
    with open(cache / "edge-venv.lock", "w") as lock:  # two test runs at once build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            _build(venv)
            (venv / ".complete").write_text("built by tests/test_edge.py\n")
    return venv / "bin" / "python"


def device(python: Path, *args, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m <args>` in the device environment, with this checkout's code and nothing else on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([str(python), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


@pytest.fixture(scope="module")
def on_device(tmp_path_factory, exported) -> Path:
    """The session's exported folder, copied to a new place as a device would receive it."""
    folder = tmp_path_factory.mktemp("device") / "model"
    shutil.copytree(exported, folder)
    return folder


def test_the_device_environment_has_no_torch(device_python):
    probe = device(device_python, "-c", "import importlib.util, json; print(json.dumps("
                   f"[n for n in {TORCH_SIDE!r} if importlib.util.find_spec(n)]))")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"
    imported = device(device_python, "-c", "import torch")
    assert imported.returncode != 0 and "No module named 'torch'" in imported.stderr


def test_help_and_data_work_without_torch(device_python, mnist_dir):
    shown = device(device_python, "-m", "toolkit", "--help")
    assert shown.returncode == 0, shown.stderr
    assert all(c in shown.stdout for c in ("predict", "verify", "bench", "data"))
    checked = device(device_python, "-m", "toolkit", "data", "--data-dir", mnist_dir)  # verifies, fetches nothing
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.count("verified") >= 4


# with no runs/ too: "no run to export (or resume); train one" would send the user to a command that needs torch
@pytest.mark.parametrize("command", [["train"], ["train", "--resume"], ["export"],
                                     ["export", "--checkpoint", "missing.pt"]])
def test_a_command_that_needs_torch_names_the_extra(device_python, tmp_path, command):
    result = device(device_python, "-m", "toolkit", *command, cwd=tmp_path)
    line = assert_one_line_error(result, 2)
    assert line == f"error: toolkit {command[0]} needs torch, which is not installed; pip install 'toolkit[train]'"
    assert not list(tmp_path.iterdir())  # nothing written


# A runtime outside the base install is named with the extra that brings it, like torch above. The runtime is
# needed to read a .tflite or .pte at all, so a file with nothing but its flatbuffer identifier stands in for one.
@pytest.mark.parametrize("command, runtime", [
    (["predict", "--model", "{folder}/model.xml", "{png}"], "openvino"),
    (["compare", "{folder}/model.onnx", "{folder}/model.xml"], "openvino"),
    (["predict", "--model", "{tmp}/model.tflite", "{png}"], "litert"),
    (["compare", "{tmp}/model.tflite", "{folder}/model.onnx"], "litert"),
    (["compare", "{folder}/model.onnx", "{tmp}/model.pte"], "executorch"),
])
def test_a_file_whose_runtime_is_not_installed_names_the_extra(device_python, on_device, mnist_dir, tmp_path, png,
                                                               command, runtime):
    for name, identifier in (("model.tflite", b"TFL3"), ("model.pte", b"ET12")):
        (tmp_path / name).write_bytes(bytes(4) + identifier + bytes(24))
    args = [a.format(folder=on_device, png=png, tmp=tmp_path) for a in command]
    if args[0] == "compare":
        args += ["--limit", "10", "--data-dir", mnist_dir]
    result = device(device_python, "-m", "toolkit", *args)
    line = assert_one_line_error(result, 2)
    extra = {"openvino": "runtimes"}.get(runtime, runtime)  # the rows of toolkit.runners.RUNTIMES
    assert line == (f"error: toolkit {args[0]} needs runtime {runtime}, which is not installed; "
                    f"pip install 'toolkit[{extra}]'")


@pytest.mark.parametrize("name, identifier, runtime", [("model.tflite", b"TFL3", "litert"),
                                                       ("model.pte", b"ET12", "executorch")])
def test_bench_of_a_file_whose_runtime_is_not_installed_names_the_extra(device_python, tmp_path, name, identifier,
                                                                        runtime):
    (tmp_path / name).write_bytes(bytes(4) + identifier + bytes(24))  # as above: which runtime opens it is all
    result = device(device_python, "-m", "toolkit", "bench", tmp_path / name, "--data-dir", tmp_path / "none")
    assert assert_one_line_error(result, 2) == (
        f"error: {tmp_path / name} opens in {runtime}, none of them selected (--runtime) and installed here; not "
        f"installed: {runtime} (pip install 'toolkit[{runtime}]')")


def test_predict_on_the_device_agrees_with_the_golden_outputs(device_python, on_device, mnist_dir, tmp_path):
    pixels, labels = load_split(mnist_dir, "test")
    pngs = []
    for i in range(20):
        pngs.append(tmp_path / f"digit{i:02d}.png")
        Image.fromarray(pixels[i]).save(pngs[-1])
    result = device(device_python, "-m", "toolkit", "predict", "--json", "-", "--model", on_device / "model.app.onnx",
                    *pngs)
    assert result.returncode == 0, result.stderr
    digits = [p["digit"] for p in json.loads(result.stdout)]
    golden = np.load(on_device / GOLDEN_NAME, allow_pickle=False)
    assert digits == golden[:20].argmax(1).tolist()  # what PyTorch said for these images on the training machine
    assert sum(d == y for d, y in zip(digits, labels[:20])) >= 18


def test_golden_outputs_load_on_the_device_and_a_changed_file_is_refused(device_python, on_device, tmp_path):
    script = ("import sys; from toolkit.golden import load_reference; a, e = load_reference(sys.argv[1]); "
              "print(a.shape, a.dtype, e.source_sha256, 'torch' in sys.modules)")
    loaded = device(device_python, "-c", script, on_device)
    assert loaded.returncode == 0, loaded.stderr
    shape, dtype, source, torch_loaded = loaded.stdout.rsplit(" ", 3)
    assert (shape, dtype, torch_loaded.strip()) == ("(10000, 10)", "float32", "False")

    altered = tmp_path / "altered"
    shutil.copytree(on_device, altered)
    array = np.load(altered / GOLDEN_NAME, allow_pickle=False)
    array[0, 0] -= 1e-3
    buf = io.BytesIO()
    np.save(buf, array)
    (altered / GOLDEN_NAME).write_bytes(buf.getvalue())
    refused = device(device_python, "-c", script, altered)
    assert refused.returncode != 0
    assert "golden.npy changed since export" in refused.stderr.strip().splitlines()[-1]


def test_verify_on_the_device_checks_every_onnx_artifact_against_the_golden_outputs(device_python, on_device,
                                                                                   mnist_dir, tmp_path):
    result = device(device_python, "-m", "toolkit", "verify", "--artifacts", on_device, "--format",
                    "onnx,onnx-app,torchscript,pt2", "--data-dir", mnist_dir, "--json", tmp_path / "verify.json",
                    timeout=600)
    assert result.returncode == 0, result.stderr
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.app.onnx"):
        assert name in result.stdout
    assert GOLDEN_NAME in result.stdout  # it says which reference it used
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["passed"] and report["reference"].startswith(f"{GOLDEN_NAME} sha256=")
    assert {r["artifact"] for r in report["results"]} == {"model.onnx", "model.fp16.onnx", "model.int8.onnx",
                                                         "model.app.onnx"}
    # no torch: the TorchScript and .pt2 files are left out with one note, not failed, naming the extra that brings
    # torch; the other runtimes missing here would run none of these files, so they go unmentioned
    missing = "not installed (pip install 'toolkit[train]')"
    assert report["skipped"] == {"torchscript": missing, "torch-export": missing}
    assert report["unverified"] == {"torchscript": ["model.ts.pt"], "torch-export": ["model.pt2"]}
    notes = [line for line in result.stdout.splitlines() if line.startswith("skipped")]
    assert notes == [f"skipped runtimes torchscript, torch-export: {missing}; not verified: model.ts.pt, model.pt2"]


def test_verify_on_the_device_refuses_an_altered_golden_file(device_python, on_device, mnist_dir, tmp_path):
    altered = tmp_path / "altered"
    shutil.copytree(on_device, altered)
    data = bytearray((altered / GOLDEN_NAME).read_bytes())
    data[-1] ^= 0x01  # one bit of the last log-probability
    (altered / GOLDEN_NAME).write_bytes(bytes(data))
    result = device(device_python, "-m", "toolkit", "verify", "--artifacts", altered, "--format", "onnx",
                    "--data-dir", mnist_dir)
    line = assert_one_line_error(result, 2)
    assert "golden.npy changed since export" in line


def test_torchscript_alone_on_the_device_is_a_clear_error(device_python, on_device, mnist_dir):
    result = device(device_python, "-m", "toolkit", "verify", "--artifacts", on_device, "--format", "torchscript",
                    "--data-dir", mnist_dir)
    line = assert_one_line_error(result, 2)
    assert line == (f"error: nothing in {on_device}/ can be verified here: model.ts.pt needs runtime torchscript, "
                    "not installed (pip install 'toolkit[train]')")


def test_bench_on_the_device(device_python, on_device, mnist_dir, tmp_path):
    result = device(device_python, "-m", "toolkit", "bench", "--artifacts", on_device, "--format", "onnx",
                    "--precision", "fp32", "--batch-sizes", "1,8", "--iterations", "5", "--warmup", "1",
                    "--rounds", "1", "--no-matmul-peak", "--json", tmp_path / "bench.json", "--data-dir", mnist_dir)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert {(p["runtime"], p["format"], p["precision"]) for p in report["points"]} == {("onnxruntime", "onnx", "fp32")}
    assert sorted(p["batch_size"] for p in report["points"]) == [1, 8]
    assert all(p["verified"] is True and p["p50_ms"] > 0 for p in report["points"])
    assert report["settings"]["reference"].startswith(f"{GOLDEN_NAME} sha256=")  # verified against the golden file
    assert report["model_flops_per_image"] == 4_586_000  # as export recorded it; no torch here to count it
    assert report["matmul_peak_gflops"] is None and "torch" not in report["versions"]
    # of the runtimes missing here, only those that open an .onnx are noted, once, with the extra that has both
    missing = "not installed (pip install 'toolkit[runtimes]')"
    assert report["skipped"] == {"runtime openvino": missing, "runtime opencv": missing}
    assert [line for line in result.stdout.splitlines() if line.startswith("skipped")] == [
        f"skipped runtimes openvino, opencv: {missing}"]


def test_compare_and_bench_of_onnx_files_on_the_device(device_python, on_device, mnist_dir, tmp_path):
    import onnx  # on this side only, to write a foreign copy: the same graph without the toolkit's metadata

    model = onnx.load(on_device / "model.onnx")
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, foreign)
    result = device(device_python, "-m", "toolkit", "compare", on_device / "model.onnx", foreign,
                    "--limit", "2000", "--data-dir", mnist_dir, "--json", tmp_path / "compare.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "compare.json").read_text())
    assert report["passed"] and report["n"] == 2000 and not report["b"]["toolkit_model"], report
    bench = device(device_python, "-m", "toolkit", "bench", foreign, on_device / "model.onnx", "--batch-sizes", "1",
                   "--iterations", "5", "--warmup", "1", "--rounds", "1", "--no-matmul-peak",
                   "--data-dir", mnist_dir, "--json", tmp_path / "bench.json")
    assert bench.returncode == 0, bench.stderr
    points = json.loads((tmp_path / "bench.json").read_text())["points"]
    verified = {p["format"]: p["verified"] for p in points if p["runtime"] == "onnxruntime"}
    assert verified == {"foreign.onnx": None, "model.onnx": True}  # a foreign file has nothing to be checked against
    assert "torch" not in bench.stdout and "litert" not in bench.stdout  # runtimes no .onnx needs go unmentioned


def test_a_copied_export_folder_verifies_and_benchmarks_without_its_checkpoint(exported, trained, mnist_dir,
                                                                              tmp_path):
    folder = tmp_path / "relocated"  # the checkpoint's recorded relative path does not lead anywhere from here
    shutil.copytree(exported, folder)
    verify = ["verify", "--artifacts", folder, "--format", "onnx,onnx-app", "--precision", "fp32",
              "--batch1-images", "100", "--data-dir", mnist_dir, "--json", tmp_path / "v.json"]
    result = run_cli(*verify)
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["passed"] and report["reference"].startswith(f"{GOLDEN_NAME} sha256=")
    assert GOLDEN_NAME in result.stdout
    assert report["checkpoint_sha256"] == file_digest(trained / "checkpoint.pt")  # whose outputs they are

    bench = run_cli("bench", "--artifacts", folder, "--format", "onnx", "--precision", "fp32", "--batch-sizes", "1,8",
                    "--iterations", "5", "--warmup", "1", "--rounds", "1", "--no-matmul-peak", "--data-dir", mnist_dir,
                    "--json", tmp_path / "b.json")
    assert bench.exit_code == 0, bench.stderr
    timed = json.loads((tmp_path / "b.json").read_text())
    assert timed["points"] and {p["format"] for p in timed["points"]} == {"onnx"}
    assert all(p["verified"] is True for p in timed["points"])
    assert timed["settings"]["reference"].startswith(f"{GOLDEN_NAME} sha256=")

    shutil.copy(trained / "checkpoint.pt", folder / "checkpoint.pt")  # now it is beside the manifest
    result = run_cli(*verify)
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["reference"] == f"checkpoint {folder / 'checkpoint.pt'}" and report["passed"]
    result = run_cli(*verify, "--reference", "golden")  # asked for by name, even with the checkpoint here
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "v.json").read_text())["reference"].startswith(f"{GOLDEN_NAME} sha256=")

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["golden"]["source_sha256"] = "0" * 64  # golden outputs of another checkpoint than the artifacts'
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli(*verify, "--reference", "golden")
    assert "different checkpoint" in assert_one_line_error(result, 1)
