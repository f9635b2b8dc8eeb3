"""`toolkit bench FILE...`: model files timed alone, each in every runtime that opens it, fed MNIST images when
they fit and the data is here, else random inputs."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import assert_one_line_error, run_cli
from tests.onnx_models import constant_classifier
from tests.test_compare import _foreign_onnx

FAST = ("--batch-sizes", "1,8", "--iterations", "5", "--rounds", "1", "--no-matmul-peak")
QUICK = ("--batch-sizes", "1,8", "--seconds", "0.05", "--rounds", "1", "--no-matmul-peak")
ONNX_RUNTIMES = {"onnxruntime", "openvino", "opencv"}


def test_bench_a_foreign_mnist_file(trained, mnist_dir, tmp_path):
    foreign = _foreign_onnx(trained / "checkpoint.pt", tmp_path / "theirs.onnx")
    result = run_cli("bench", foreign, *FAST, "--data-dir", mnist_dir, "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["settings"]["file"] == str(foreign) and report["settings"]["inputs"] == "MNIST test images"
    points = report["points"]
    assert {p["runtime"] for p in points} == ONNX_RUNTIMES
    assert [p["batch_size"] for p in points if p["runtime"] == "onnxruntime"] == [1, 8]
    assert all(p["format"] == "theirs.onnx" and p["iterations"] == 5 and p["p50_ms"] > 0 and p["throughput"] > 0
               and p["verified"] is None for p in points)
    assert report["runtimes"]["onnxruntime"]["settings"][0]["layout"] == "flat"
    assert report["runtimes"]["openvino"]["settings"][0]["input"] == "MNIST test images"
    assert "theirs.onnx" in result.stdout


def test_bench_a_file_that_takes_no_image_uses_random_data(mnist_dir, tmp_path):
    graph = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9), str(path))
    line = assert_one_line_error(run_cli("bench", path, *FAST, "--data-dir", mnist_dir), 2)
    assert "other.onnx" in line and "--shape x=" in line
    result = run_cli("bench", path, *FAST, "--shape", "x=3x16", "--data-dir", mnist_dir, "--json", "-")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["settings"]["inputs"] == "random inputs"
    assert {p["runtime"] for p in report["points"]} == ONNX_RUNTIMES
    assert "other.onnx" in assert_one_line_error(run_cli("bench", path, *FAST, "--shape", "y=3", "--data-dir",
                                                         mnist_dir), 2)
    for shape, says in [(["y=3"], "--shape names no input"), (["x=3x16x2"], "gives 3 dimensions after the batch"),
                        (["x=3x16", "x=3x8"], "names input 'x' twice")]:
        args = [a for d in shape for a in ("--shape", d)]
        assert says in assert_one_line_error(run_cli("bench", path, *FAST, *args, "--data-dir", mnist_dir), 2)


def test_a_file_whose_input_has_no_batch_dimension_is_refused(tmp_path):
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    path = tmp_path / "scalar.onnx"  # timed at batch 8, a call would count as 8 inputs
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9), str(path))
    assert "no batch dimension" in assert_one_line_error(run_cli("bench", path, *FAST), 2)


def _summary_rows(report):
    return {(row["file"], row["runtime"]) for row in report["summary"]}


def test_two_foreign_files_on_every_runtime_in_one_run(mnist_dir, tmp_path):
    digits = constant_classifier(tmp_path / "digits.onnx", [float(-d) for d in range(10)])
    other = constant_classifier(tmp_path / "other.onnx", [0.0] * 10, input_shape=("N", 3, 16))
    result = run_cli("bench", digits, other, *QUICK, "--data-dir", mnist_dir, "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert _summary_rows(report) == {(f, r) for f in ("digits.onnx", "other.onnx") for r in ONNX_RUNTIMES}
    files = {f["name"]: f for f in report["settings"]["files"]}
    assert files["digits.onnx"]["inputs"] == "MNIST test images"
    assert files["other.onnx"]["inputs"] == "random inputs"
    assert "not an MNIST image" in files["other.onnx"]["why_random"]
    assert all(set(f["runtimes"]) == ONNX_RUNTIMES for f in files.values())
    assert report["settings"]["verify"] is False and all(p["verified"] is None for p in report["points"])
    assert "digits.onnx: MNIST test images" in result.stdout and "other.onnx: random inputs" in result.stdout


def test_random_inputs_need_no_data_folder(tmp_path):
    digits = constant_classifier(tmp_path / "digits.onnx", [float(d) for d in range(10)])
    other = constant_classifier(tmp_path / "other.onnx", [0.0] * 10, input_shape=("N", 5))
    result = run_cli("bench", digits, other, *QUICK, "--runtime", "onnxruntime,opencv", "--device", "cpu,cuda",
                     "--data-dir", tmp_path / "nowhere", "--json", "-")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert {f["name"]: f["inputs"] for f in report["settings"]["files"]} == {"digits.onnx": "random inputs",
                                                                             "other.onnx": "random inputs"}
    assert "no MNIST test set" in report["settings"]["files"][0]["why_random"]
    assert {p["runtime"] for p in report["points"]} == {"onnxruntime", "opencv"}
    assert {p["provider"] for p in report["points"]} <= {"cpu", "cuda"}
    assert not (tmp_path / "nowhere").exists()


def test_toolkit_files_of_other_formats_run_in_their_runtimes(exported, mnist_dir, tmp_path):
    result = run_cli("bench", exported / "model.pt2", exported / "model.xml", *QUICK, "--data-dir", mnist_dir,
                     "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert _summary_rows(report) == {("model.pt2", "torch-export"), ("model.xml", "openvino")}
    assert all(f["inputs"] == "MNIST test images" for f in report["settings"]["files"])


def test_a_runtime_that_cannot_open_the_file_is_refused(exported, mnist_dir):
    line = assert_one_line_error(run_cli("bench", exported / "model.pt2", "--runtime", "opencv", *QUICK,
                                         "--data-dir", mnist_dir), 2)
    assert "model.pt2" in line and "torch-export" in line
    from toolkit import devices

    if not devices.torch_unavailable("cuda"):
        return  # a GPU is here: only cuda is then a device like any other
    line = assert_one_line_error(run_cli("bench", exported / "model.onnx", "--device", "cuda", *QUICK,
                                         "--data-dir", mnist_dir), 2)
    assert "cuda" in line


FOREIGN_FILE = "a foreign file fed images (how pixels become its input)"
FLOAT_FILE = "a foreign file fed float images (how its pixels are normalized)"
FILE_OPTIONS = [("--shape", "x=3", "a foreign .onnx (the dynamic dimensions of its inputs)"),
                ("--mean", "0.5", FLOAT_FILE), ("--std", "0.3081", FLOAT_FILE), ("--layout", "nchw", FOREIGN_FILE)]


@pytest.mark.parametrize("option, value, whom", FILE_OPTIONS, ids=[o[0] for o in FILE_OPTIONS])
def test_an_option_no_file_takes_is_refused_before_anything_runs(exported, mnist_dir, tmp_path, option, value, whom):
    """How a foreign file is fed does nothing over a folder, nor to a file that feeds itself: a toolkit file its
    manifest lists (even a TorchScript one) runs as that export's file, and a loose toolkit .onnx reads its own
    metadata. Given anyway (even at its default value), the option is refused, not silently left unused."""
    loose = tmp_path / "loose.onnx"
    loose.write_bytes((exported / "model.onnx").read_bytes())
    for files, why in (([], "no FILE is given"), ([loose], "none of these files is one"),
                       ([exported / "model.onnx", exported / "model.ts.pt"],
                        "none of these files is one (a file a manifest lists is fed as its export says)")):
        result = run_cli("bench", *files, option, value, *FAST, "--artifacts", exported, "--no-verify",
                         "--runtime", "onnxruntime,torchscript", "--data-dir", mnist_dir, "--json", tmp_path / "b.json")
        assert assert_one_line_error(result, 2) == f"error: {option} is for {whom}, and {why}; drop {option}"
        assert result.stdout == "" and not (tmp_path / "b.json").exists()


def test_files_are_read_for_feeding_options_only_when_one_is_given(exported, mnist_dir, tmp_path, monkeypatch):
    """Plain `bench FILE` gives no option of how a foreign file is fed: nothing is read to refuse one, while one
    given is still refused."""
    from toolkit.runners import foreign

    read, options_taken = [], foreign.options_taken
    monkeypatch.setattr(foreign, "options_taken", lambda path, *a: read.append(path) or options_taken(path, *a))
    loose = tmp_path / "loose.onnx"  # a toolkit .onnx no manifest lists: what it takes is read from the file
    loose.write_bytes((exported / "model.onnx").read_bytes())
    args = (loose, *FAST, "--runtime", "onnxruntime", "--data-dir", mnist_dir)
    result = run_cli("bench", *args)
    assert result.exit_code == 0, result.stderr
    assert read == []
    line = assert_one_line_error(run_cli("bench", *args, "--layout", "nchw"), 2)
    assert "--layout is for a foreign file" in line and read == [str(loose)]


def test_feeding_options_are_refused_for_a_foreign_onnx_fed_random_data(mnist_dir, tmp_path):
    """A foreign .onnx whose input is no image is fed random data: --mean, --std and --layout would do nothing and
    are refused, and its settings in the report name no mean or std."""
    rand = constant_classifier(tmp_path / "rand.onnx", [1.0] + [0.0] * 9, input_shape=("N", 3, 32, 32))
    for option, value, whom in (("--mean", "0.3", FLOAT_FILE), ("--std", "2", FLOAT_FILE),
                                ("--layout", "nchw", FOREIGN_FILE)):
        line = assert_one_line_error(run_cli("bench", rand, option, value, *QUICK, "--runtime", "onnxruntime",
                                             "--data-dir", mnist_dir), 2)
        assert line == f"error: {option} is for {whom}, and none of these files is one; drop {option}"
    result = run_cli("bench", rand, *QUICK, "--runtime", "onnxruntime,openvino", "--data-dir", mnist_dir,
                     "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    runtimes = json.loads((tmp_path / "b.json").read_text())["runtimes"]
    settings = [s for r in runtimes.values() for s in r["settings"]]
    assert settings and all(s["input"] == "random data" and "mean" not in s and "std" not in s for s in settings)


def test_mean_and_std_are_refused_for_a_foreign_onnx_fed_raw_uint8_pixels(mnist_dir, tmp_path):
    """A foreign .onnx whose input is uint8 is fed the raw pixels: --mean and --std would do nothing and are
    refused; --layout is taken, and its settings in the report name no mean or std."""
    raw = constant_classifier(tmp_path / "raw.onnx", [1.0] + [0.0] * 9, input_shape=("N", 28, 28), uint8=True)
    for option, value in (("--mean", "0.3"), ("--std", "2")):
        line = assert_one_line_error(run_cli("bench", raw, option, value, *QUICK, "--runtime", "onnxruntime",
                                             "--data-dir", mnist_dir), 2)
        assert line == f"error: {option} is for {FLOAT_FILE}, and none of these files is one; drop {option}"
    result = run_cli("bench", raw, "--layout", "nhw", *QUICK, "--runtime", "onnxruntime,openvino",
                     "--data-dir", mnist_dir, "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    runtimes = json.loads((tmp_path / "b.json").read_text())["runtimes"]
    settings = [s for r in runtimes.values() for s in r["settings"]]
    assert settings and all(s["input"] == "MNIST test images" and s["layout"] == "nhw" and "mean" not in s
                            and "std" not in s for s in settings)


def test_an_integer_image_input_is_fed_raw_pixels_and_int8_is_refused(mnist_dir, tmp_path):
    """A foreign .onnx whose image input is int32 is fed the raw pixels, like a uint8 one: --mean and --std are
    refused and its settings name none; an int8 one, which cannot hold them, is refused in one line."""
    from tests.onnx_models import linear_classifier

    raw = linear_classifier(tmp_path / "int32.onnx", "int32")
    line = assert_one_line_error(run_cli("bench", raw, "--mean", "0.3", *QUICK, "--runtime", "onnxruntime",
                                         "--data-dir", mnist_dir), 2)
    assert line == f"error: --mean is for {FLOAT_FILE}, and none of these files is one; drop --mean"
    result = run_cli("bench", raw, *QUICK, "--runtime", "onnxruntime", "--data-dir", mnist_dir,
                     "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    settings = json.loads((tmp_path / "b.json").read_text())["runtimes"]["onnxruntime"]["settings"]
    assert settings and all(s["input"] == "MNIST test images" and s["layout"] == "nhw" and "mean" not in s
                            and "std" not in s for s in settings)
    int8 = linear_classifier(tmp_path / "int8.onnx", "int8")
    result = run_cli("bench", int8, *QUICK, "--runtime", "onnxruntime", "--data-dir", mnist_dir,
                     "--json", tmp_path / "c.json")
    assert assert_one_line_error(result, 2).endswith(
        f"{int8}: image input 'x' is tensor(int8), which cannot hold the raw pixels 0..255 an integer image input "
        "is fed")
    assert not (tmp_path / "c.json").exists()


def test_a_toolkit_file_by_path_is_verified_as_over_its_folder(exported, mnist_dir, tmp_path):
    # a link counts too: the manifest beside the file it leads to governs it
    link = tmp_path / "int8.onnx"
    link.symlink_to(exported / "model.int8.onnx")
    result = run_cli("bench", exported / "model.onnx", link, *FAST, "--runtime", "onnxruntime", "--verify-images",
                     "500", "--data-dir", mnist_dir, "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["settings"]["verify"] is True
    assert all(f["reference"].startswith("checkpoint ") for f in report["settings"]["files"])
    points = report["points"]
    assert {(p["format"], p["precision"]) for p in points} == {("model.onnx", "fp32"), ("int8.onnx", "int8")}
    assert all(p["verified"] is True and p["checked_images"] == 500 for p in points)
    assert all(f["verified"] is True for f in report["fastest"].values())
    assert "not verified" not in result.stdout and "verified against checkpoint" in result.stdout


def test_a_tampered_toolkit_file_by_path_is_refused_as_over_its_folder(exported_copy, mnist_dir):
    # the copy's checkpoint is not found from its new place, so the reference is its golden.npy, checked in turn
    model = exported_copy / "model.onnx"
    for name in ("golden.npy", "model.onnx"):
        path = exported_copy / name
        original = path.read_bytes()
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
        folder = assert_one_line_error(run_cli("bench", "--artifacts", exported_copy, "--format", "onnx",
                                               "--precision", "fp32", *FAST, "--data-dir", mnist_dir), 2)
        by_path = assert_one_line_error(run_cli("bench", model, *FAST, "--data-dir", mnist_dir), 2)
        assert name in by_path and "changed since export" in by_path and folder.removeprefix("error: ") in by_path
        path.write_bytes(original)


@pytest.mark.parametrize("runtime", ["openvino", "opencv"])
def test_an_onnx_in_openvino_or_opencv_runs_the_bytes_read_once(tmp_path, monkeypatch, runtime):
    """OpenVINO and OpenCV are given the bytes ONNX Runtime read (hash-checked where a manifest lists the file) to
    say how the file is fed: the file is not read again, where it could be another model."""
    import shutil

    from tests.onnx_models import linear_classifier, swapped_after_read
    from toolkit.runners import foreign
    from toolkit.runners.base import RunnerOptions

    pytest.importorskip("openvino" if runtime == "openvino" else "cv2")
    mine = linear_classifier(tmp_path / "mine.onnx")
    other = linear_classifier(tmp_path / "other.onnx", seed=1)  # the same inputs and outputs, other weights
    path = tmp_path / "model.onnx"
    pixels = foreign.random_pixels(8)
    expected, _ = foreign.scores(foreign.open_file(mine, RunnerOptions(threads=1)), pixels)
    reads = swapped_after_read(monkeypatch, other)  # the file is another model once it has been read
    shutil.copy(mine, path)
    runner = foreign.open_in(runtime, path, RunnerOptions(threads=1))
    assert runner.runtime == runtime and reads == [path]
    scores, _ = foreign.scores(runner, pixels)
    np.testing.assert_allclose(scores, expected, atol=1e-4)
