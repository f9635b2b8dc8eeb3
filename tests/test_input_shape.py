"""A model whose input is not MNIST: exported with --input-shape and --inputs (its reference inputs), verified
on those inputs with no accuracy claimed, and the one-line refusals of what cannot work."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_one_line_error, run_cli
from toolkit.data import load_split

pytest.importorskip("torch")

K = 64
SHAPE = (3, 32, 32)
PATTERNS = np.random.default_rng(0).standard_normal((10, *SHAPE)).astype(np.float32)


def colour_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` images of the ten PATTERNS under as much noise, and which pattern each is (its label)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(PATTERNS), n)
    return (PATTERNS[labels] + rng.standard_normal((n, *SHAPE))).astype(np.float32), labels


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory) -> Path:
    """A tiny CNN on [N,3,32,32] written outside the toolkit, its state_dict, and reference inputs (with their
    labels, which the toolkit never sees): images of ten patterns, its last layer fitted to tell them apart (least
    squares over its random convolution's features, in well under a second), so its int8 files have real class
    margins to keep."""
    import torch

    folder = tmp_path_factory.mktemp("colour")
    (folder / "colour.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn


        class Colour(nn.Module):
            def __init__(self, width=4):
                super().__init__()
                self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
                self.fc = nn.Linear(width * 16 * 16, 10)

            def forward(self, x):
                return self.fc(torch.relu(self.conv(x)).flatten(1))
    """))
    import importlib.util
    spec = importlib.util.spec_from_file_location("colour_for_test", folder / "colour.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.Colour().eval()
    fit, fit_labels = colour_images(512, seed=1)
    with torch.no_grad():
        features = torch.relu(model.conv(torch.from_numpy(fit))).flatten(1).double().numpy()
    scores = 10.0 * np.eye(10)[fit_labels]
    weight = np.linalg.solve(features.T @ features + np.eye(features.shape[1]), features.T @ scores)
    with torch.no_grad():
        model.fc.weight.copy_(torch.from_numpy(weight.T))
        model.fc.bias.zero_()
    torch.save(model.state_dict(), folder / "colour.pt")
    images, labels = colour_images(K, seed=2)
    np.save(folder / "ref.npy", images)
    np.save(folder / "labels.npy", labels)
    return folder


def _export(folder: Path, *extra: str, out: str = "out"):
    return run_cli("export", "--checkpoint", folder / "colour.pt", "--model-code", f"{folder / 'colour.py'}:Colour",
                   "--out", folder / out, *extra)


@pytest.fixture(scope="module")
def colour_export(colour_model: Path) -> Path:
    # int8 calibrated on the calibration side of ref.npy, and judged on the other side
    result = _export(colour_model, "--input-shape", "3,32,32", "--inputs", colour_model / "ref.npy",
                     "--format", "onnx,openvino", "--precision", "all")
    assert result.exit_code == 0, result.stderr
    result = _export(colour_model, "--input-shape", "3,32,32", "--inputs", colour_model / "ref.npy",
                     "--format", "pt2,torchscript", "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    return colour_model / "out"


def _held_out() -> int:
    """How many of the reference inputs judge an int8 file calibrated on the others."""
    from toolkit.calibration import calibration_side

    return int((~calibration_side(colour_images(K, seed=2)[0])).sum())


def test_exported_with_the_shape_and_reference_inputs(colour_export: Path):
    manifest = json.loads((colour_export / "manifest.json").read_text())
    assert manifest["input_shape"] == list(SHAPE)
    assert manifest["golden"]["reference_accuracy"] is None
    assert manifest["golden"]["data"]["inputs"] == "inputs.npy"
    assert manifest["golden"]["shape"] == [K, 10]
    assert (colour_export / "inputs.npy").is_file()
    for a in manifest["artifacts"]:
        assert a["inputs"][0]["shape"] == ["batch", *SHAPE], a["file"]

    import onnx
    meta = {p.key: p.value for p in onnx.load(str(colour_export / "model.onnx")).metadata_props}
    assert meta["input_layout"] == "N,3,32,32"
    assert meta["preprocessing"].startswith("none")


# the compiled and edge formats, exported once into a folder of their own (AOTInductor compiles a while)
NATIVE = {"model.aoti.pt2": "aoti", "model.pte": "executorch", "model.tflite": "tflite"}


@pytest.fixture(scope="module")
def native_export(colour_model: Path) -> Path:
    pytest.importorskip("executorch.runtime", reason="pip install 'toolkit[executorch]'")
    pytest.importorskip("ai_edge_litert.interpreter", reason="pip install 'toolkit[litert]'")
    pytest.importorskip("litert_torch", reason="pip install 'toolkit[litert-export]'")
    result = _export(colour_model, "--input-shape", "3,32,32", "--inputs", colour_model / "ref.npy",
                     "--format", ",".join(NATIVE.values()), "--precision", "fp32", out="native")
    assert result.exit_code == 0, result.stderr
    return colour_model / "native"


def _file_metadata(path: Path) -> dict:
    """The toolkit metadata a file carries inside itself, read as its runner reads it."""
    from toolkit.runners import executorch, litert, torch_export

    data = path.read_bytes()
    if path.suffix == ".pte":
        return executorch.read_metadata(executorch.load_program(data, path.name), path.name)
    if path.suffix == ".tflite":
        return litert.read_metadata(data, path.name)
    return torch_export.archive_metadata(data, path.name)


def test_compiled_and_edge_files_are_built_for_the_shape(native_export: Path):
    manifest = json.loads((native_export / "manifest.json").read_text())
    assert manifest["input_shape"] == list(SHAPE)
    found = {a["file"]: a for a in manifest["artifacts"]}
    assert {f: a["format"] for f, a in found.items()} == NATIVE
    assert found["model.aoti.pt2"]["inputs"][0]["shape"] == ["batch", *SHAPE]
    assert found["model.pte"]["inputs"][0]["shape"] == ["batch", *SHAPE]
    assert found["model.tflite"]["inputs"][0]["shape"] == [1, *SHAPE]  # its batch is fixed; NCHW as the model
    from toolkit.exporters.executorch import largest_batch

    # the .pte's planned batch: 1024 samples of 3x32x32, fewer of a larger sample (its input buffer within 16 MiB)
    assert found["model.pte"]["settings"]["max_batch"] == 1024 and largest_batch((3, 224, 224)) == 27
    for name in NATIVE:
        meta = _file_metadata(native_export / name)
        assert meta["input_layout"] == "N,3,32,32" and meta["preprocessing"].startswith("none"), name
        assert (meta["mean"], meta["std"]) == ("0.0", "1.0"), name


def test_compiled_and_edge_files_are_verified_on_the_reference_inputs(native_export: Path, tmp_path: Path):
    report = tmp_path / "verify.json"
    result = run_cli("verify", "--artifacts", native_export, "--data-dir", tmp_path / "no-mnist", "--json", report)
    assert result.exit_code == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["reference_accuracy"] is None and data["n"] == K
    assert {r["artifact"] for r in data["results"]} == set(NATIVE)
    for r in data["results"]:
        assert r["passed"] and r["agreement"] == K and r["accuracy"] is None, r


def test_bench_times_and_verifies_compiled_and_edge_files(native_export: Path, tmp_path: Path):
    # over the folder, and the same files named by path: each fed the reference inputs, judged against golden.npy
    by_path = [native_export / name for name in NATIVE]
    for way, out in ((["--artifacts", native_export], "folder.json"), (by_path, "files.json")):
        result = run_cli("bench", *way, "--data-dir", tmp_path / "no-mnist", "--batch-sizes", "1,8", "--seconds",
                         "0.05", "--rounds", "1", "--json", tmp_path / out)
        assert result.exit_code == 0, result.stderr
        bench = json.loads((tmp_path / out).read_text())
        assert {p["runtime"] for p in bench["points"]} == {"aoti", "executorch", "litert"}, out
        assert {p["batch_size"] for p in bench["points"]} == {1, 8}, out
        assert all(p["verified"] is True and p["checked_images"] == K for p in bench["points"]), out


def test_edge_runners_take_the_declared_shape_and_refuse_another(native_export: Path):
    from toolkit.errors import ArtifactError
    from toolkit.exporters.tflite import with_metadata
    from toolkit.metadata import read_normalization
    from toolkit.runners import executorch, litert
    from toolkit.runners.base import RunnerOptions

    options = RunnerOptions()
    tflite = (native_export / "model.tflite").read_bytes()
    meta = litert.read_metadata(tflite, "model.tflite")
    assert litert.open_bytes(tflite, "model.tflite", options).batch == 1
    wrong = {**meta, "input_layout": "N,3,28,28"}  # a file whose graph is not the shape its metadata says
    forged = with_metadata(tflite, json.dumps(wrong))
    with pytest.raises(ArtifactError, match=r"input is \[1, 3, 32, 32\]"):
        litert.open_bytes(forged, "forged.tflite", options)

    pte = (native_export / "model.pte").read_bytes()
    program = executorch.load_program(pte, "model.pte")
    runner = executorch.open_bytes(pte, "model.pte", options)
    runner.inputs_as_given = True
    x = np.load(native_export / "inputs.npy")[:3]
    assert runner.run(x)["log_probs"].shape == (3, 10)
    with pytest.raises(ArtifactError, match="input_layout"):
        executorch.ExecuTorchRunner(program, pte, "forged.pte", options, read_normalization(wrong, "x"), wrong)


def test_verified_on_the_reference_inputs_without_accuracy(colour_export: Path, tmp_path: Path):
    report = tmp_path / "verify.json"
    result = run_cli("verify", "--artifacts", colour_export, "--data-dir", tmp_path / "no-mnist",
                     "--json", report)
    assert result.exit_code == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["reference_accuracy"] is None and data["n"] == K
    checked = {r["artifact"] for r in data["results"]}
    assert {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.pt2", "model.xml", "model.int8.xml",
            "model.ts.pt"} <= checked
    for r in data["results"]:  # an int8 file on the reference inputs that did not calibrate it
        assert r["passed"] and r["agreement"] == r["n"] == (_held_out() if r["precision"] == "int8" else K), r
        assert r["accuracy"] is None, r
    # what a person reads says the same: reference inputs, no accuracy (never "nan")
    title = " ".join(result.stdout.split())
    assert f"on {K} reference inputs (no labels: accuracy unknown" in title and "nan" not in result.stdout


def test_bench_over_the_folder_feeds_every_file_the_reference_inputs(colour_export: Path, tmp_path: Path):
    # as verify does: every file fed the reference inputs beside it and judged against golden.npy, no MNIST needed
    result = run_cli("bench", "--artifacts", colour_export, "--data-dir", tmp_path / "no-mnist", "--batch-sizes", "8",
                     "--precision", "fp32,fp16", "--seconds", "0.05", "--rounds", "1", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    bench = json.loads((tmp_path / "b.json").read_text())
    assert bench["settings"]["reference"].startswith("golden.npy")
    assert bench["settings"]["inputs"] == "its export's reference inputs"
    assert f"verified on {K} reference inputs" in " ".join(result.stdout.split())
    timed = {p["format"] for p in bench["points"]}
    assert {"onnx", "openvino", "pt2", "torchscript"} <= timed, timed
    assert all(p["verified"] is True and p["checked_images"] == K for p in bench["points"])


def test_a_changed_reference_input_file_is_refused(colour_export: Path, tmp_path: Path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(colour_export, copy)
    x = np.load(copy / "inputs.npy")
    np.save(copy / "inputs.npy", x + 1)
    line = assert_one_line_error(run_cli("verify", "--artifacts", copy, "--data-dir", tmp_path / "none"))
    assert "inputs.npy" in line
    # bench feeds the same file, over the folder and by path, with and without verification: checked first
    for way in (["--artifacts", copy], [copy / "model.onnx"], [copy / "model.xml", "--no-verify"]):
        line = assert_one_line_error(run_cli("bench", *way, "--data-dir", tmp_path / "none"), 2)
        assert "inputs.npy" in line


def _swap_after_each_read(monkeypatch, name: str, replacement: bytes) -> None:
    """Another writer replaces the file `name` with `replacement` right after anything reads it."""
    read = Path.read_bytes

    def read_then_swap(self: Path) -> bytes:
        data = read(self)
        if self.name == name:
            self.write_bytes(replacement)
        return data

    monkeypatch.setattr(Path, "read_bytes", read_then_swap)


def test_the_reference_inputs_loaded_are_the_bytes_hashed(colour_export: Path, tmp_path: Path, monkeypatch):
    # the file is replaced after its bytes were read and hashed: those bytes are loaded, not the file read again
    import io
    import shutil

    from toolkit import refinputs
    copy = tmp_path / "copy"
    shutil.copytree(colour_export, copy)
    hashed = (copy / "inputs.npy").read_bytes()
    _swap_after_each_read(monkeypatch, "inputs.npy", refinputs.npy_bytes(np.load(io.BytesIO(hashed)) + 1))
    entry = json.loads((copy / "manifest.json").read_text())["golden"]["data"]
    loaded = refinputs.read_inputs(copy, entry)
    assert np.array_equal(loaded, np.load(io.BytesIO(hashed)))


def test_the_calibration_inputs_recorded_are_the_bytes_loaded(colour_model: Path, tmp_path: Path, monkeypatch):
    # the SHA-256 in the manifest is that of the rows that calibrated, however the file changes after it was read
    from toolkit import fileio, refinputs
    calibrating = refinputs.npy_bytes(colour_images(48, seed=5)[0])
    (tmp_path / "calib.npy").write_bytes(calibrating)
    _swap_after_each_read(monkeypatch, "calib.npy", refinputs.npy_bytes(colour_images(20, seed=6)[0]))
    result = _export(colour_model, "--input-shape", "3,32,32", "--inputs", colour_model / "ref.npy", "--format",
                     "onnx", "--precision", "int8", "--calibration-inputs", tmp_path / "calib.npy", out="read-once")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((colour_model / "read-once" / "manifest.json").read_text())
    recorded = manifest["artifacts"][0]["settings"]["calibration_inputs"]
    assert recorded == {"file": "calib.npy", "sha256": fileio.digest(calibrating), "rows": 48}


@pytest.mark.parametrize(("name", "array", "says"), [
    ("shape.npy", np.zeros((4, 3, 28, 28), np.float32), "not float32 [K,3,32,32]"),
    ("nan.npy", np.full((4, 3, 32, 32), np.nan, np.float32), "NaN or infinity"),
    ("f64.npy", np.zeros((4, 3, 32, 32)), "float64"),
    ("pickled.npy", np.array([{"a": 1}], dtype=object), "pickle"),
])
def test_bad_reference_inputs_are_one_line_errors(colour_model: Path, name, array, says):
    np.save(colour_model / name, array, allow_pickle=True)
    out = f"refused-{name}"
    line = assert_one_line_error(_export(colour_model, "--input-shape", "3,32,32", "--inputs", colour_model / name,
                                         out=out), 2)
    assert says in line
    assert not (colour_model / out).exists()


def test_an_export_over_one_with_reference_inputs_leaves_none_behind(colour_model: Path, short_run, mnist_dir):
    result = _export(colour_model, "--input-shape", "3,32,32", "--inputs", colour_model / "ref.npy", "--format",
                     "onnx", "--precision", "fp32", out="replaced")
    assert result.exit_code == 0, result.stderr
    assert (colour_model / "replaced" / "inputs.npy").is_file()
    result = run_cli("export", "--checkpoint", short_run / "checkpoint.pt", "--out", colour_model / "replaced",
                     "--format", "onnx", "--precision", "fp32", "--overwrite", "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    assert not (colour_model / "replaced" / "inputs.npy").exists()  # the golden outputs are on the test set now
    assert "inputs.npy" not in (colour_model / "replaced" / "manifest.json").read_text()


def test_predict_says_a_model_of_other_inputs_is_not_a_digit_classifier(colour_export: Path, mnist_dir, tmp_path):
    """Every file of an --input-shape export is refused in one line before it runs, whatever its format, also one
    whose input is [N,28,28] like a digit's: its metadata says it takes its model's own inputs."""
    import importlib.util

    import torch
    from PIL import Image

    x, _ = load_split(mnist_dir, "test")
    Image.fromarray(x[0]).save(tmp_path / "digit.png")
    (tmp_path / "flat.py").write_text(textwrap.dedent("""
        from torch import nn


        class Flat(nn.Sequential):
            def __init__(self):
                super().__init__(nn.Flatten(), nn.Linear(784, 10))
    """))
    torch.manual_seed(0)
    torch.save({"1.weight": torch.randn(10, 784), "1.bias": torch.zeros(10)}, tmp_path / "flat.pt")
    np.save(tmp_path / "ref28.npy", np.random.default_rng(0).standard_normal((16, 28, 28)).astype(np.float32))
    names = {"onnx": "model.onnx", "openvino": "model.xml"}
    if importlib.util.find_spec("litert_torch") and importlib.util.find_spec("ai_edge_litert"):
        names["tflite"] = "model.tflite"
    result = run_cli("export", "--checkpoint", tmp_path / "flat.pt", "--model-code", f"{tmp_path / 'flat.py'}:Flat",
                     "--input-shape", "28,28", "--inputs", tmp_path / "ref28.npy", "--format", ",".join(names),
                     "--out", tmp_path / "flat")
    assert result.exit_code == 0, result.stderr
    for model in [colour_export / "model.onnx", colour_export / "model.xml", colour_export / "model.int8.onnx",
                  *(tmp_path / "flat" / name for name in names.values())]:
        line = assert_one_line_error(run_cli("predict", "--model", model, tmp_path / "digit.png"), 2)
        assert line == (f"error: {model} was exported with --input-shape: it takes its model's own inputs, not "
                        "28x28 digit images; predict classifies digits (toolkit verify and compare run models of "
                        "other inputs)")


def test_reference_inputs_that_are_not_npy_are_named_so(colour_model: Path):
    (colour_model / "notes.npy").write_text("not an array")  # no NumPy header: not mistaken for a pickle
    line = assert_one_line_error(_export(colour_model, "--input-shape", "3,32,32", "--inputs",
                                         colour_model / "notes.npy", out="refused-text"), 2)
    assert "is not a .npy file" in line and "pickle" not in line


@pytest.mark.parametrize(("extra", "says"), [
    (("--input-shape", "3,32,32"), "needs --inputs"),
    (("--input-shape", "3,32,32", "--inputs", "REF", "--format", "onnx-app"), "28x28 uint8 pixels"),
    (("--input-shape", "3,32,32", "--inputs", "REF", "--format", "executorch", "--precision", "int8"),
     "int8 quantization is built for MNIST models only"),
    (("--input-shape", "3,32,32", "--inputs", "REF", "--calibration-inputs", "REF"), "add --precision int8"),
    (("--calibration-inputs", "REF", "--precision", "int8"), "--calibration-inputs is for a model of another"),
    (("--input-shape", "3,32,32", "--inputs", "ONE", "--precision", "int8"), "1 to calibrate and 0 to judge"),
    (("--input-shape", "3,32,32", "--inputs", "REF", "--precision", "int8", "--calibration-inputs", "F64"),
     "--calibration-inputs"),
    (("--input-shape", "3,x,32", "--inputs", "REF"), "positive sizes"),
    (("--inputs", "REF"), "another --input-shape"),
])
def test_refusals_are_one_line_errors(colour_model: Path, extra, says):
    one_row = np.load(colour_model / "ref.npy")[:1]
    for name, array in (("one.npy", one_row), ("f64.npy", one_row.astype(np.float64))):
        np.save(colour_model / name, array)
    files = {"REF": "ref.npy", "ONE": "one.npy", "F64": "f64.npy"}
    args = [str(colour_model / files[a]) if a in files else a for a in extra]
    line = assert_one_line_error(_export(colour_model, *args, out="refused"), 2)
    assert says in line
    assert not (colour_model / "refused").exists()


def test_a_builtin_model_keeps_mnist_shape(tmp_path: Path):
    line = assert_one_line_error(run_cli("export", "--checkpoint", tmp_path / "none.pt", "--model", "convnet",
                                         "--input-shape", "3,32,32", "--inputs", tmp_path / "x.npy",
                                         "--out", tmp_path / "out"), 2)
    assert "--model-code" in line


@pytest.mark.parametrize("name", ["model.onnx", "model.xml", "model.pt2", "model.ts.pt", "model.fp16.onnx"])
def test_bench_file_feeds_each_format_its_reference_inputs_and_verifies_it(colour_export: Path, tmp_path: Path,
                                                                           name):
    # no MNIST here: such a file takes its export's reference inputs, and is judged on them against golden.npy
    result = run_cli("bench", colour_export / name, "--data-dir", tmp_path / "no-mnist", "--batch-sizes", "1,8",
                     "--seconds", "0.05", "--rounds", "1", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    bench = json.loads((tmp_path / "b.json").read_text())
    (file,) = bench["settings"]["files"]
    assert file["inputs"] == "its export's reference inputs" and file["reference"].startswith("golden.npy")
    assert bench["points"] and {p["batch_size"] for p in bench["points"]} == {1, 8}
    assert all(p["verified"] is True and p["checked_images"] == K for p in bench["points"])


@pytest.mark.parametrize("name", ["model.xml", "model.pt2", "model.ts.pt"])
def test_compare_feeds_an_export_its_reference_inputs(colour_export: Path, tmp_path: Path, name):
    # no MNIST here: every file of the export is fed its reference inputs, as verify and bench feed them
    report = tmp_path / "c.json"
    result = run_cli("compare", colour_export / "model.onnx", colour_export / name, "--data-dir",
                     tmp_path / "no-mnist", "--json", report)
    assert result.exit_code == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["passed"] and data["n"] == K and data["agreement"] == K and data["accuracy_delta"] is None
    assert data["inputs"] == "reference inputs" and data["a"]["accuracy"] is None
    # every file takes the reference inputs unchanged: the report says no normalization, not MNIST's
    for side in (data["a"], data["b"]):
        assert side["preprocessing"] == {"from": "none: the model's own input, as given", "mean": 0.0, "std": 1.0}
    assert f"on {K} reference inputs" in " ".join(result.stdout.split())
    assert "judged on" not in result.stdout  # no int8 file: every reference input judged B


def test_compare_refuses_a_changed_reference_input_file_and_other_files(colour_export: Path, tmp_path: Path,
                                                                       exported: Path, mnist_dir: Path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(colour_export, copy)
    np.save(copy / "inputs.npy", np.load(copy / "inputs.npy") + 1)
    line = assert_one_line_error(run_cli("compare", copy / "model.onnx", copy / "model.xml", "--data-dir",
                                         tmp_path / "none"), 2)
    assert "inputs.npy" in line
    # a file of no such export takes those inputs where it is an .onnx of one float32 input of their shape (a loose
    # copy, out of its folder: it agrees on every one), and is refused where it is not (an MNIST export's file)
    shutil.copy(colour_export / "model.onnx", tmp_path / "loose.onnx")
    result = run_cli("compare", colour_export / "model.xml", tmp_path / "loose.onnx", "--data-dir", tmp_path / "none",
                     "--json", tmp_path / "c.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["agreement"] == report["n"] == K and report["b"]["input"] == "reference inputs"
    line = assert_one_line_error(run_cli("compare", colour_export / "model.onnx", exported / "model.onnx",
                                         "--data-dir", tmp_path / "none"), 2)
    assert "do not take the same inputs" in line and "not a file of an export made with --input-shape" in line
    # the other way round: with A an MNIST file, such an export's IR (which reads as an image model) is refused too
    for name in ("model.xml", "model.pt2"):
        line = assert_one_line_error(run_cli("compare", exported / "model.onnx", colour_export / name,
                                             "--data-dir", mnist_dir), 2)
        assert "do not take the same inputs" in line and "reference inputs float32[N,3,32,32]" in line


def test_compare_on_reference_inputs_refuses_options_that_would_do_nothing(colour_export: Path, tmp_path: Path):
    """Reference inputs are fed as they are, even to a foreign .onnx: no pixel is normalized or laid out, so --mean,
    --std and --layout do nothing; and a file of the export opens as its artifact, so --shape does nothing to it
    (it reaches a loose .onnx only)."""
    import shutil
    shutil.copy(colour_export / "model.onnx", tmp_path / "loose.onnx")
    for option, value in (("--mean", "0.5"), ("--std", "0.3081"), ("--layout", "flat")):
        whom = ("images (how pixels become its input)" if option == "--layout"
                else "float images (how its pixels are normalized)")
        result = run_cli("compare", colour_export / "model.onnx", tmp_path / "loose.onnx", option, value,
                         "--data-dir", tmp_path / "none")
        assert assert_one_line_error(result, 2) == (
            f"error: {option} is for a foreign file fed {whom}, and every file is fed "
            f"the reference inputs of A's export as they are; drop {option}")
    result = run_cli("compare", colour_export / "model.onnx", colour_export / "model.xml", "--shape", "x=3x32x32",
                     "--data-dir", tmp_path / "none")
    assert assert_one_line_error(result, 2) == (
        "error: --shape is for a foreign .onnx (the dynamic dimensions of its inputs), and none of these files is "
        "one; drop --shape")
    assert result.stdout == ""


@pytest.mark.parametrize("shape", [[3, 32], [1, 28, 28], [3, 32, 32.0], "abc", None, "deleted"])
def test_a_manifest_whose_input_shape_is_not_its_inputs_is_refused(colour_export: Path, tmp_path: Path, shape):
    # the manifest says which input its files take: bench and compare refuse one that is not its reference inputs'
    # (a runtime error, or random data instead of the reference inputs, otherwise)
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(colour_export, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.pop("input_shape")
    if shape != "deleted":
        manifest["input_shape"] = shape
    (copy / "manifest.json").write_text(json.dumps(manifest))
    gives = "no input_shape" if shape in (None, "deleted") else f"input_shape {json.dumps(shape)}"
    timing = ("--batch-sizes", "1", "--seconds", "0.05", "--rounds", "1", "--data-dir", tmp_path / "none")
    for args in (("bench", "--artifacts", copy, *timing), ("bench", copy / "model.onnx", *timing),
                 ("bench", copy / "model.xml", "--no-verify", *timing),
                 ("compare", copy / "model.onnx", copy / "model.xml", "--data-dir", tmp_path / "none")):
        line = assert_one_line_error(run_cli(*args), 2)
        assert line == (f"error: {copy / 'manifest.json'} gives {gives}, but its reference inputs' entry says "
                        "[3,32,32]; export again"), args


def test_an_input_shape_with_no_reference_inputs_is_refused(tmp_path: Path):
    from toolkit.errors import ArtifactError
    from toolkit.refinputs import other_input_shape

    def manifest(**fields) -> Path:
        (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": [], **fields}))
        return tmp_path

    assert other_input_shape(manifest()) is None  # an MNIST export
    assert other_input_shape(manifest(input_shape=[1, 28, 28])) is None
    with pytest.raises(ArtifactError, match=r"gives input_shape \[3, 32, 32\], but it lists no reference"):
        other_input_shape(manifest(input_shape=[3, 32, 32]))


def test_bench_files_of_both_inputs_say_no_one_count_of_verified_images(colour_export: Path, exported: Path,
                                                                       mnist_dir: Path, tmp_path: Path):
    # K reference inputs for one file, --verify-images test images for the other: no one title fits both
    result = run_cli("bench", colour_export / "model.onnx", exported / "model.onnx", "--data-dir", mnist_dir,
                     "--runtime", "onnxruntime", "--batch-sizes", "1", "--seconds", "0.02", "--rounds", "1",
                     "--verify-images", "500", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    bench = json.loads((tmp_path / "b.json").read_text())
    assert {p["checked_images"] for p in bench["points"]} == {K, 500}
    assert all(p["verified"] is True for p in bench["points"])
    assert "each verified on" not in " ".join(result.stdout.split())


def test_the_bench_plot_names_the_model_its_report_recorded(colour_export: Path, tmp_path: Path):
    from types import SimpleNamespace

    from toolkit.bench.render import model_words

    result = run_cli("bench", "--artifacts", colour_export, "--data-dir", tmp_path / "no-mnist", "--runtime",
                     "onnxruntime", "--batch-sizes", "8", "--seconds", "0.05", "--rounds", "1",
                     "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    # recorded when timed, so a report drawn later, elsewhere, names the model it timed
    assert json.loads((tmp_path / "b.json").read_text())["settings"]["model"] == "Colour"

    def words(**settings):
        return model_words(SimpleNamespace(settings=settings))

    assert words(model="convnet") == "MNIST ConvNet" and words(model="mlp") == "MNIST MLP"
    assert words(model="Colour") == "Colour" and words(model="Colour", files=[{"file": "m.onnx"}]) == "model file"
    assert words(model="x\n<script>") == "model" and words(model=None) == "model" and words() == "model"


def test_int8_is_calibrated_on_some_reference_inputs_and_judged_on_the_others(colour_export: Path,
                                                                              colour_model: Path, tmp_path: Path):
    from toolkit.calibration import calibration_side

    held = _held_out()
    assert 0 < held < K
    manifest = json.loads((colour_export / "manifest.json").read_text())
    int8 = {a["file"]: a["settings"] for a in manifest["artifacts"] if a["precision"] == "int8"}
    assert set(int8) == {"model.int8.onnx", "model.int8.xml"}
    for name, settings in int8.items():
        assert settings["calibration_split"] == "reference inputs" and settings["calibration_images"] == K - held
        assert settings["judged_on"].startswith(f"the {held} of the {K} reference inputs held out"), name
        assert "agreement" in settings["judged_by"], name
    assert int8["model.int8.onnx"]["chosen_by"] == "structure"  # no labels to hold candidates' accuracy to
    assert int8["model.int8.onnx"]["variant"] == "int8-all-convs" and "another input shape" in \
        int8["model.int8.onnx"]["reason"]

    # verify judges each on the held-out rows only, where it keeps PyTorch's answer on every one, and says so
    result = run_cli("verify", "--artifacts", colour_export, "--precision", "int8", "--data-dir",
                     tmp_path / "no-mnist", "--json", tmp_path / "v.json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads((tmp_path / "v.json").read_text())["results"]
    assert {(r["artifact"], r["runtime"]) for r in rows} >= {("model.int8.onnx", "onnxruntime"),
                                                             ("model.int8.xml", "openvino")}
    for r in rows:
        assert r["passed"] and r["judged_as"] == "int8" and r["agreement"] == r["n"] == held, r
        assert 0 < r["max_abs_diff"] < 1, r  # reported: int8 is not fp32, and is not judged as if it were
    said = " ".join(result.stdout.split())
    assert f"model.int8.onnx on onnxruntime: judged on the {held} of the {K} reference inputs held out" in said

    # on their labels, which the toolkit never saw, the int8 file gets every held-out image right, as PyTorch does
    import onnxruntime as ort

    images, labels = np.load(colour_model / "ref.npy"), np.load(colour_model / "labels.npy")
    keep = ~calibration_side(images)
    session = ort.InferenceSession(str(colour_export / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    assert (session.run(None, {"image": images[keep]})[0].argmax(1) == labels[keep]).all()

    # a limit it does not meet fails it, in one line naming the file
    strict = run_cli("verify", "--artifacts", colour_export, "--format", "onnx", "--precision", "int8",
                     "--tolerance", "int8.max_abs_diff=1e-6", "--data-dir", tmp_path / "no-mnist")
    line = assert_one_line_error(strict, 1)
    assert "model.int8.onnx: max |diff|" in line


def test_verify_checks_each_int8_entry_and_splits_the_reference_inputs_once(colour_export: Path, tmp_path: Path,
                                                                            monkeypatch):
    from toolkit import calibration

    held, checked, split = _held_out(), [], []
    check_entry, calibration_side = calibration.check_entry, calibration.calibration_side

    def counted_check(artifact, ref):
        checked.append(artifact.file)
        return check_entry(artifact, ref)

    def counted_split(rows):
        split.append(len(rows))
        return calibration_side(rows)

    monkeypatch.setattr(calibration, "check_entry", counted_check)
    monkeypatch.setattr(calibration, "calibration_side", counted_split)
    result = run_cli("verify", "--artifacts", colour_export, "--precision", "int8", "--runtime",
                     "onnxruntime,openvino", "--data-dir", tmp_path / "no-mnist", "--json", tmp_path / "v.json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads((tmp_path / "v.json").read_text())["results"]
    assert {(r["artifact"], r["runtime"]) for r in rows} == {  # model.int8.onnx judged twice, on the same rows
        ("model.int8.onnx", "onnxruntime"), ("model.int8.onnx", "openvino"), ("model.int8.xml", "openvino")}
    assert all(r["passed"] and r["n"] == held for r in rows), rows
    assert sorted(checked) == ["model.int8.onnx", "model.int8.xml"] and split == [K]


def test_bench_verifies_int8_files_on_the_held_out_reference_inputs(colour_export: Path, tmp_path: Path):
    result = run_cli("bench", "--artifacts", colour_export, "--precision", "int8", "--data-dir", tmp_path / "no-mnist",
                     "--batch-sizes", "8", "--seconds", "0.05", "--rounds", "1", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    points = json.loads((tmp_path / "b.json").read_text())["points"]
    assert {p["format"] for p in points} == {"onnx", "openvino"}
    assert all(p["verified"] is True and p["checked_images"] == _held_out() for p in points)
    held = f"judged on the {_held_out()} of the {K} reference inputs held out from its int8 calibration"
    said = " ".join(result.stdout.split())
    assert f"onnxruntime onnx/int8: {held}" in said and f"openvino openvino/int8: {held}" in said
    # compare judges B against A on the same rows verify would, and says so as verify does
    report = tmp_path / "c.json"
    both = (colour_export / "model.onnx", colour_export / "model.int8.onnx", "--judge-as", "int8")
    result = run_cli("compare", *both, "--data-dir", tmp_path / "no-mnist", "--json", report)
    assert result.exit_code == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["n"] == data["b"]["held_out"] == _held_out() and data["reference_inputs"] == K
    assert data["a"]["held_out"] == 0
    said = " ".join(result.stdout.split())
    assert f"{colour_export / 'model.int8.onnx'}: {held}" in said and said.count("judged on") == 1
    result = run_cli("compare", *both, "--limit", "5", "--data-dir", tmp_path / "no-mnist")
    assert result.exit_code == 0, result.stderr
    assert f"judged on the first 5 of the {_held_out()} of the {K} reference inputs held out" in " ".join(
        result.stdout.split())


def test_int8_calibrated_on_inputs_of_another_scale_fails_verify(colour_model: Path, tmp_path: Path):
    # --calibration-inputs a thousand times the scale of the model's inputs: the int8 steps are so coarse that every
    # real input rounds to nothing, and verify, judging the files by agreement on all the reference inputs, fails them
    np.save(tmp_path / "large.npy", colour_images(K, seed=3)[0] * np.float32(1000))
    result = _export(colour_model, "--input-shape", "3,32,32", "--inputs", colour_model / "ref.npy", "--format",
                     "onnx,openvino", "--precision", "int8", "--calibration-inputs", tmp_path / "large.npy",
                     out="large")
    assert result.exit_code == 0, result.stderr
    for entry in json.loads((colour_model / "large" / "manifest.json").read_text())["artifacts"]:
        settings = entry["settings"]
        assert settings["calibration_split"] == "calibration inputs" and settings["calibration_images"] == K
        assert settings["calibration_inputs"]["file"] == "large.npy" and settings["calibration_inputs"]["rows"] == K
        assert settings["reference_inputs_in_calibration"] == 0
        assert settings["judged_on"] == f"all {K} reference inputs"
    result = run_cli("verify", "--artifacts", colour_model / "large", "--data-dir", tmp_path / "no-mnist",
                     "--json", tmp_path / "v.json")
    line = assert_one_line_error(result, 1)
    assert "model.int8.onnx: agreement" in line and "model.int8.xml: agreement" in line and "< 99.00%" in line
    for row in json.loads((tmp_path / "v.json").read_text())["results"]:
        assert row["n"] == K and row["agreement"] < 0.5 * K and not row["passed"], row


@pytest.mark.parametrize("shape", ["²,32,32", "３,32,32", "9" * 5000 + ",32,32"],
                         ids=["superscript", "full-width", "endless"])
def test_a_shape_of_other_than_ascii_digits_is_refused(colour_model: Path, shape):
    line = assert_one_line_error(_export(colour_model, "--input-shape", shape, "--inputs", colour_model / "ref.npy",
                                         out="refused-shape"), 2)
    assert "positive sizes" in line
    assert not (colour_model / "refused-shape").exists()


EXP_COLOUR = """
    import torch
    from torch import nn


    class ExpColour(nn.Module):
        \"\"\"Colour on exp(x): an input above 88 overflows.\"\"\"

        def __init__(self, width=4):
            super().__init__()
            self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
            self.fc = nn.Linear(width * 16 * 16, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x.exp())).flatten(1)).log_softmax(1)
"""


def test_nan_outputs_on_reference_inputs_are_refused(colour_model: Path):
    """Finite on the probe batch, NaN on two of the reference inputs: no golden outputs to verify against."""
    (colour_model / "exp_colour.py").write_text(textwrap.dedent(EXP_COLOUR))
    inputs = np.load(colour_model / "ref.npy")
    inputs[[5, 9]] = 100.0
    np.save(colour_model / "large.npy", inputs)
    out = colour_model / "refused-nan"
    result = run_cli("export", "--checkpoint", colour_model / "colour.pt", "--model-code",
                     f"{colour_model / 'exp_colour.py'}:ExpColour", "--input-shape", "3,32,32", "--inputs",
                     colour_model / "large.npy", "--format", "onnx", "--out", out)
    line = assert_one_line_error(result, 2)
    assert "NaN or infinite log-probabilities on 2 of the 64 reference inputs" in line
    assert not out.exists() or not any(out.iterdir())


LOG_COLOUR = """
    import torch
    from torch import nn


    class LogColour(nn.Module):
        \"\"\"Colour on log(x): written for positive inputs, NaN on others.\"\"\"

        def __init__(self, width=4):
            super().__init__()
            self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
            self.fc = nn.Linear(width * 16 * 16, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x.log())).flatten(1))
"""


def test_the_model_is_probed_on_its_reference_inputs(colour_model: Path):
    """Positive reference inputs: exported, though zeros or random values would make it NaN; negative ones are
    refused on the probe."""
    (colour_model / "log_colour.py").write_text(textwrap.dedent(LOG_COLOUR))
    inputs = np.load(colour_model / "ref.npy")
    np.save(colour_model / "positive.npy", np.abs(inputs) + 0.1)

    def export(name: str, out: str):
        return run_cli("export", "--checkpoint", colour_model / "colour.pt", "--model-code",
                       f"{colour_model / 'log_colour.py'}:LogColour", "--input-shape", "3,32,32", "--inputs",
                       colour_model / name, "--format", "onnx", "--out", colour_model / out)

    result = export("positive.npy", "log-colour")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((colour_model / "log-colour" / "manifest.json").read_text())
    assert manifest["model"]["output"] == "logits" and manifest["golden"]["shape"] == [K, 10]
    line = assert_one_line_error(export("ref.npy", "refused-negative"), 2)
    assert "returns NaN or infinity on the probe batch (rows of --inputs [3,3,32,32])" in line
    assert not (colour_model / "refused-negative").exists()


def _copy_with_int8_settings(colour_export: Path, folder: Path, change) -> Path:
    """A copy of the export whose int8 entries' settings `change` rewrote (a hand-edited manifest)."""
    import shutil

    shutil.copytree(colour_export, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        if a["precision"] == "int8":
            change(a["settings"])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("split", ["deleted", "bogus", 5, None, "train", "calibration inputs"])
def test_an_int8_entry_that_does_not_say_what_calibrated_it_is_refused(colour_export: Path, tmp_path: Path, split):
    def change(settings):
        settings.pop("calibration_split")
        if split != "deleted":
            settings["calibration_split"] = split

    folder = _copy_with_int8_settings(colour_export, tmp_path / "x", change)
    no_mnist = tmp_path / "no-mnist"
    line = assert_one_line_error(run_cli("verify", "--artifacts", folder, "--format", "onnx", "--precision", "int8",
                                         "--data-dir", no_mnist))
    assert "model.int8.onnx does not say which rows calibrated it" in line
    if split == "bogus":  # bench and compare refuse it as verify does, before timing or comparing anything
        bench = run_cli("bench", "--artifacts", folder, "--format", "onnx", "--precision", "int8", "--data-dir",
                        no_mnist, "--batch-sizes", "1", "--seconds", "0.05", "--rounds", "1")
        assert "does not say which rows calibrated it" in assert_one_line_error(bench)
        bench = run_cli("bench", folder / "model.int8.onnx", "--data-dir", no_mnist, "--batch-sizes", "1",
                        "--seconds", "0.05", "--rounds", "1")
        assert "does not say which rows calibrated it" in assert_one_line_error(bench)
        compare = run_cli("compare", folder / "model.onnx", folder / "model.int8.onnx", "--data-dir", no_mnist)
        assert "does not say which rows calibrated it" in assert_one_line_error(compare)


def test_an_int8_entry_of_other_reference_inputs_is_refused(colour_export: Path, tmp_path: Path):
    folder = _copy_with_int8_settings(colour_export, tmp_path / "x",
                                      lambda settings: settings.update(reference_inputs_sha256="0" * 64))
    line = assert_one_line_error(run_cli("verify", "--artifacts", folder, "--format", "onnx", "--precision", "int8",
                                         "--data-dir", tmp_path / "no-mnist"))
    assert "model.int8.onnx was calibrated and judged for other reference inputs than inputs.npy" in line


def test_an_int8_entry_that_records_more_overlap_than_inputs_is_refused(colour_export: Path, tmp_path: Path):
    def change(settings):
        settings.update(calibration_split="calibration inputs", calibration_inputs={"sha256": "x", "rows": 1},
                        reference_inputs_in_calibration=10**30)

    folder = _copy_with_int8_settings(colour_export, tmp_path / "x", change)
    line = assert_one_line_error(run_cli("verify", "--artifacts", folder, "--format", "onnx", "--precision", "int8",
                                         "--data-dir", tmp_path / "no-mnist"))
    assert "model.int8.onnx records over a billion reference inputs among its calibration rows, " \
           f"more than its 1 calibration inputs or the {K} reference inputs; export it again" in line


def test_new_reference_inputs_drop_the_int8_files_calibrated_for_the_old(colour_model: Path, tmp_path: Path):
    shape = ("--input-shape", "3,32,32", "--format", "onnx")
    both = ("--inputs", colour_model / "ref.npy", "--calibration-inputs", colour_model / "ref.npy")
    result = _export(colour_model, *shape, "--precision", "fp32,int8", *both, out="reinputs")
    assert result.exit_code == 0, result.stderr
    np.save(tmp_path / "fewer.npy", np.load(colour_model / "ref.npy")[:40])
    result = _export(colour_model, *shape, "--precision", "fp32", "--inputs", tmp_path / "fewer.npy", out="reinputs")
    assert result.exit_code == 0, result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert "removed model.int8.onnx: it was calibrated and judged on other reference inputs" in said
    folder = colour_model / "reinputs"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [a["file"] for a in manifest["artifacts"]] == ["model.onnx"]
    assert not (folder / "model.int8.onnx").exists()


def test_int8_calibrated_on_the_reference_inputs_themselves_says_so(colour_model: Path, tmp_path: Path):
    ref = colour_model / "ref.npy"
    result = _export(colour_model, "--input-shape", "3,32,32", "--format", "onnx", "--precision", "int8",
                     "--inputs", ref, "--calibration-inputs", ref, out="overlap")
    assert result.exit_code == 0, result.stderr
    result = run_cli("verify", "--artifacts", colour_model / "overlap", "--data-dir", tmp_path / "no-mnist")
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert f"judged on all {K} reference inputs, {K} of which also calibrated it" in said
    int8 = colour_model / "overlap" / "model.int8.onnx"
    result = run_cli("compare", int8, int8, "--judge-as", "int8", "--data-dir", tmp_path / "no-mnist")
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert f"{int8}: judged on all {K} reference inputs, {K} of which also calibrated it" in said


def test_bench_says_how_many_rows_judging_an_int8_file_also_calibrated_it(colour_model: Path, tmp_path: Path):
    """--calibration-inputs that hold 40 of the 64 reference inputs: bench says, as verify does, how many of the rows
    it judged the int8 file on also calibrated it; on a sample of them, the range the export's record leaves open."""
    np.save(tmp_path / "some.npy", np.load(colour_model / "ref.npy")[:40])
    result = _export(colour_model, "--input-shape", "3,32,32", "--format", "onnx", "--precision", "int8",
                     "--inputs", colour_model / "ref.npy", "--calibration-inputs", tmp_path / "some.npy",
                     out="some-overlap")
    assert result.exit_code == 0, result.stderr

    def bench(images: int) -> tuple[str, dict]:
        report = tmp_path / f"b{images}.json"
        result = run_cli("bench", "--artifacts", colour_model / "some-overlap", "--verify-images", str(images),
                         "--runtime", "onnxruntime", "--data-dir", tmp_path / "no-mnist", "--batch-sizes", "8",
                         "--seconds", "0.05", "--rounds", "1", "--json", report)
        assert result.exit_code == 0, result.stderr
        verdicts = list(json.loads(report.read_text())["verification"].values())  # one per configuration tried
        assert verdicts, result.stdout
        return " ".join(result.stdout.split()), verdicts

    said, verdicts = bench(K)
    assert (f"onnxruntime onnx/int8: judged on all {K} reference inputs, 40 of which also calibrated it "
            "(--calibration-inputs shares them with --inputs)") in said
    for verdict in verdicts:
        assert verdict["n"] == verdict["reference_inputs"] == K and verdict["also_calibrating"] == 40
    said, verdicts = bench(32)  # every other row: at least 8 of them are among the 40
    assert f"judged on 32 of the {K} reference inputs, 8 to 32 of which also calibrated it" in said
    assert "records how many, not which" in said and said.count("judged on") == 1
    for verdict in verdicts:
        assert verdict["also_calibrating_range"] == [8, 32] and "also_calibrating" not in verdict


def test_compare_says_how_many_of_the_first_rows_also_calibrated_an_int8_file(colour_model: Path, tmp_path: Path):
    """--calibration-inputs that hold 40 of the 64 reference inputs: compare says how many of the rows it judged the
    int8 file on also calibrated it, as bench does; on the first --limit of them, the range the export's record
    leaves open (not the count of all 64), and its JSON says so as bench's does."""
    np.save(tmp_path / "some.npy", np.load(colour_model / "ref.npy")[:40])
    result = _export(colour_model, "--input-shape", "3,32,32", "--format", "onnx", "--precision", "int8",
                     "--inputs", colour_model / "ref.npy", "--calibration-inputs", tmp_path / "some.npy",
                     out="some-overlap-compared")
    assert result.exit_code == 0, result.stderr
    int8 = colour_model / "some-overlap-compared" / "model.int8.onnx"

    def compare(*limit: str) -> tuple[str, dict]:
        report = tmp_path / "c.json"
        result = run_cli("compare", int8, int8, "--judge-as", "int8", *limit, "--data-dir", tmp_path / "no-mnist",
                         "--json", report)
        assert result.exit_code == 0, result.stderr
        data = json.loads(report.read_text())
        assert data["a"] == data["b"] and data["reference_inputs"] == K
        return " ".join(result.stdout.split()), data

    said, data = compare()
    assert (f"{int8}: judged on all {K} reference inputs, 40 of which also calibrated it (--calibration-inputs "
            "shares them with --inputs)") in said
    assert data["b"]["also_calibrating"] == 40 and "also_calibrating_range" not in data["b"]
    some = f"(--calibration-inputs shares some of the {K} with --inputs; the export records how many, not which)"
    said, data = compare("--limit", "5")  # any 5 of them may be among the 40, or none
    assert f"{int8}: judged on the first 5 of {K} reference inputs, up to 5 of which also calibrated it {some}" \
        in said and said.count("judged on") == 1
    assert data["n"] == 5 and data["b"]["also_calibrating_range"] == [0, 5] and "also_calibrating" not in data["b"]
    said, data = compare("--limit", "30")  # only 24 of the 64 did not calibrate it: at least 6 of any 30 did
    assert f"judged on the first 30 of {K} reference inputs, 6 to 30 of which also calibrated it {some}" in said
    assert data["b"]["also_calibrating_range"] == [6, 30]


def test_bench_says_an_int8_file_it_could_not_judge_was_not_checked(colour_export: Path, tmp_path: Path):
    from toolkit.calibration import calibration_side

    assert calibration_side(colour_images(K, seed=2)[0][:1])[0]  # the one row sampled calibrated the file
    result = run_cli("bench", "--artifacts", colour_export, "--format", "onnx", "--precision", "int8",
                     "--verify-images", "1", "--data-dir", tmp_path / "no-mnist", "--batch-sizes", "1",
                     "--seconds", "0.05", "--rounds", "1", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert "FAILED" not in said
    assert ("not verified: onnxruntime onnx/int8: not checked: none of the 1 reference inputs checked is held out "
            "from the int8 calibration") in said and "--verify-images" in said
    assert all(p["verified"] is None for p in json.loads((tmp_path / "b.json").read_text())["points"])


@pytest.mark.parametrize(("rows", "junk", "says"), [
    (10**9, b"", "its header says 1000000000 rows of [3, 32, 32] float32 (12,288,000,000,000 bytes of data)"),
    (K, b"xyz", f"its header says {K} rows of [3, 32, 32] float32 ({K * 3 * 32 * 32 * 4:,} bytes of data), but the "
                f"file holds {K * 3 * 32 * 32 * 4 + 3:,} bytes"),
])
def test_an_npy_whose_header_does_not_match_its_size_is_refused(colour_model: Path, tmp_path: Path, rows, junk,
                                                                says):
    import io

    buf = io.BytesIO()  # a small file whose header claims `rows` (numpy would try to allocate them all)
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (rows, 3, 32, 32)})
    (tmp_path / "bad.npy").write_bytes(buf.getvalue() + np.load(colour_model / "ref.npy").tobytes() + junk)
    line = assert_one_line_error(_export(colour_model, "--input-shape", "3,32,32", "--inputs", tmp_path / "bad.npy",
                                         out="refused-header"), 2)
    assert says in line
    assert not (colour_model / "refused-header").exists()
