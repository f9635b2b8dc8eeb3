"""Reading an .onnx's protobuf without the onnx package: which tensors keep their data in another file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import convert_model_to_external_data

from toolkit.onnx_wire import has_external_data, metadata

WEIGHTS = numpy_helper.from_array(np.ones((32, 32), np.float32), "w")  # 4 KiB: over onnx's 1 KiB threshold
X, Y = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [32, 32]) for name in ("x", "y"))


def _as_initializer() -> onnx.ModelProto:
    return helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [X], [Y],
                                               [WEIGHTS]))


def _in_a_constant() -> onnx.ModelProto:
    nodes = [helper.make_node("Constant", [], ["w"], value=WEIGHTS), helper.make_node("Add", ["x", "w"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "g", [X], [Y]))


def _in_a_branch() -> onnx.ModelProto:
    then = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "then", [], [Y], [WEIGHTS])
    orelse = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "else", [], [Y])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=orelse)
    return helper.make_model(helper.make_graph([node], "g", [cond, X], [Y]))


@pytest.mark.parametrize("build", [_as_initializer, _in_a_constant, _in_a_branch])
def test_tensors_in_another_file_are_found_wherever_the_graph_holds_them(build):
    model = build()
    assert not has_external_data(model.SerializeToString())
    convert_model_to_external_data(model, location="w.bin", convert_attribute=True)
    data = model.SerializeToString()
    assert has_external_data(data)
    assert not has_external_data(data[:len(data) // 2])  # cut short, it is no model: ONNX Runtime says why


@pytest.mark.parametrize("data", [b"", b"\x00" * 16, b"\xff" * 16, b"not an onnx file", b"\x3a\x05" * 300])
def test_bytes_that_are_no_model_hold_no_external_data(data):
    assert not has_external_data(data)


def test_metadata_is_read_as_onnx_reads_it():
    model = _as_initializer()
    for key, value in (("toolkit.format_version", "1"), ("preprocessing", "(x/255 - 0.1307) / 0.3081"),
                       ("empty", ""), ("note", "\u00e9\u4e2d"), ("empty", "last one wins")):
        model.metadata_props.add(key=key, value=value)
    data = model.SerializeToString()
    expected = {p.key: p.value for p in onnx.load_model_from_string(data).metadata_props}
    assert metadata(data) == expected and expected["empty"] == "last one wins"
    assert metadata(_as_initializer().SerializeToString()) == {}
    assert metadata(data[:-3]) == {}  # cut short: no model, so nothing it says is trusted
    bad = helper.make_model(_as_initializer().graph)
    bad.metadata_props.add(key="k", value="v")
    raw = bad.SerializeToString()
    assert metadata(raw.replace(b"\x0a\x01k", b"\x0a\x01\xff")) == {}  # a key that is not UTF-8
