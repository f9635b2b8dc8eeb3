"""`toolkit compare A B`: two model files, toolkit-made or not, judged like verify on the MNIST test set."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_one_line_error, run_cli

FOREIGN_FILE = "a foreign file fed images (how pixels become its input)"
FLOAT_FILE = "a foreign file fed float images (how its pixels are normalized)"


def _foreign_onnx(checkpoint, path, *, shift=5.0, noise=0.0, mean=None):
    """The checkpoint's model as someone else might export it: flat [N,784] input, logits out (log-probs
    plus a constant), other names, no toolkit metadata; `noise` perturbs the first conv's weights, and with
    `mean` its input is (pixel/255 - mean) / 0.3081, not the toolkit's normalization."""
    import torch

    from toolkit.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(checkpoint)).eval()
    if noise:
        with torch.no_grad():
            first = next(p for p in model.parameters() if p.dim() == 4)
            first += noise * torch.randn(first.shape, generator=torch.Generator().manual_seed(0))

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            if mean is not None:  # back to the pixels in [0, 1], then as the toolkit normalizes them
                x = (x * 0.3081 + mean - 0.1307) / 0.3081
            return self.m(x.reshape(-1, 1, 28, 28)) + shift

    torch.onnx.export(Flat(), torch.zeros(2, 784), str(path), input_names=["pixels"], output_names=["scores"],
                      dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}}, dynamo=False)
    import onnx

    assert not onnx.load(str(path)).metadata_props  # really foreign
    return path


def test_two_toolkit_files_agree(exported, mnist_dir, tmp_path):
    result = run_cli("compare", exported / "model.onnx", exported / "model.ts.pt", "--data-dir", mnist_dir,
                     "--json", tmp_path / "c.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["passed"] and report["n"] == 10000 and report["agreement"] == 10000
    assert report["compared"] == "log_probs" and report["max_abs_diff"] <= 1e-4
    assert report["a"]["toolkit_model"] and report["a"]["runtime"] == "onnxruntime"
    assert report["b"]["runtime"] == "torchscript"
    assert report["a"]["accuracy"] == pytest.approx(report["b"]["accuracy"])


def test_foreign_onnx_against_a_toolkit_file(trained, exported, mnist_dir, tmp_path):
    foreign = _foreign_onnx(trained / "checkpoint.pt", tmp_path / "theirs.onnx")
    result = run_cli("compare", exported / "model.app.onnx", foreign, "--data-dir", mnist_dir, "--json", "-")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)  # --json - : the JSON alone on stdout
    assert report["b"]["toolkit_model"] is False and report["b"]["outputs"] == "logits"
    assert report["b"]["preprocessing"] == {"mean": 0.1307, "std": 0.3081, "layout": "auto"}
    assert report["a"]["outputs"] == "probabilities" and report["compared"] == "probabilities"
    assert report["agreement"] == 10000 and report["max_abs_diff"] <= 1e-4
    # asked for raw values, the constant shift of the logits shows
    raw = run_cli("compare", exported / "model.onnx", foreign, "--data-dir", mnist_dir, "--as", "raw",
                  "--limit", "500", "--tolerance", "max_abs_diff=none", "--json", "-")
    assert raw.exit_code == 0, raw.stderr
    assert json.loads(raw.stdout)["mean_abs_diff"] == pytest.approx(5.0, abs=1e-3)


def test_a_perturbed_model_fails_with_one_error_line(trained, exported, mnist_dir, tmp_path):
    foreign = _foreign_onnx(trained / "checkpoint.pt", tmp_path / "noisy.onnx", noise=0.05)
    result = run_cli("compare", exported / "model.onnx", foreign, "--data-dir", mnist_dir, "--limit", "2000",
                     "--json", tmp_path / "c.json")
    line = assert_one_line_error(result, 1)
    assert "noisy.onnx" in line and "max |diff|" in line
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["passed"] is False and report["max_abs_diff"] > 1e-4 and report["n"] == 2000
    assert report["agreement"] < 2000 and f"agreement {report['agreement']:,}/2,000 < 100.00%" in line  # as tabled


def test_wrong_layout_and_bad_options_are_one_line_errors(trained, exported, mnist_dir, tmp_path):
    foreign = _foreign_onnx(trained / "checkpoint.pt", tmp_path / "theirs.onnx")
    line = assert_one_line_error(run_cli("compare", exported / "model.onnx", foreign, "--data-dir", mnist_dir,
                                         "--layout", "nchw"), 2)
    assert "[N,784]" in line and "nchw" in line
    for args, message in ((("--std", "0"), "--std"), (("--std", "nan"), "--std"),
                          (("--tolerance", "speed=1"), "bad tolerance"), (("--as", "odd"), "--as")):
        line = assert_one_line_error(run_cli("compare", exported / "model.onnx", foreign, "--data-dir", mnist_dir,
                                             *args), 2)
        assert message in line


def test_shape_is_refused_where_no_file_is_a_foreign_onnx(exported, mnist_dir):
    """--shape sets a foreign .onnx's dynamic dimensions; with no such file it would do nothing, unnoticed."""
    for b in ("model.onnx", "model.ts.pt"):
        result = run_cli("compare", exported / "model.onnx", exported / b, "--shape", "x=10", "--limit", "10",
                         "--data-dir", mnist_dir)
        assert assert_one_line_error(result, 2) == (
            "error: --shape is for a foreign .onnx (the dynamic dimensions of its inputs), and none of these files "
            "is one; drop --shape")
        assert result.stdout == ""


@pytest.mark.parametrize("options", [["--mean", "0.5"], ["--std", "0.3081"], ["--layout", "nchw,flat"],
                                     ["--mean", "0.5", "--std", "0.2"]])
def test_feeding_options_are_refused_where_every_file_feeds_itself(exported, mnist_dir, options):
    """A toolkit .onnx, IR, .pte or .tflite is fed as its own metadata says, and a TorchScript or .pt2 file its
    manifest lists as its export says: --mean, --std or --layout (even at its default value) would do nothing,
    unnoticed."""
    result = run_cli("compare", exported / "model.onnx", exported / "model.xml", exported / "model.int8.onnx",
                     exported / "model.ts.pt", exported / "model.pt2", *options, "--limit", "10",
                     "--data-dir", mnist_dir)
    given = " and ".join(o for o in options if o.startswith("--"))
    whom = FOREIGN_FILE if given == "--layout" else FLOAT_FILE
    assert assert_one_line_error(result, 2) == (
        f"error: {given} {'are' if ' and ' in given else 'is'} for {whom}, and none of these files is one; "
        f"drop {given}")
    assert result.stdout == ""


def test_a_toolkit_torch_file_is_fed_as_its_export_says(trained, exported, mnist_dir, tmp_path):
    """A TorchScript or .pt2 file that the manifest beside it lists is fed as its export says, as a toolkit .onnx
    is: --mean, given for a foreign file beside it, does not change what it is fed."""
    foreign = _foreign_onnx(trained / "checkpoint.pt", tmp_path / "theirs.onnx", mean=0.5)
    result = run_cli("compare", foreign, exported / "model.ts.pt", exported / "model.pt2", "--mean", "0.5",
                     "--limit", "500", "--json", "-", "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True and report["reference"]["preprocessing"]["mean"] == 0.5
    for c in report["comparisons"]:
        assert c["agreement"] == 500 and c["b"]["toolkit_model"] is True
        assert c["b"]["preprocessing"] == {"from": "its export (the manifest beside it)", "mean": 0.1307,
                                           "std": 0.3081}


def test_a_layout_per_file_is_checked_against_its_own_files(trained, exported, mnist_dir, tmp_path):
    """--layout A,B gives A's layout to A alone and B's to B and the files after it: one that those files do not
    take (a toolkit file feeds itself) is refused in one line naming them, though another file takes a layout;
    auto asks nothing of a file."""
    foreign = _foreign_onnx(trained / "checkpoint.pt", tmp_path / "theirs.onnx")  # flat [N,784]
    onnx, ts = exported / "model.onnx", exported / "model.ts.pt"
    why = "but a layout is for a foreign file fed images (how pixels become its input)"
    for files, layouts, whom, which in (
            ((foreign, onnx), "flat,nchw", f"B ({onnx})", "it is not one"),
            ((ts, foreign), "nchw,flat", f"A ({ts})", "it is not one"),
            ((foreign, onnx, ts), "flat,nchw", f"B ({onnx}), C ({ts})", "none of them is one")):
        result = run_cli("compare", *files, "--layout", layouts, "--limit", "10", "--data-dir", mnist_dir)
        assert assert_one_line_error(result, 2) == (
            f"error: --layout {layouts} gives {whom} layout {layouts.split(',')[1 if 'B' in whom else 0]}, {why}, "
            f"and {which}; give auto in its place")
    for files, layouts in (((ts, foreign), "auto,flat"), ((foreign, onnx, ts), "flat,auto"),
                           ((foreign, onnx, foreign), "flat,flat")):
        result = run_cli("compare", *files, "--layout", layouts, "--limit", "10", "--json", "-",
                         "--data-dir", mnist_dir)
        assert result.exit_code == 0 and json.loads(result.stdout)["passed"] is True, result.stderr


def _nhwc_torchscript(checkpoint, path):
    """The checkpoint's model traced to TorchScript behind a permute: it takes [N,28,28,1], which the file does
    not declare."""
    import torch

    from toolkit.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(checkpoint)).eval()

    class Nhwc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m(x.permute(0, 3, 1, 2))

    with pytest.warns(FutureWarning):  # torch.jit's deprecation notice
        torch.jit.trace(Nhwc(), torch.zeros(2, 28, 28, 1)).save(str(path))
    return path


def test_a_torch_file_fed_the_wrong_layout_says_what_it_was_fed(trained, exported, mnist_dir, tmp_path):
    nhwc = _nhwc_torchscript(trained / "checkpoint.pt", tmp_path / "theirs.pt")
    line = assert_one_line_error(run_cli("compare", exported / "model.onnx", nhwc, "--data-dir", mnist_dir,
                                         "--limit", "200"), 2)
    assert "theirs.pt failed while running on torchscript: RuntimeError: " in line and "channels" in line
    assert "float32[N,1,28,28]" in line and "--layout nhwc" in line
    assert line.endswith("(compare: A,B for the first file and the rest)")
    assert "serialized code" not in line and "HERE" not in line  # TorchScript's traceback is left out
    result = run_cli("compare", exported / "model.onnx", nhwc, "--data-dir", mnist_dir, "--limit", "200",
                     "--layout", "nhwc", "--json", "-")
    assert result.exit_code == 0 and json.loads(result.stdout)["agreement"] == 200, result.stderr
    # bench times the file fed the same layout as it checks it with
    bench = run_cli("bench", nhwc, "--layout", "nhwc", "--batch-sizes", "1", "--iterations", "2", "--rounds", "1",
                    "--no-matmul-peak", "--data-dir", mnist_dir)
    assert bench.exit_code == 0, bench.stderr


def test_mean_and_std_must_keep_the_inputs_within_float32(trained, mnist_dir, tmp_path):
    """Finite as doubles but not as float32 inputs: refused up front, not fed as inf to give a false verdict."""
    foreign = _foreign_onnx(trained / "checkpoint.pt", tmp_path / "theirs.onnx")
    same = ("compare", foreign, foreign, "--limit", "100", "--data-dir", mnist_dir)
    for option, value, bound in (("--mean", "-1e300", "[-1e+06, 1e+06]"), ("--mean", "2e6", "[-1e+06, 1e+06]"),
                                 ("--std", "1e-300", "[1e-06, 1e+06]"), ("--std", "1e7", "[1e-06, 1e+06]")):
        line = assert_one_line_error(run_cli(*same, option, value), 2)
        assert option in line and bound in line and "float32" in line
        bench = run_cli("bench", foreign, "--batch-sizes", "1", "--iterations", "2", "--rounds", "1",
                        "--runtime", "onnxruntime", "--no-matmul-peak", "--data-dir", mnist_dir, option, value)
        assert option in assert_one_line_error(bench, 2) and "RuntimeWarning" not in bench.stderr
    # the extremes of the range give finite inputs: a file still matches itself
    result = run_cli(*same, "--mean", "-1e6", "--std", "1e-6", "--json", "-")
    assert result.exit_code == 0 and json.loads(result.stdout)["max_abs_diff"] == 0, result.stderr


def test_external_data_outside_the_model_folder_is_refused(tmp_path, mnist_dir):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    (tmp_path / "secret.bin").write_bytes(b"\0" * 784 * 40)
    w = numpy_helper.from_array(np.zeros((784, 10), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", str(784 * 40))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 784])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    (tmp_path / "sub").mkdir()
    onnx.save(model, str(tmp_path / "sub" / "m.onnx"))
    result = run_cli("compare", tmp_path / "sub" / "m.onnx", tmp_path / "sub" / "m.onnx", "--data-dir", mnist_dir)
    assert "escapes model directory" in assert_one_line_error(result, 2)


def test_three_files_in_one_table_each_against_the_first(trained, exported, mnist_dir, tmp_path):
    foreign = _foreign_onnx(trained / "checkpoint.pt", tmp_path / "noisy.onnx", noise=0.05)
    result = run_cli("compare", exported / "model.onnx", exported / "model.ts.pt", exported / "model.xml", foreign,
                     "--data-dir", mnist_dir, "--limit", "500", "--json", tmp_path / "c.json")
    line = assert_one_line_error(result, 1)  # the perturbed file fails, the two toolkit files pass
    assert "noisy.onnx" in line and "model.xml" not in line
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["reference"]["file"] == str(exported / "model.onnx") and report["passed"] is False
    verdicts = {Path(c["b"]["file"]).name: (c["b"]["runtime"], c["passed"]) for c in report["comparisons"]}
    assert verdicts == {"model.ts.pt": ("torchscript", True), "model.xml": ("openvino", True),
                        "noisy.onnx": ("onnxruntime", False)}
    assert all(c["n"] == 500 and c["a"]["file"] == str(exported / "model.onnx") for c in report["comparisons"])
    assert "each file against A" in result.stdout
    tags = [line.split("│")[1].strip() for line in result.stdout.splitlines() if line.startswith("│")]
    assert [t for t in tags if t] == ["A", "B", "C", "D"]  # as the help names them: A B [C]...


def test_compare_takes_the_dynamic_dimensions_of_files_fed_random_data(tmp_path, mnist_dir):
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Tile", ["m", "reps"], ["y"])]
    reps = helper.make_tensor("reps", TensorProto.INT64, [2], [1, 10])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "d"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], [reps])
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for path in (a, b):
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9), str(path))
    assert "--shape x=" in assert_one_line_error(run_cli("compare", a, b, "--limit", "20", "--data-dir", mnist_dir), 2)
    result = run_cli("compare", a, b, "--limit", "20", "--shape", "x=7", "--json", "-", "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["passed"] is True


def test_feeding_options_are_refused_for_a_foreign_onnx_fed_random_data(tmp_path, mnist_dir):
    """--mean, --std and --layout do nothing to a foreign .onnx whose input is no image (it is fed random data):
    they are refused, and its report records no preprocessing; a file whose --shape makes it take images [N,784]
    takes them."""
    import onnx
    from onnx import TensorProto, helper

    from tests.onnx_models import constant_classifier

    rand = constant_classifier(tmp_path / "rand.onnx", [1.0] + [0.0] * 9, input_shape=("N", 3, 32, 32))
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Tile", ["m", "reps"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "d"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
                              [helper.make_tensor("reps", TensorProto.INT64, [2], [1, 10])])
    flat = tmp_path / "flat.onnx"  # [N, d]: random data, or with --shape x=784 MNIST images
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9), str(flat))
    for option, value, whom in (("--mean", "0.3", FLOAT_FILE), ("--std", "7", FLOAT_FILE),
                                ("--layout", "nchw", FOREIGN_FILE)):
        for files in ((rand, rand), (flat, flat, "--shape", "x=7")):
            result = run_cli("compare", *files, option, value, "--limit", "10", "--data-dir", mnist_dir)
            assert assert_one_line_error(result, 2) == (
                f"error: {option} is for {whom}, and none of these files is one; drop {option}")
    result = run_cli("compare", rand, rand, "--limit", "10", "--json", "-", "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    none = {"from": "none: random data of its own inputs"}
    assert report["a"]["preprocessing"] == report["b"]["preprocessing"] == none
    result = run_cli("compare", flat, flat, "--shape", "x=784", "--mean", "0.3", "--limit", "10", "--json", "-",
                     "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["b"]["preprocessing"] == {"mean": 0.3, "std": 0.3081, "layout": "auto"}


def test_mean_and_std_are_refused_for_a_foreign_onnx_fed_raw_uint8_pixels(tmp_path, mnist_dir):
    """A foreign .onnx whose input is uint8 [N,28,28] is fed the raw pixels: --mean and --std would do nothing and
    are refused, --layout is taken, and its report records no mean or std."""
    from tests.onnx_models import constant_classifier

    raw = constant_classifier(tmp_path / "raw.onnx", [1.0] + [0.0] * 9, input_shape=("N", 28, 28), uint8=True)
    for option, value in (("--mean", "0.3"), ("--std", "7")):
        result = run_cli("compare", raw, raw, option, value, "--limit", "10", "--data-dir", mnist_dir)
        assert assert_one_line_error(result, 2) == (
            f"error: {option} is for {FLOAT_FILE}, and none of these files is one; drop {option}")
    result = run_cli("compare", raw, raw, "--layout", "nhw", "--limit", "10", "--json", "-", "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["a"]["input"] == report["b"]["input"] == "MNIST test images"
    assert report["a"]["preprocessing"] == report["b"]["preprocessing"] == {
        "from": "none: raw pixels 0..255 as uint8", "layout": "nhw"}


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "int64"])
def test_an_integer_image_input_is_fed_the_raw_pixels(tmp_path, mnist_dir, dtype):
    """A foreign .onnx whose image input is any integer type that holds 0..255 gets the raw pixels, as a uint8 one
    does, not the normalized floats cast to integers: it matches the same classifier taking float images, and
    --mean and --std, which would do nothing to it, are refused."""
    from tests.onnx_models import linear_classifier

    floats = linear_classifier(tmp_path / "float.onnx")
    raw = linear_classifier(tmp_path / f"{dtype}.onnx", dtype)
    result = run_cli("compare", floats, raw, "--limit", "200", "--json", "-", "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True and report["agreement"] == 200 and report["max_abs_diff"] <= 1e-4
    assert report["b"]["input"] == "MNIST test images"
    assert report["b"]["preprocessing"] == {"from": f"none: raw pixels 0..255 as {dtype}", "layout": "auto"}
    line = assert_one_line_error(run_cli("compare", raw, raw, "--std", "0.5", "--limit", "10",
                                         "--data-dir", mnist_dir), 2)
    assert line == f"error: --std is for {FLOAT_FILE}, and none of these files is one; drop --std"


def test_an_int8_image_input_is_refused(tmp_path, mnist_dir):
    """int8 cannot hold the raw pixels 0..255 an integer image input is fed: such a file is refused in one line
    naming its input and type, not judged on pixels cut to fit."""
    from tests.onnx_models import linear_classifier

    raw = linear_classifier(tmp_path / "int8.onnx", "int8")
    for files in ((raw, raw), (linear_classifier(tmp_path / "float.onnx"), raw)):
        line = assert_one_line_error(run_cli("compare", *files, "--limit", "10", "--data-dir", mnist_dir), 2)
        assert line == (f"error: {raw}: image input 'x' is tensor(int8), which cannot hold the raw pixels 0..255 "
                        "an integer image input is fed")


def test_a_foreign_onnx_is_read_once_and_those_bytes_are_loaded(tmp_path, monkeypatch):
    """What a foreign .onnx takes, and the model run, come from the one read of the file (hash-checked where a
    manifest lists it): ONNX Runtime does not open it again, where it could find another model."""
    import shutil

    from tests.onnx_models import constant_classifier, linear_classifier, swapped_after_read
    from toolkit.runners import foreign
    from toolkit.runners.base import RunnerOptions

    raw = linear_classifier(tmp_path / "raw.onnx", "int32")  # MNIST images, as raw pixels
    other = constant_classifier(tmp_path / "other.onnx", [1.0] + [0.0] * 9, input_shape=("N", 3, 32, 32))
    path = tmp_path / "model.onnx"
    reads = swapped_after_read(monkeypatch, other)  # the file is another model once it has been read
    shutil.copy(raw, path)
    assert foreign.options_taken(path) == {"shape", "layout"} and reads == [path]
    shutil.copy(raw, path)
    runner = foreign.open_file(path, RunnerOptions(threads=1))
    assert runner.takes_images and not runner.normalizes and reads == [path, path]
    scores, _ = foreign.scores(runner, foreign.random_pixels(4))
    assert scores.shape == (4, 10) and len(np.unique(scores.argmax(1))) > 1  # not the constant classifier


def test_compare_of_files_fed_random_data_needs_no_mnist(tmp_path):
    from tests.onnx_models import constant_classifier

    a = constant_classifier(tmp_path / "a.onnx", [1.0] + [0.0] * 9, input_shape=("N", 3, 32, 32))
    b = constant_classifier(tmp_path / "b.onnx", [1.0] + [0.0] * 9, input_shape=("N", 3, 32, 32))
    result = run_cli("compare", a, b, "--limit", "30", "--data-dir", tmp_path / "no-mnist", "--json", "-")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True and report["inputs"] == "random data" and report["n"] == 30
    assert not (tmp_path / "no-mnist").exists()


def test_files_are_read_for_feeding_options_only_when_one_is_given(exported, mnist_dir, monkeypatch):
    """Plain `compare A B` gives no option of how a foreign file is fed: nothing is read to refuse one, while one
    given is still refused."""
    from toolkit import compare
    from toolkit.runners.foreign import options_taken

    read = []
    monkeypatch.setattr(compare, "options_taken", lambda path, *a: read.append(path) or options_taken(path, *a))
    files = (exported / "model.onnx", exported / "model.ts.pt", "--limit", "10", "--data-dir", mnist_dir)
    result = run_cli("compare", *files)
    assert result.exit_code == 0, result.stderr
    assert read == []
    line = assert_one_line_error(run_cli("compare", *files, "--shape", "x=10"), 2)
    assert "--shape is for a foreign .onnx" in line and read
