"""Exact rewrites of the fp32 ONNX graph before int8 quantization, so that ONNX Runtime's x86 int8 path keeps the
whole convolution stack in uint8 channels-last form (no Transpose or DequantizeLinear between quantized ops).

ONNX Runtime turns a QDQ Conv into a channels-last QLinearConv and inserts a Transpose wherever the next op has no
uint8 channels-last kernel. The toolkit's models pool before their ReLU (Conv -> MaxPool -> Relu); quantized that
way, the pool's input keeps the convolution's signed range and its output the ReLU's, so the quantized MaxPool
cannot be formed: it runs in fp32 between a DequantizeLinear and a QuantizeLinear, wrapped in Transposes.
`relu_before_pool` swaps the two (max and ReLU commute, so the outputs are the same): the ReLU folds into the
QLinearConv and the pool becomes a uint8 NhwcMaxPool. `flatten_channels_last` flattens the last feature map in
H, W, C order (with the next Gemm's weight columns permuted to match), so its Transpose cancels the one the
channels-last layout would insert before the flatten. `pad_convs` rounds convolutions' output channels up to ONNX
Runtime's block of 16 with zero filters, and a Slice drops them after the ReLU and pool that follow.
"""

from __future__ import annotations

import copy
from typing import Any

_SHAPE_KEEPING = ("MaxPool", "Relu", "Conv")  # ops whose output a quantized conv stack leaves channels-last


def consumers_of(graph) -> dict[str, list[Any]]:
    """Each value's readers: the nodes that take it as an input, in graph order."""
    out: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def set_nodes(graph, nodes: list[Any]) -> None:
    """Replace the graph's nodes with `nodes`, dropping the value shapes that no longer hold."""
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # intermediate shapes are inferred again by the quantizer's pre-processing


def relu_before_pool(model, keep: frozenset[str] = frozenset()) -> tuple[Any, list[str]]:
    """A copy of `model` with every MaxPool -> Relu pair (the pool's only consumer the ReLU) turned into
    Relu -> MaxPool, except pools named in `keep`; returns it and the names of the pools moved."""
    model = copy.deepcopy(model)
    graph = model.graph
    consumers = consumers_of(graph)
    nodes, moved = list(graph.node), []
    for i, pool in enumerate(nodes):
        users = consumers.get(pool.output[0], [])
        if (pool.op_type != "MaxPool" or pool.name in keep or len(pool.output) != 1 or len(users) != 1
                or users[0].op_type != "Relu"):
            continue
        relu = users[0]
        j = nodes.index(relu)
        source, result, between = pool.input[0], relu.output[0], f"{pool.output[0]}_relu"
        relu.input[0], relu.output[0] = source, between
        pool.input[0], pool.output[0] = between, result
        nodes[i], nodes[j] = relu, pool
        moved.append(pool.name)
    if moved:
        set_nodes(graph, nodes)
    return model, moved


def known_dims(model) -> dict[str, list[int | None]]:
    """The dims of the graph's inputs and of every value shape inference can type: None where a dim is not a
    fixed number."""
    import onnx

    values = [*model.graph.input, *onnx.shape_inference.infer_shapes(model).graph.value_info]
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in values}


def _static_chw(model, node) -> tuple[int, int, int] | None:
    """(C, H, W) of the 4-D input of a flatten `node` whose output is [N, C*H*W] with C, H, W known, else None."""
    inferred = known_dims(model)
    dims, flat = inferred.get(node.input[0], []), inferred.get(node.output[0], [])
    if len(dims) != 4 or None in dims[1:] or len(flat) != 2 or flat[1] != dims[1] * dims[2] * dims[3]:
        return None
    return dims[1], dims[2], dims[3]


def _feeds_gemm(node, producers, consumers, weights):
    """The Gemm with a constant weight that `node`, a Reshape or Flatten (to 2-D) of a convolution stack's
    output, alone feeds as its rows; else None."""
    source = producers.get(node.input[0])
    users = consumers.get(node.output[0], [])
    if source is None or source.op_type not in _SHAPE_KEEPING or len(users) != 1:
        return None
    gemm = users[0]
    flat_2d = node.op_type == "Reshape" or all(a.i == 1 for a in node.attribute if a.name == "axis")
    plain = gemm.op_type == "Gemm" and gemm.input[0] == node.output[0] and gemm.input[1] in weights
    if not (flat_2d and plain) or any(a.name == "transA" and a.i for a in gemm.attribute):
        return None
    return gemm


def _flatten_target(model):
    """(flatten node, its Gemm, the Gemm's weight initializer, (C, H, W)) for the first Reshape/Flatten that turns
    a convolution stack's 4-D output (C > 1) into the rows of a Gemm with a constant weight; else None."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers = consumers_of(graph)
    weights = {t.name: t for t in graph.initializer}
    for node in graph.node:
        gemm = _feeds_gemm(node, producers, consumers, weights) if node.op_type in ("Reshape", "Flatten") else None
        chw = None if gemm is None else _static_chw(model, node)
        if chw is not None and chw[0] > 1:
            return node, gemm, weights[gemm.input[1]], chw
    return None


def flatten_channels_last(model) -> tuple[Any, bool]:
    """A copy of `model` whose flatten into the first Gemm reads its 4-D input as N,H,W,C (a Transpose before it,
    the Gemm's weight permuted to match: the same outputs); returns it and whether anything changed."""
    import numpy as np
    from onnx import helper, numpy_helper

    model = copy.deepcopy(model)
    found = _flatten_target(model)
    if found is None:
        return model, False
    flatten, gemm, weight, (c, h, w) = found
    array = numpy_helper.to_array(weight)
    trans_b = any(a.name == "transB" and a.i for a in gemm.attribute)
    if trans_b:  # [out, C*H*W]: columns in C,H,W order become H,W,C order
        array = array.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(array.shape[0], -1)
    else:  # [C*H*W, out]: rows likewise
        array = array.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(-1, array.shape[-1])
    weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), weight.name))
    graph = model.graph
    nhwc = f"{flatten.input[0]}_channels_last"
    transpose = helper.make_node("Transpose", [flatten.input[0]], [nhwc], name=f"{flatten.name}_channels_last",
                                 perm=[0, 2, 3, 1])
    flatten.input[0] = nhwc
    nodes = list(graph.node)
    nodes.insert(nodes.index(flatten), transpose)
    set_nodes(graph, nodes)
    return model, True


def first_conv_block(model) -> list[str]:
    """The names of the nodes from the graph's first node up to (not including) its second Conv, Gemm or MatMul,
    when the first of those is a Conv: the first convolution and the ops between it and the next weighted op.
    Empty when the graph does not start with a convolution."""
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    if len(weighted) < 2 or weighted[0].op_type != "Conv":
        return []
    names = []
    for node in model.graph.node:
        if node is weighted[1]:
            break
        names.append(node.name)
    return names


# ONNX Runtime's x86 CPU kernels work in blocks of 16 channels: the fp32 NCHWc layout on AVX-512 (AVX2's block, 8,
# divides it) and its int8 convolutions, which take a faster path for whole blocks of output channels.
CHANNEL_BLOCK = 16
_PER_CHANNEL = ("MaxPool", "Relu")  # ops that act on each channel alone: zero channels stay apart


def own_constants(conv, weights: dict[str, Any], consumers: dict[str, list[Any]]):
    """(weight, bias or None) of `conv` when both are initializers that no other node reads; else None."""
    names = [n for n in conv.input[1:3] if n]
    if any(n not in weights or len(consumers[n]) > 1 for n in names):
        return None  # a computed weight or bias, or a constant another node reads too
    return weights[names[0]], (weights[names[1]] if len(names) > 1 else None)


def channel_chain(graph, conv, consumers: dict[str, list[Any]]) -> list[Any]:
    """`conv` and the per-channel ops (_PER_CHANNEL) after it, each the only reader of the value before it, ending
    where another op, a second reader or a graph output begins: the nodes whose outputs padding the Conv would
    widen, and the ReLU and pool that int8_phases folds into it."""
    outputs = {o.name for o in graph.output}
    chain = [conv]
    while True:
        value = chain[-1].output[0]
        readers = consumers.get(value, [])
        if (value in outputs or len(readers) != 1 or readers[0].op_type not in _PER_CHANNEL
                or list(readers[0].input[:1]) != [value] or len(readers[0].output) != 1):
            return chain
        chain.append(readers[0])


def _pad_in_place(graph, conv, consumers: dict[str, list[Any]]) -> tuple[str, str] | None:
    """Round `conv`'s output channels up to a multiple of CHANNEL_BLOCK with zero filters and slice the real ones
    back after its per-channel chain; (the Slice's name, what was done), or None when it cannot or need not."""
    import numpy as np
    from onnx import helper, numpy_helper

    constants = own_constants(conv, {t.name: t for t in graph.initializer}, consumers)
    if constants is None or any(a.name == "group" and a.i != 1 for a in conv.attribute):
        return None
    weight, bias = constants
    channels = weight.dims[0]
    padded = -(-channels // CHANNEL_BLOCK) * CHANNEL_BLOCK
    if padded == channels:
        return None
    for tensor in (weight, bias):
        if tensor is not None:
            values = numpy_helper.to_array(tensor)
            grown = np.zeros((padded, *values.shape[1:]), values.dtype)
            grown[:channels] = values
            tensor.CopyFrom(numpy_helper.from_array(grown, tensor.name))
    last = channel_chain(graph, conv, consumers)[-1]
    name = f"{last.name}_real_channels"
    bounds = {"starts": 0, "ends": channels, "axes": 1}
    graph.initializer.extend(numpy_helper.from_array(np.array([v], np.int64), f"{name}_{k}") for k, v in bounds.items())
    result = last.output[0]
    last.output[0] = f"{result}_padded"
    nodes = list(graph.node)
    nodes.insert(nodes.index(last) + 1, helper.make_node(
        "Slice", [last.output[0], *(f"{name}_{k}" for k in bounds)], [result], name=name))
    set_nodes(graph, nodes)
    return name, f"{conv.name} padded from {channels} to {padded} output channels, sliced back after {last.name}"


def pad_convs(model, names: list[str]) -> tuple[Any, dict[str, tuple[str, str]]]:
    """A copy of `model` in which each Conv named computes its output channels rounded up to a multiple of
    CHANNEL_BLOCK, the extra filters all zero, with a Slice after its per-channel ops (ReLU, max-pool) that keeps
    the real channels: the same outputs, and no value that another node reads gains a channel.

    Whole blocks let ONNX Runtime's NCHWc layout span an fp32 convolution's pool, so it converts back to NCHW
    once, after the pool, on a quarter of the values, and they put an int8 convolution on its faster path.
    Returns the copy and {conv: (the Slice's name, what was done)} for the Convs padded; a Conv that is grouped,
    has computed or shared weights, or has whole blocks already is left as it is."""
    model = copy.deepcopy(model)
    graph, done = model.graph, {}
    for name in names:
        conv = next((n for n in graph.node if n.name == name and n.op_type == "Conv"), None)
        padded = None if conv is None else _pad_in_place(graph, conv, consumers_of(graph))
        if padded:
            done[name] = padded
    return model, done
