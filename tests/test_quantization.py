"""The int8 .onnx file: exact graph rewrites before quantization, the candidates the export picks between, the
manifest's record of the pick, and the structure ONNX Runtime runs (no layout conversions between quantized ops).
Nothing here depends on a speed figure: which candidate wins is the CPU's business, so every check holds for both."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.conftest import run_cli
from toolkit import fileio, sysinfo
from toolkit.data import load_split
from toolkit.export import ExportConfig
from toolkit.exporters import ExportContext, int8, int8_choice, int8_graph, int8_phases
from toolkit.exporters.onnx import to_onnx
from toolkit.model import MLP, ConvNet
from toolkit.preprocess import MEAN, STD, normalize


def _graph(module: torch.nn.Module):
    torch.manual_seed(0)
    return to_onnx(module.eval(), torch.zeros(2, 1, 28, 28), "image", ["log_probs"], ExportConfig(checkpoint=""))


@pytest.fixture(scope="module")
def convnet_graph():
    return _graph(ConvNet())


def _run(model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def _optimized_ops(path: Path) -> list[onnx.NodeProto]:
    """The nodes of ONNX Runtime's optimized graph of `path` (CPU, all optimizations)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(path.with_name(path.stem + ".optimized.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return list(onnx.load(options.optimized_model_filepath).graph.node)


def _assert_no_layout_conversions_between_quantized_ops(nodes: list[onnx.NodeProto]) -> None:
    """Every QLinearConv runs channels-last and hands its uint8 output to a uint8 channels-last pool; the one
    DequantizeLinear left is the logits' and at most one Transpose is left (the input's, or the fp32 head's)."""
    consumers = {i: n for n in nodes for i in n.input}
    ops = [n.op_type for n in nodes]
    convs = [n for n in nodes if n.op_type == "QLinearConv"]
    assert convs, ops
    for conv in convs:
        assert any(a.name == "channels_last" and a.i == 1 for a in conv.attribute), ops
        pool = consumers[conv.output[0]]
        if pool.op_type in ("Split", "Slice"):  # the space-to-depth block: a uint8 Max of the phases pools
            pool = consumers[pool.output[0]]
            assert pool.op_type == "Max", ops
        else:
            assert pool.op_type == "NhwcMaxPool", ops
    assert ops.count("DequantizeLinear") == 1 and consumers[nodes[ops.index("DequantizeLinear")].output[0]].op_type \
        == "LogSoftmax", ops
    assert ops.count("Transpose") <= 1, ops
    assert "MaxPool" not in ops[ops.index("QLinearConv"):], ops  # no fp32 (or uint8 NCHW) pool after int8 starts


def test_relu_before_pool_changes_no_output(convnet_graph):
    rewritten, moved = int8_graph.relu_before_pool(convnet_graph)
    assert len(moved) == 2
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops[:6] == ["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool"]
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x), _run(convnet_graph, x), atol=1e-5)
    kept, moved = int8_graph.relu_before_pool(convnet_graph, keep=frozenset(moved[:1]))
    assert len(moved) == 1 and [n.op_type for n in kept.graph.node][:3] == ["Conv", "MaxPool", "Relu"]


def test_channels_last_flatten_changes_no_output(convnet_graph):
    rewritten, changed = int8_graph.flatten_channels_last(convnet_graph)
    assert changed
    transposes = [n for n in rewritten.graph.node if n.op_type == "Transpose"]
    assert len(transposes) == 1 and list(transposes[0].attribute[0].ints) == [0, 2, 3, 1]
    x = np.random.default_rng(1).standard_normal((8, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x), _run(convnet_graph, x), atol=1e-5)


def test_padding_the_convs_changes_no_output(convnet_graph):
    graph, fp32_nodes, rewrites = int8.candidates(convnet_graph)[int8.FP32_FIRST_CONV_PADDED]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    for conv, (real, padded) in zip(convs, ((20, 32), (50, 64))):
        w, b = weights[conv.input[1]], weights[conv.input[2]]
        assert w.shape[0] == b.shape[0] == padded and not w[real:].any() and not b[real:].any()
        assert f"{conv.name} padded from {real} to {padded} output channels" in " ".join(rewrites)
    ops = [n.op_type for n in graph.graph.node]
    # each Slice after the Conv's ReLU and pool; the first block's stays fp32 with it, the second is quantized
    assert ops[:8] == ["Conv", "MaxPool", "Relu", "Slice", "Conv", "Relu", "MaxPool", "Slice"]
    slices = [n.name for n in graph.graph.node if n.op_type == "Slice"]
    assert slices[0] in fp32_nodes and slices[1] not in fp32_nodes
    x = np.random.default_rng(2).standard_normal((8, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(_run(graph, x), _run(convnet_graph, x), atol=1e-5)


def test_padding_never_widens_a_value_another_node_reads(convnet_graph):
    def two_convs(*head: torch.nn.Module, channels: int = 20):
        return _graph(torch.nn.Sequential(torch.nn.Conv2d(1, channels, 5), *head, torch.nn.Conv2d(channels, 16, 5),
                                          torch.nn.Flatten(), torch.nn.Linear(16 * 20 * 20, 10)))

    def convs(model):
        return [n.name for n in model.graph.node if n.op_type == "Conv"]

    whole = two_convs(torch.nn.ReLU(), channels=16)  # whole blocks already: nothing to pad
    assert int8_graph.pad_convs(whole, convs(whole))[1] == {}
    assert int8.FP32_FIRST_CONV_PADDED not in int8.candidates(whole)
    x = np.random.default_rng(3).standard_normal((4, 1, 28, 28)).astype(np.float32)
    # a Softmax across channels would mix in the zero filters: the Slice comes right after the Conv
    mixed = two_convs(torch.nn.Softmax2d())
    padded, done = int8_graph.pad_convs(mixed, convs(mixed))
    assert [n.op_type for n in padded.graph.node][:3] == ["Conv", "Slice", "Softmax"] and len(done) == 1
    np.testing.assert_allclose(_run(padded, x), _run(mixed, x), atol=1e-5)
    # the first Conv's output also read after its block, or returned: it keeps its 20 channels for those readers
    conv = convnet_graph.graph.node[0]
    for extra_reader in (True, False):
        branch = copy.deepcopy(convnet_graph)
        seen = conv.output[0]
        if extra_reader:
            branch.graph.node.append(onnx.helper.make_node("ReduceMax", [seen], ["conv_max"], keepdims=0))
            seen = "conv_max"
        branch.graph.output.append(onnx.helper.make_tensor_value_info(seen, onnx.TensorProto.FLOAT, None))
        padded, done = int8_graph.pad_convs(branch, [conv.name])
        assert [n.op_type for n in padded.graph.node][:2] == ["Conv", "Slice"] and list(done) == [conv.name]
        got, want = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"image": x}) for m in (padded, branch))
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-5)


def test_space_to_depth_changes_no_output(convnet_graph):
    graph, fp32_nodes, rewrites = int8.candidates(convnet_graph)[int8.SPACE_TO_DEPTH]
    ops = [n.op_type for n in graph.graph.node]
    assert ops[:9] == ["SpaceToDepth", "Conv", "Relu", "Slice", "Slice", "Slice", "Slice", "Max", "Conv"], ops
    assert "MaxPool" not in ops[:ops.index("Max")] and fp32_nodes == []
    weights = {t.name: t for t in graph.graph.initializer}
    assert list(weights[graph.graph.node[1].input[1]].dims) == [80, 4, 3, 3]
    assert "space-to-depth, a 3x3 Conv over the 4 output phases (20 to 80 filters)" in rewrites[0]
    assert any("padded from 50 to 64" in r for r in rewrites)
    x = np.random.default_rng(4).standard_normal((8, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(_run(graph, x), _run(convnet_graph, x), atol=1e-5)


@pytest.mark.parametrize(("kernel", "bias"), [(4, True), (5, False)])
def test_space_to_depth_takes_either_order_of_relu_and_pool(kernel, bias):
    """An even kernel leaves the pool a row and column to drop; ReLU before the pool is the same block; a Conv
    without a bias gets a zero one."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 6, kernel, bias=bias), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(6 * ((29 - kernel) // 2) ** 2, 10))
    graph = _graph(net)
    rewritten, how = int8_phases.space_to_depth_first_conv(graph)
    assert [n.op_type for n in rewritten.graph.node][:3] == ["SpaceToDepth", "Conv", "Relu"] and "6 to 24" in how
    x = np.random.default_rng(5).standard_normal((4, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x), _run(graph, x), atol=1e-5)


@pytest.mark.parametrize("head", [
    (torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.MaxPool2d(2), torch.nn.ReLU()),  # padded
    (torch.nn.Conv2d(1, 6, 5, stride=2), torch.nn.MaxPool2d(2), torch.nn.ReLU()),  # strided
    (torch.nn.Conv2d(1, 6, 5), torch.nn.MaxPool2d(3), torch.nn.ReLU()),  # another window
    (torch.nn.Conv2d(1, 6, 5), torch.nn.MaxPool2d(2, ceil_mode=True), torch.nn.ReLU()),  # rounding up
    (torch.nn.Conv2d(1, 6, 5), torch.nn.ReLU()),  # no pool
    (torch.nn.Conv2d(1, 6, 5), torch.nn.MaxPool2d(2), torch.nn.Tanh()),  # another activation
])
def test_space_to_depth_leaves_other_first_blocks_alone(head):
    graph = _graph(torch.nn.Sequential(*head, torch.nn.Flatten(), torch.nn.LazyLinear(10)))
    assert int8_phases.space_to_depth_first_conv(graph) is None
    assert int8.SPACE_TO_DEPTH not in int8.candidates(graph)


def test_space_to_depth_needs_an_even_input_and_the_conv_read_once(convnet_graph):
    torch.manual_seed(0)
    odd = to_onnx(ConvNet().eval(), torch.zeros(2, 1, 28, 28), "image", ["log_probs"], ExportConfig(checkpoint=""))
    odd.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 27
    assert int8_phases.space_to_depth_first_conv(odd) is None
    branch = copy.deepcopy(convnet_graph)
    branch.graph.output.append(onnx.helper.make_tensor_value_info(branch.graph.node[0].output[0],
                                                                  onnx.TensorProto.FLOAT, None))
    assert int8_phases.space_to_depth_first_conv(branch) is None


def _max_of_dequantized(q_scale: float) -> onnx.ModelProto:
    """uint8 a, b -> DequantizeLinear (scale 0.5, zero point 3) -> Max -> QuantizeLinear (q_scale, 3)."""
    h = onnx.helper
    consts = [onnx.numpy_helper.from_array(np.array(v, dtype), n) for v, dtype, n in (
        (0.5, np.float32, "s"), (3, np.uint8, "z"), (q_scale, np.float32, "qs"))]
    nodes = [h.make_node("DequantizeLinear", [x, "s", "z"], [f"{x}_f"]) for x in "ab"]
    nodes += [h.make_node("Max", ["a_f", "b_f"], ["m"]), h.make_node("QuantizeLinear", ["m", "qs", "z"], ["y"])]
    io = [h.make_tensor_value_info(n, onnx.TensorProto.UINT8, [256]) for n in "aby"]
    graph = h.make_graph(nodes, "max", io[:2], io[2:], consts)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=9)


def test_uint8_max_runs_the_max_on_the_quantized_values():
    a = np.arange(256, dtype=np.uint8)
    b = np.random.default_rng(6).permutation(a)
    for q_scale, rewritten in ((0.5, True), (0.25, False)):  # another output scale: left as it is
        model = _max_of_dequantized(q_scale)
        want = _run_named(model, a, b)
        changed = int8_phases.uint8_max(model)
        ops = [n.op_type for n in changed.graph.node]
        assert ops == (["Max"] if rewritten else ["DequantizeLinear", "DequantizeLinear", "Max", "QuantizeLinear"])
        np.testing.assert_array_equal(_run_named(changed, a, b), want)
        if rewritten:
            np.testing.assert_array_equal(want, np.maximum(a, b))
            assert not changed.graph.initializer  # the scales and zero points nothing reads any more


def _run_named(model, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"a": a, "b": b})[0]


def test_a_graph_without_convolutions_is_left_alone(mnist_dir, tmp_path):
    mlp = _graph(MLP())
    assert int8_graph.relu_before_pool(mlp)[1] == []
    assert int8_graph.flatten_channels_last(mlp)[1] is False
    assert int8_graph.first_conv_block(mlp) == []
    assert list(int8.candidates(mlp)) == [int8.ALL_INT8]
    ctx = ExportContext("", "", {})
    quantized = int8.quantize(mlp, ExportConfig(checkpoint="", data_dir=str(mnist_dir), calibration_size=100), ctx,
                              tmp_path)
    assert "QuantizeLinear" in [n.op_type for n in quantized.graph.node]
    assert ctx.int8_variant["variant"] == int8.ALL_INT8 and ctx.int8_variant["chosen_by"] == "structure"
    assert ctx.int8_variant["reason"] and ctx.int8_variant["graph_rewrites"] == []


def test_choice_is_the_fastest_that_holds_accuracy_else_the_most_accurate():
    m = int8_choice.Measured
    drop = int8_choice.MAX_ACCURACY_DROP
    best, reason = int8_choice.choose([m("a", 1.2, 99.0, 99.1), m("b", 1.9, 99.1 - 2 * drop, 99.1)])
    assert best.name == "a" and "x1.20" in reason and "b x1.90" in reason
    best, reason = int8_choice.choose([m("a", 1.2, 98.0, 99.1), m("b", 1.9, 98.5, 99.1)])
    assert best.name == "b" and "no candidate" in reason


@pytest.fixture(scope="module")
def onnx_int8(tmp_path_factory, trained, mnist_dir) -> Path:
    out = tmp_path_factory.mktemp("int8")
    result = run_cli("export", "--checkpoint", trained / "checkpoint.pt", "--format", "onnx", "--precision",
                     "fp32,int8", "--out", out, "--data-dir", mnist_dir, "--calibration-size", "300")
    assert result.exit_code == 0, result.stderr
    return out


def test_manifest_records_the_variant_and_why(onnx_int8):
    entry = next(a for a in json.loads((onnx_int8 / "manifest.json").read_text())["artifacts"]
                 if a["file"] == "model.int8.onnx")
    s = entry["settings"]
    names = [c["variant"] for c in s["candidates"]]
    assert names == [int8.ALL_INT8, int8.FP32_FIRST_CONV, int8.FP32_FIRST_CONV_PADDED, int8.SPACE_TO_DEPTH]
    assert s["variant"] in names
    assert s["chosen_by"] == "measured" and s["measured_on"] == sysinfo.cpu_model()
    assert s["validation_split"] == "train" and s["validation_images"] == int8.VALIDATION_IMAGES
    chosen = next(c for c in s["candidates"] if c["variant"] == s["variant"])
    assert f"x{chosen['speedup_vs_fp32']:.2f}" in s["reason"]
    assert all(c["speedup_vs_fp32"] > 0 and 0 < c["validation_accuracy"] <= 100 for c in s["candidates"])
    if any(c["holds_accuracy"] for c in s["candidates"]):  # the fastest of those that hold accuracy was kept
        assert chosen["holds_accuracy"] and chosen["speedup_vs_fp32"] == max(
            c["speedup_vs_fp32"] for c in s["candidates"] if c["holds_accuracy"])
    assert s["graph_rewrites"] and s["description"]
    assert bool(s["fp32_nodes"]) == (s["variant"] not in (int8.ALL_INT8, int8.SPACE_TO_DEPTH))
    assert "Transpose" in [n.op_type for n in onnx.load(str(onnx_int8 / "model.int8.onnx")).graph.node]


def test_shipped_file_runs_without_layout_conversions_and_holds_accuracy(onnx_int8, mnist_dir, tmp_path):
    shipped = tmp_path / "model.int8.onnx"
    shipped.write_bytes((onnx_int8 / "model.int8.onnx").read_bytes())
    _assert_no_layout_conversions_between_quantized_ops(_optimized_ops(shipped))
    images, labels = load_split(mnist_dir, "test")
    x = normalize(images, MEAN, STD)
    fp32, q = (onnx.load(str(onnx_int8 / name)) for name in ("model.onnx", "model.int8.onnx"))
    accuracy = {name: 100.0 * float((_run(m, x).argmax(1) == labels).mean()) for name, m in (("fp32", fp32),
                                                                                            ("int8", q))}
    assert accuracy["int8"] >= accuracy["fp32"] - int8_choice.MAX_ACCURACY_DROP, accuracy


def test_every_candidate_runs_without_layout_conversions(onnx_int8, mnist_dir, tmp_path):
    """Whichever candidate a CPU picks, its graph keeps the quantized stack free of Transposes and DQ pairs; the
    graph as exported (pool before ReLU) does not, which is why it is rewritten."""
    config = ExportConfig(checkpoint="", data_dir=str(mnist_dir), calibration_size=100)
    calib = int8.calibration_set(config, ExportContext("", "", {}))
    fp32 = onnx.load(str(onnx_int8 / "model.onnx"))
    for name, (graph, fp32_nodes, _) in int8.candidates(fp32).items():
        path = tmp_path / f"{name}.onnx"
        onnx.save(int8.quantize_candidate(graph, fp32_nodes, calib, config, tmp_path), str(path))
        nodes = _optimized_ops(path)
        _assert_no_layout_conversions_between_quantized_ops(nodes)
        blocked = [n.op_type for n in nodes if n.domain == "com.microsoft.nchwc"]
        if name == int8.FP32_FIRST_CONV_PADDED and blocked:  # a CPU with NCHWc kernels: the pool runs blocked too
            assert blocked == ["Conv", "MaxPool", "ReorderOutput"], blocked
    plain = tmp_path / "plain.onnx"
    onnx.save(int8.quantize_candidate(fp32, [], calib, config, tmp_path), str(plain))
    ops = [n.op_type for n in _optimized_ops(plain)]
    assert ops.count("Transpose") > 1 and ops.count("DequantizeLinear") > 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(fileio.INT8_SCRATCH)]  # scratch files removed


def test_calibration_and_validation_images_do_not_overlap(mnist_dir):
    config = ExportConfig(checkpoint="", data_dir=str(mnist_dir))
    pick, valid = int8.image_picks(config, 60000)
    assert len(pick) == config.calibration_size and len(valid) == int8.VALIDATION_IMAGES
    assert not set(pick) & set(valid)
