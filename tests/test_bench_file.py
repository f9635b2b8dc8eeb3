"""`toolkit bench FILE.onnx`: any .onnx timed alone, fed MNIST images when they fit, else random data."""

import json

import onnx
from onnx import TensorProto, helper

from tests.conftest import assert_one_line_error, run_cli
from tests.test_compare import _foreign_onnx

FAST = ("--batch-sizes", "1,8", "--iterations", "5", "--rounds", "1", "--no-matmul-peak")


def test_bench_a_foreign_mnist_file(trained, mnist_dir, tmp_path):
    foreign = _foreign_onnx(trained / "checkpoint.pt", tmp_path / "theirs.onnx")
    result = run_cli("bench", foreign, *FAST, "--data-dir", mnist_dir, "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["settings"]["file"] == str(foreign) and report["settings"]["inputs"] == "MNIST test images"
    points = report["points"]
    assert [p["batch_size"] for p in points] == [1, 8]
    assert all(p["runtime"] == "onnxruntime" and p["format"] == "theirs.onnx" and p["iterations"] == 5
               and p["p50_ms"] > 0 and p["throughput"] > 0 and p["verified"] is None for p in points)
    assert report["runtimes"]["onnxruntime"]["settings"][0]["layout"] == "flat"
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
    assert report["settings"]["inputs"] == "random data" and len(report["points"]) == 2
    assert "other.onnx" in assert_one_line_error(run_cli("bench", path, *FAST, "--shape", "y=3", "--data-dir",
                                                         mnist_dir), 2)
