"""The on-device formats: ExecuTorch (.pte, XNNPACK) and LiteRT (.tflite), exported, verified, timed and compared
through the real CLI, on the real runtimes and all 10,000 MNIST test images.

Their exports take about a minute on two busy cores, so they get this module's own fixture (exported into a copy
of the session's folder, beside the ONNX and TorchScript files of the same checkpoint) instead of the session's.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, Result, assert_one_line_error, run_cli, run_process
from toolkit import runners
from toolkit.artifacts import read_manifest
from toolkit.errors import ArtifactError

pytest.importorskip("executorch.runtime", reason="pip install 'toolkit[executorch]'")
pytest.importorskip("ai_edge_litert.interpreter", reason="pip install 'toolkit[litert]'")
pytest.importorskip("litert_torch", reason="pip install 'toolkit[litert-export]'")

EDGE = {"executorch": "executorch", "tflite": "litert"}  # format -> its runtime
FILES = ("model.pte", "model.int8.pte", "model.tflite", "model.int8.tflite")


@pytest.fixture(scope="module")
def edge_export(tmp_path_factory, exported, trained, mnist_dir) -> tuple[Path, Result]:
    out = tmp_path_factory.mktemp("edge") / "exported"
    shutil.copytree(exported, out)
    result = run_cli("export", "--checkpoint", trained / "checkpoint.pt", "--format", "executorch,tflite",
                     "--precision", "all", "--out", out, "--data-dir", mnist_dir, "--calibration-size", "300")
    assert result.exit_code == 0, result.stderr
    return out, result


@pytest.fixture(scope="module")
def edge_exported(edge_export) -> Path:
    return edge_export[0]


def test_the_converters_own_progress_and_warnings_stay_out_of_the_output(edge_export):
    _, result = edge_export
    assert "[START]" not in result.stdout and "Write Model to Bytes" not in result.stdout  # litert-torch's
    assert "training mode" not in result.stderr  # the int8 graph is marked as the inference graph it is
    noise = [line for line in result.stderr.splitlines() if not re.match(r"(exporting: |wrote )", line)]
    assert not noise, noise  # progress and what was written, nothing of the converters' own


@pytest.fixture(scope="module")
def verified(edge_exported, mnist_dir) -> dict:
    report = edge_exported / "verify-edge.json"
    result = run_cli("verify", "--artifacts", edge_exported, "--format", "executorch,tflite",
                     "--batch1-images", "10000", "--json", report, "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(report.read_text())


def _artifact(folder: Path, file: str):
    return next(a for a in read_manifest(folder) if a.file == file)


def test_manifest_lists_every_file_with_its_hash_and_source(edge_exported, exported):
    by_file = {a.file: a for a in read_manifest(edge_exported)}
    onnx = by_file["model.onnx"]  # kept from the session's export: same checkpoint
    for file in FILES:
        a = by_file[file]
        assert a.size_bytes == (edge_exported / file).stat().st_size > 100_000
        assert a.source_sha256 == onnx.source_sha256 and len(a.sha256) == 64
    assert by_file["model.pte"].settings["max_batch"] == 1024
    assert by_file["model.tflite"].inputs[0]["shape"] == [1, 1, 28, 28]
    assert by_file["model.int8.tflite"].inputs[0]["dtype"] == "int8"
    assert by_file["model.int8.pte"].settings["calibration_images"] == 300


@pytest.mark.parametrize("file", FILES)
def test_metadata_travels_inside_the_file(edge_exported, file):
    artifact = _artifact(edge_exported, file)
    data = (edge_exported / file).read_bytes()
    if file.endswith(".pte"):
        from toolkit.runners import executorch as et

        meta = et.read_metadata(et.load_program(data, file), file)
    else:
        from toolkit.runners import litert

        meta = litert.read_metadata(data, file)
    assert meta["source_checkpoint_sha256"] == artifact.source_sha256
    assert meta["artifact_format"] == artifact.format and meta["precision"] == artifact.precision
    assert json.loads(meta["labels"]) == [str(d) for d in range(10)]
    assert "pixel / 255" in meta["preprocessing"]


def test_verify_all_images_at_full_batch_and_batch_1(verified):
    results = {r["artifact"]: r for r in verified["results"]}
    assert set(results) == set(FILES)
    for file, r in results.items():
        assert r["runtime"] == EDGE[r["format"]] and r["n"] == 10000 and r["batch1_n"] == 10000
        assert r["passed"], r["failures"]
        if r["precision"] == "fp32":
            assert r["agreement"] == 10000, file
        else:
            assert r["agreement"] >= 9900 and abs(r["accuracy_delta"]) <= 0.3, file


def test_executorch_runs_the_declared_batch_in_one_call(edge_exported):
    # the batch range was once planned as 1..15 (a conv-backend guard narrowed it); 1024 must fit in one call
    runner = runners.open_runner("executorch", _artifact(edge_exported, "model.pte"))
    assert runner.max_batch == 1024
    pixels = np.random.default_rng(0).integers(0, 256, (1024, 28, 28), dtype=np.uint8)
    whole = runner.method.execute([runner._feed(pixels)])[0].numpy()
    assert whole.shape == (1024, 10)
    one = runner.run(pixels[:1])["log_probs"]
    np.testing.assert_allclose(one, whole[:1], atol=1e-5)


@pytest.mark.parametrize("file", ["model.pte", "model.tflite"])
def test_tampered_file_is_refused_before_loading(edge_exported, mnist_dir, tmp_path, monkeypatch, file):
    folder = tmp_path / "exported"
    shutil.copytree(edge_exported, folder)
    path = folder / file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(data))
    from toolkit.runners import executorch as et
    from toolkit.runners import litert

    loaded = []
    monkeypatch.setattr(et, "load_program", lambda *a: loaded.append(a))
    monkeypatch.setattr(litert, "load_interpreter", lambda *a: loaded.append(a))
    monkeypatch.setattr(litert, "read_metadata", lambda *a: loaded.append(a))
    artifact = _artifact(folder, file)
    with pytest.raises(ArtifactError, match="SHA-256"):
        runners.open_runner(EDGE[artifact.format], artifact)
    assert loaded == []
    monkeypatch.undo()  # the CLI loads the untouched files of the format too
    result = run_cli("verify", "--artifacts", folder, "--format", artifact.format, "--batch1-images", "0",
                     "--data-dir", mnist_dir)
    assert "changed since export" in assert_one_line_error(result)


def test_bench_times_them_at_batches_past_their_bound(edge_exported, mnist_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--artifacts", edge_exported, "--runtime", "executorch,litert", "--provider", "cpu",
                     "--batch-sizes", "1,2048", "--iterations", "3", "--warmup", "1", "--rounds", "2", "--no-verify",
                     "--no-matmul-peak", "--json", out, "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    timed = {(p["format"], p["precision"], p["batch_size"]) for p in report["points"] if p["p50_ms"] > 0}
    assert timed == {(f, p, b) for f in EDGE for p in ("fp32", "int8") for b in (1, 2048)}
    assert report["runtimes"]["executorch"]["settings"][0]["max_batch"] == 1024
    assert report["runtimes"]["litert"]["settings"][0]["file_batch"] == 1


def test_compare_takes_pte_and_tflite(edge_exported, mnist_dir, tmp_path):
    out = tmp_path / "compare.json"
    result = run_cli("compare", edge_exported / "model.onnx", edge_exported / "model.tflite", "--json", out,
                     "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["agreement"] == 10000 and not report["failures"]
    result = run_cli("compare", edge_exported / "model.pte", edge_exported / "model.int8.tflite", "--judge-as",
                     "int8", "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("fmt", "package", "extra"), [("executorch", "executorch", "executorch"),
                                                       ("tflite", "litert_torch", "litert")])
def test_export_without_its_package_names_the_extra(trained, mnist_dir, tmp_path, monkeypatch, fmt, package, extra):
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")] or [package]:
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    result = run_cli("export", "--checkpoint", trained / "checkpoint.pt", "--format", fmt, "--precision", "fp32",
                     "--out", tmp_path / "out", "--data-dir", mnist_dir)
    assert f"toolkit[{extra}" in assert_one_line_error(result)
    assert not (tmp_path / "out" / f"model{'.pte' if fmt == 'executorch' else '.tflite'}").exists()


def test_predict_runs_tflite_without_torch_and_refuses_pte_in_one_line(edge_exported, mnist_dir, tmp_path, python):
    from PIL import Image

    from tests.test_runtime import BLOCK_TORCH
    from toolkit.data import load_split

    images, labels = load_split(mnist_dir, "test")
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(images[i]).save(paths[-1])
    script = BLOCK_TORCH + (
        f"sys.argv = ['toolkit', 'predict', '--json', '-', '--model', {str(edge_exported / 'model.tflite')!r}, "
        f"*{[str(p) for p in paths]!r}]\n"
        "from toolkit.cli import main\n"
        "try:\n    main()\nfinally:\n    assert 'torch' not in sys.modules\n")
    done = run_process(python, "-c", script, cwd=REPO)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    assert [p["digit"] for p in json.loads(done.stdout)] == list(labels[:5])
    result = run_cli("predict", "--model", edge_exported / "model.pte", paths[0])
    assert "needs torch" in assert_one_line_error(result, 2)


def test_predict_stops_tflite_at_the_time_limit(edge_exported, png):
    result = run_cli("predict", "--model", edge_exported / "model.tflite", png, "--time-limit", "1e-9")
    line = assert_one_line_error(result, 2)
    assert "on litert" in line and "ran longer than the time limit of 1e-09 s" in line
