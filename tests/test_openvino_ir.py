"""OpenVINO IR (model.xml + model.bin): exported from the session's checkpoint, proven on all 10,000 test images
through the CLI, timed by bench, compared, predicted from without torch, and refused when either file changed."""

from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import onnx
import pytest
from PIL import Image

from tests.conftest import REPO, assert_one_line_error, run_cli, run_process
from tests.test_runtime import BLOCK_TORCH
from toolkit.artifacts import MANIFEST_NAME, read_manifest
from toolkit.data import load_split

ov = pytest.importorskip("openvino")

IR = {"fp32": ("model.xml", "model.bin"), "int8": ("model.int8.xml", "model.int8.bin")}


def _ir_entries(folder):
    return {a.precision: a for a in read_manifest(folder) if a.format == "openvino"}


def test_export_lists_each_ir_with_its_bin_hashed_on_its_own(exported):
    entries = _ir_entries(exported)
    assert set(entries) == {"fp32", "int8"}
    for precision, (xml, weights) in IR.items():
        a = entries[precision]
        assert a.file == xml and [p.file for p in a.parts] == [weights]
        assert a.size_bytes == (exported / xml).stat().st_size
        assert a.parts[0].size_bytes == (exported / weights).stat().st_size
        assert a.parts[0].sha256 != a.sha256
    assert entries["int8"].settings["quantizer"] == "nncf"
    assert entries["int8"].settings["calibration_images"] == 300  # conftest's --calibration-size
    # int8 weights are a quarter of fp32's
    assert entries["int8"].parts[0].size_bytes < entries["fp32"].parts[0].size_bytes / 3


def test_int8_ir_is_quantized_from_the_graph_with_each_relu_before_its_pool(exported):
    """The fp32 IR pools before its ReLU, as the model does; the int8 IR applies each ReLU first (the same
    outputs, as verify proves on all test images) and its manifest entry says which pools moved."""
    def pool_consumers(xml, weights):
        model = ov.Core().read_model(str(exported / xml), str(exported / weights))
        pools = [op for op in model.get_ordered_ops() if op.get_type_name() == "MaxPool"]
        return [t.get_node().get_type_name() for op in pools for t in op.output(0).get_target_inputs()]

    assert pool_consumers(*IR["fp32"]) == ["Relu", "Relu"]
    assert "Relu" not in pool_consumers(*IR["int8"])
    rewrites = _ir_entries(exported)["int8"].settings["graph_rewrites"]
    assert len(rewrites) == 2 and all(r.startswith("Relu before MaxPool ") for r in rewrites)
    assert "graph_rewrites" not in _ir_entries(exported)["fp32"].settings


def test_ir_rt_info_carries_the_same_metadata_as_the_onnx(exported):
    onnx_meta = {p.key: p.value for p in onnx.load(exported / "model.onnx").metadata_props}
    for precision, (xml, weights) in IR.items():
        model = ov.Core().read_model(str(exported / xml), str(exported / weights))
        section = model.get_rt_info()["toolkit"]
        meta = {k: section[k].astype(str) for k in section}
        assert meta["artifact_format"] == "openvino" and meta["precision"] == precision
        same = {k: v for k, v in meta.items() if k not in ("artifact_format", "precision")}
        assert same == {k: v for k, v in onnx_meta.items() if k not in ("artifact_format", "precision")}
        assert json.loads(meta["labels"]) == [str(d) for d in range(10)]


def test_verify_proves_both_irs_on_all_test_images_at_full_batch_and_batch_1(exported, mnist_dir, tmp_path):
    report_path = tmp_path / "verify.json"
    result = run_cli("verify", "--artifacts", exported, "--data-dir", mnist_dir, "--format", "openvino",
                     "--batch1-images", "10000", "--mode", "f32", "--json", report_path)  # bf16: test_verify.py
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    checks = {(r["artifact"], r["mode"]): r for r in report["results"]}
    assert set(checks) == {("model.xml", "f32"), ("model.int8.xml", "f32")}
    assert all(r["runtime"] == "openvino" and r["n"] == 10_000 and r["batch1_n"] == 10_000 and r["passed"]
               for r in checks.values())
    fp32 = checks[("model.xml", "f32")]
    assert fp32["agreement"] == 10_000 and fp32["max_abs_diff"] <= 1e-4 and fp32["batch1_max_diff"] <= 1e-4
    int8 = checks[("model.int8.xml", "f32")]
    assert int8["judged_as"] == "int8"
    assert int8["agreement"] >= 9_900 and abs(int8["accuracy_delta"]) <= 0.3


@pytest.mark.parametrize("changed", ["model.xml", "model.bin"])
def test_a_changed_xml_or_bin_is_refused_before_openvino_reads_it(exported_copy, mnist_dir, monkeypatch, changed):
    from toolkit.runners import openvino

    data = bytearray((exported_copy / changed).read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the SHA-256 can tell
    (exported_copy / changed).write_bytes(bytes(data))
    loaded = []
    monkeypatch.setattr(openvino, "read_ir", lambda *a: loaded.append(a))
    result = run_cli("verify", "--artifacts", exported_copy, "--data-dir", mnist_dir, "--format", "openvino",
                     "--precision", "fp32", "--batch1-images", "0")
    assert result.exit_code == 1
    assert f"{changed} changed since export (SHA-256 differs from the manifest)" in result.stderr
    assert not loaded  # refused from the hash alone: OpenVINO was never handed the bytes
    refused = run_cli("predict", "--model", exported_copy / "model.xml", _png(exported_copy.parent, mnist_dir))
    assert "refusing to load it" in assert_one_line_error(refused, 2)
    assert not loaded


def _png(folder, mnist_dir):
    pixels, _ = load_split(mnist_dir, "test")
    path = folder / "digit.png"
    Image.fromarray(pixels[0]).save(path)
    return path


def _edit_part(folder, change):
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model.xml")
    change(entry)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.parametrize("change, words", [
    (lambda e: e["parts"][0].update(file="../model.bin"), "not a plain file name"),
    (lambda e: e["parts"][0].update(file="/etc/passwd"), "not a plain file name"),
    (lambda e: e.update(parts=[]), "its parts are not model.bin"),
    (lambda e: e["parts"][0].update(file="model.int8.bin"), "its parts are not model.bin"),
    (lambda e: e["parts"][0].update(sha256="0" * 63), "sha256 is not 64 hex digits"),
])
def test_a_manifest_part_that_escapes_or_lies_is_refused(exported_copy, mnist_dir, change, words):
    _edit_part(exported_copy, change)
    result = run_cli("verify", "--artifacts", exported_copy, "--data-dir", mnist_dir, "--format", "openvino")
    assert words in assert_one_line_error(result, 2)


def test_a_companion_symlink_leading_out_of_the_folder_is_refused(exported_copy, mnist_dir, tmp_path):
    outside = tmp_path / "elsewhere.bin"
    shutil.copyfile(exported_copy / "model.bin", outside)
    (exported_copy / "model.bin").unlink()
    (exported_copy / "model.bin").symlink_to(outside)
    result = run_cli("verify", "--artifacts", exported_copy, "--data-dir", mnist_dir, "--format", "openvino")
    assert "symbolic link leading out of the folder" in assert_one_line_error(result, 2)


def test_bench_times_both_irs_and_verifies_them_first(exported, mnist_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--artifacts", exported, "--data-dir", mnist_dir, "--runtime", "openvino",
                     "--format", "openvino", "--mode", "f32", "--hint", "latency", "--batch-sizes", "1,32",
                     "--iterations", "5", "--warmup", "1", "--rounds", "2", "--no-matmul-peak", "--json", out)
    assert result.exit_code == 0, result.stderr
    points = json.loads(out.read_text())["points"]
    timed = {(p["format"], p["precision"], p["batch_size"]) for p in points}
    assert timed == {("openvino", prec, b) for prec in ("fp32", "int8") for b in (1, 32)}
    assert all(p["verified"] and p["p50_ms"] > 0 for p in points)


def test_compare_takes_irs_on_either_side(exported, mnist_dir):
    same = run_cli("compare", exported / "model.onnx", exported / "model.xml", "--data-dir", mnist_dir)
    assert same.exit_code == 0, same.stdout + same.stderr
    assert "10,000/10,000" in same.stdout
    quantized = run_cli("compare", exported / "model.xml", exported / "model.int8.xml", "--judge-as", "int8",
                        "--data-dir", mnist_dir)
    assert quantized.exit_code == 0, quantized.stdout + quantized.stderr


def test_predict_on_an_ir_runs_without_torch(exported, mnist_dir, tmp_path, python):
    pixels, labels = load_split(mnist_dir, "test")
    paths = []
    for i in range(20):
        paths.append(tmp_path / f"digit{i:02d}.png")
        Image.fromarray(pixels[i]).save(paths[-1])
    golden = np.load(exported / "golden.npy", allow_pickle=False)[:20].argmax(1).tolist()
    for xml in ("model.xml", "model.int8.xml"):
        written = tmp_path / f"{xml}.json"
        script = BLOCK_TORCH + textwrap.dedent(f"""
            sys.argv = ["toolkit", "predict", "--json", {str(written)!r}, "--model", {str(exported / xml)!r},
                        *{[str(p) for p in paths]!r}]
            from toolkit.cli import main
            try:
                main()
            finally:
                assert "torch" not in sys.modules
        """)
        done = run_process(python, "-c", script, cwd=REPO)
        assert done.returncode == 0, done.stderr
        digits = [p["digit"] for p in json.loads(written.read_text())]
        assert digits == golden if xml == "model.xml" else sum(d == g for d, g in zip(digits, golden)) >= 19


def test_a_loose_ir_needs_its_bin_beside_it(exported, mnist_dir, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copyfile(exported / "model.xml", loose / "model.xml")
    png = _png(tmp_path, mnist_dir)
    missing = run_cli("predict", "--model", loose / "model.xml", png)
    assert "model.bin" in assert_one_line_error(missing)
    shutil.copyfile(exported / "model.bin", loose / "model.bin")
    found = run_cli("predict", "--json", tmp_path / "p.json", "--model", loose / "model.xml", png)
    assert found.exit_code == 0, found.stderr
    golden_digit = int(np.load(exported / "golden.npy")[0].argmax())
    assert json.loads((tmp_path / "p.json").read_text())[0]["digit"] == golden_digit


def test_reexport_removes_an_ir_whose_bin_is_gone_and_overwrite_removes_both_files(exported_copy, trained,
                                                                                     mnist_dir, tmp_path):
    from toolkit.checkpoint import load_checkpoint, save_checkpoint

    (exported_copy / "model.int8.bin").unlink()
    again = run_cli("export", "--checkpoint", trained / "checkpoint.pt", "--format", "onnx", "--precision", "fp32",
                    "--out", exported_copy, "--data-dir", mnist_dir)
    assert again.exit_code == 0, again.stderr
    assert "removed model.int8.xml" in again.stderr and not (exported_copy / "model.int8.xml").exists()
    assert "model.xml" in {a.file for a in read_manifest(exported_copy)}  # the whole IR is kept

    ckpt = load_checkpoint(trained / "checkpoint.pt")
    ckpt["state_dict"] = {k: v + 0.001 for k, v in ckpt["state_dict"].items()}
    save_checkpoint(tmp_path / "other.pt", {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    other = run_cli("export", "--checkpoint", tmp_path / "other.pt", "--format", "onnx", "--precision", "fp32",
                    "--out", exported_copy, "--overwrite", "--data-dir", mnist_dir)
    assert other.exit_code == 0, other.stderr
    assert not (exported_copy / "model.xml").exists() and not (exported_copy / "model.bin").exists()
    assert [a.file for a in read_manifest(exported_copy)] == ["model.onnx"]
