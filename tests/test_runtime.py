import json
import textwrap

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, assert_one_line_error, run_cli, run_process
from toolkit.data import load_split
from toolkit.preprocess import load_image
from toolkit.runtime import Classifier

BLOCK_TORCH = """
import importlib.abc, sys
class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"{name} is blocked: the runtime must not need it")
sys.meta_path.insert(0, BlockTorch())
"""


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory, mnist_dir):
    """The first 100 MNIST test images as PNG files, and their labels."""
    folder = tmp_path_factory.mktemp("pngs")
    x, y = load_split(mnist_dir, "test")
    paths = []
    for i in range(100):
        paths.append(folder / f"test{i:03d}.png")
        Image.fromarray(x[i]).save(paths[-1])
    return paths, y[:100], x[:100]


def test_predict_runs_without_torch(exported, digit_pngs, python):
    paths, labels, pixels = digit_pngs
    script = BLOCK_TORCH + textwrap.dedent(f"""
        sys.argv = ["toolkit", "predict", "--json", "-", "--model", {str(exported / 'model.app.onnx')!r},
                    *{[str(p) for p in paths[:20]]!r}]
        from toolkit.cli import main
        try:
            main()
        finally:
            assert "torch" not in sys.modules
    """)
    done = run_process(python, "-c", script, cwd=REPO)
    assert done.returncode == 0, done.stderr
    predictions = json.loads(done.stdout)
    # the digits are what the same file gives for the same (losslessly decoded) pixels in this process: which
    # digits the checkpoint of this CPU gets right is no part of this test, beyond being a digit classifier
    digits = [p["digit"] for p in predictions]
    assert digits == list(Classifier(exported / "model.app.onnx").predict_proba(pixels[:20]).argmax(1))
    assert np.mean(np.array(digits) == labels[:20]) >= 0.9
    # the reported probability is the top one of ten that sum to 1 (a recipe with label smoothing trains the
    # model to put at most about 0.8 on a digit, so its top probability is no proof of anything by itself).
    # Both fields go through one rounding rule, so they agree exactly whatever values this CPU's model gives;
    # ten values rounded to 6 decimals sum to 1 within 10 * 5e-7, plus float32 softmax error.
    assert all(len(p["probabilities"]) == 10 and abs(sum(p["probabilities"]) - 1) < 1e-5
               and p["probability"] == max(p["probabilities"]) for p in predictions)


@pytest.mark.parametrize("model", ["model.app.onnx", "model.onnx", "model.int8.onnx"])
def test_every_toolkit_onnx_classifies_real_digits(exported, digit_pngs, model):
    paths, labels, pixels = digit_pngs
    result = run_cli("predict", "--json", "-", "--model", exported / model, *paths)
    assert result.exit_code == 0, result.stderr
    digits = np.array([p["digit"] for p in json.loads(result.stdout)])
    assert (digits == labels).mean() >= 0.97
    reference = Classifier(exported / "model.app.onnx").predict_proba(pixels).argmax(1)
    assert (digits == reference).mean() >= (1.0 if model != "model.int8.onnx" else 0.97)


def test_dark_on_light_and_large_colour_images_are_converted(tmp_path, digit_pngs, exported):
    _, labels, pixels = digit_pngs
    inverted = tmp_path / "inverted.png"
    Image.fromarray(255 - pixels[0]).save(inverted)
    np.testing.assert_array_equal(load_image(inverted), pixels[0])  # detected and inverted back
    assert load_image(inverted, invert=False).mean() > 127  # --no-invert leaves it alone

    big = tmp_path / "big.jpg"  # a 280x280 colour photo-like JPEG of a dark digit on paper
    Image.fromarray(np.kron(255 - pixels[1], np.ones((10, 10), np.uint8))).convert("RGB").save(big, quality=90)
    small = load_image(big)
    assert small.shape == (28, 28) and small.dtype == np.uint8
    result = run_cli("predict", "--json", "-", "--model", exported / "model.app.onnx", big, inverted)
    assert [p["digit"] for p in json.loads(result.stdout)] == [labels[1], labels[0]]


def test_transparent_png_is_composited_on_white(tmp_path, digit_pngs):
    _, _, pixels = digit_pngs
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = pixels[2]  # black ink whose opacity is the digit, on a transparent background
    path = tmp_path / "ink.png"
    Image.fromarray(rgba, "RGBA").save(path)
    np.testing.assert_allclose(load_image(path).astype(int), pixels[2].astype(int), atol=1)


def test_bad_images_are_one_line_errors(tmp_path, exported):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 5000)).save(huge)  # 45 megapixels, a few KB on disk
    model = exported / "model.app.onnx"
    assert "not a readable image" in assert_one_line_error(run_cli("predict", "--model", model, text), 2)
    assert "empty file" in assert_one_line_error(run_cli("predict", "--model", model, empty), 2)
    assert "too large" in assert_one_line_error(run_cli("predict", "--model", model, huge), 2)
    missing = run_cli("predict", "--model", model, tmp_path / "nope.png")
    assert "nope.png does not exist" in assert_one_line_error(missing, 2)
    assert "is a folder" in assert_one_line_error(run_cli("predict", "--model", model, tmp_path), 2)


@pytest.mark.parametrize("name, fmt", [("model.pte", "executorch"), ("model.aoti.pt2", "aoti"),
                                       ("model.ts.pt", "torchscript")])
def test_predict_refuses_a_file_that_needs_torch_by_its_format(tmp_path, digit_pngs, name, fmt):
    model = tmp_path / name
    model.write_bytes(b"")  # refused by its name, before it is read
    line = assert_one_line_error(run_cli("predict", "--model", model, digit_pngs[0][0]), 2)
    assert line == (f"error: {model} is in the {fmt} format, which needs torch to run; predict runs .onnx, OpenVINO "
                    "IR (.xml) and .tflite files (use toolkit verify or compare for the others)")


@pytest.mark.parametrize("model", ["model.app.onnx", "model.onnx", "model.xml"])
def test_predict_stops_at_the_time_limit(exported, digit_pngs, model):
    # a call far shorter than the watcher's 0.1 s tick still passes a 1 ns limit: it fails like a stopped one
    result = run_cli("predict", "--model", exported / model, digit_pngs[0][0], "--time-limit", "1e-9")
    assert "ran longer than the time limit of 1e-09 s" in assert_one_line_error(result, 2)
    assert "test000.png" not in result.stdout  # no predictions from a call past its limit


def test_an_onnx_that_is_not_a_toolkit_model_is_refused(tmp_path, digit_pngs):
    import onnx
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 28, 28])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 28, 28])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(tmp_path / "other.onnx"))
    result = run_cli("predict", "--model", tmp_path / "other.onnx", digit_pngs[0][0])
    assert "not a toolkit model" in assert_one_line_error(result, 2)
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x01garbage")
    assert "cannot load" in assert_one_line_error(run_cli("predict", "--model", tmp_path / "junk.onnx",
                                                          digit_pngs[0][0]), 2)


def test_predict_checks_the_model_against_the_manifest_beside_it(exported_copy, digit_pngs, tmp_path):
    paths = digit_pngs[0][:2]
    app = exported_copy / "model.app.onnx"
    assert run_cli("predict", "--model", app, *paths).exit_code == 0
    data = bytearray(app.read_bytes())
    data[-1] ^= 1  # one bit of the last initializer
    app.write_bytes(bytes(data))
    assert "changed since export" in assert_one_line_error(run_cli("predict", "--model", app, *paths), 2)
    stray = exported_copy / "other.onnx"
    stray.write_bytes((exported_copy / "model.onnx").read_bytes())
    assert "not listed" in assert_one_line_error(run_cli("predict", "--model", stray, *paths), 2)
    loose = tmp_path / "loose" / "model.onnx"  # no manifest beside it: accepted as it is
    loose.parent.mkdir()
    loose.write_bytes(stray.read_bytes())
    assert run_cli("predict", "--model", loose, *paths).exit_code == 0


def test_a_link_to_a_model_is_checked_against_the_manifest_beside_the_file(exported_copy, digit_pngs, tmp_path):
    app = exported_copy / "model.app.onnx"
    data = bytearray(app.read_bytes())
    data[-1] ^= 1
    app.write_bytes(bytes(data))
    link = tmp_path / "model.onnx"  # no manifest beside the link: the one beside the file still decides
    link.symlink_to(app)
    assert "changed since export" in assert_one_line_error(run_cli("predict", "--model", link, digit_pngs[0][0]), 2)


def test_external_weights_are_read_beside_the_model_never_from_the_working_directory(
        exported, digit_pngs, tmp_path, monkeypatch):
    import onnx

    model = onnx.load(exported / "model.app.onnx")
    onnx.external_data_helper.convert_model_to_external_data(model, location="w.bin")
    (tmp_path / "xe").mkdir()
    onnx.save(model, tmp_path / "xe" / "model.onnx")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    (tmp_path / "cwd" / "w.bin").write_bytes(np.zeros(1 << 20, np.uint8).tobytes())  # planted where ORT would look
    pixels = np.stack([load_image(p) for p in digit_pngs[0][:20]])
    expected = Classifier(exported / "model.app.onnx").predict_proba(pixels)
    np.testing.assert_allclose(Classifier(tmp_path / "xe" / "model.onnx").predict_proba(pixels), expected, atol=1e-6)
    (tmp_path / "xe" / "w.bin").unlink()  # only the planted copy is left: refused, not loaded
    result = run_cli("predict", "--model", tmp_path / "xe" / "model.onnx", digit_pngs[0][0])
    assert "w.bin" in assert_one_line_error(result, 2)


def _toolkit_onnx(path, nodes, classes=10):
    """A model with toolkit metadata and the normalized input, computing `nodes` (which end in log_probs)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph(nodes, "odd", [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT,
                                                                             ["batch", 1, 28, 28])],
                              [helper.make_tensor_value_info("log_probs", onnx.TensorProto.FLOAT, ["batch", classes])],
                              [numpy_helper.from_array(np.array(v, np.int64), name)
                               for name, v in (("zero", [0]), ("end", [classes]), ("one", [1]))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in {"toolkit.format_version": "1", "mean": "0.1307", "std": "0.3081"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def _row_means(classes):
    """[N, 1, 28, 28] -> [N, classes]: mean |pixel| of the first rows (never 0: the background is not 0)."""
    from onnx import helper

    return [helper.make_node("Abs", ["image"], ["abs"]),
            helper.make_node("ReduceMean", ["abs"], ["rows"], axes=[1, 3], keepdims=0),
            helper.make_node("Slice", ["rows", "zero", "end", "one"], ["first"])]


def test_predict_checks_the_output_contract(tmp_path, digit_pngs):
    from onnx import helper

    paths = digit_pngs[0][:2]
    three = tmp_path / "three.onnx"  # three classes, not ten
    _toolkit_onnx(three, _row_means(3) + [helper.make_node("Identity", ["first"], ["log_probs"])], classes=3)
    assert "not a 10-class" in assert_one_line_error(run_cli("predict", "--model", three, *paths), 2)
    nan = tmp_path / "nan.onnx"  # log of a negative number: NaN log-probabilities
    _toolkit_onnx(nan, _row_means(10) + [helper.make_node("Neg", ["first"], ["negative"]),
                                         helper.make_node("Log", ["negative"], ["log_probs"])])
    result = run_cli("predict", "--json", "-", "--model", nan, *paths)
    assert "NaN" in assert_one_line_error(result, 2) and "NaN" not in result.stdout
