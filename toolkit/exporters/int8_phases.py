"""The first convolution and its 2x2 max-pool as one int8 convolution over four output phases.

A convolution of a single input channel is a poor int8 GEMM: each output reduces only k*k values. Space-to-depth
(blocks of 2) turns the input's C channels into 4C at half the height and width, and the k x k convolution with
stride 1 becomes a (k//2 + 1) x (k//2 + 1) convolution over them with 4F filters, one set of F for each phase
(row and column parity) of the original output. The 2x2 max-pool with stride 2 is then the maximum over the four
phases: a Max of four channel Slices, with no pool and no layout change. The sums are the same products in another
order, so the outputs match the original graph's to float rounding.

Quantized, the rewritten convolution reduces 4C * (k//2 + 1)^2 values per output (36 instead of 25 for the
toolkit's ConvNet), and its ReLU folds into it. The quantizer leaves the Max in float between DequantizeLinear and
QuantizeLinear; `uint8_max` runs it on the uint8 values instead, which is exact when they share one scale and zero
point (dequantization is increasing, so it commutes with max).
"""

from __future__ import annotations

import copy
from typing import Any

from toolkit.exporters.int8_graph import channel_chain, consumers_of, known_dims, own_constants, set_nodes

PHASES = 4  # 2 x 2 output parities: the pool's window


def _ints(node, name: str, default: list[int]) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == name), default)


def _plain_conv(conv) -> bool:
    """A Conv with stride 1, no dilation, no padding and one group."""
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    auto_pad = next((a.s for a in conv.attribute if a.name == "auto_pad"), b"NOTSET")
    return (group == 1 and auto_pad in (b"NOTSET", b"VALID") and set(_ints(conv, "strides", [1, 1])) == {1}
            and set(_ints(conv, "dilations", [1, 1])) == {1} and set(_ints(conv, "pads", [0, 0, 0, 0])) == {0})


def _pool_2x2(pool) -> bool:
    """A MaxPool of a 2x2 window with stride 2, no padding, rounding down, and no indices output."""
    auto_pad = next((a.s for a in pool.attribute if a.name == "auto_pad"), b"NOTSET")
    ceil = next((a.i for a in pool.attribute if a.name == "ceil_mode"), 0)
    return (len(pool.output) == 1 and auto_pad in (b"NOTSET", b"VALID") and not ceil
            and _ints(pool, "kernel_shape", []) == [2, 2] and _ints(pool, "strides", [1, 1]) == [2, 2]
            and set(_ints(pool, "pads", [0, 0, 0, 0])) == {0} and set(_ints(pool, "dilations", [1, 1])) == {1})


def _block(graph, consumers):
    """(Conv, the block's nodes, the block's output) for the graph's first Conv when it is followed, each the only
    reader of the value before it, by a 2x2 MaxPool and a Relu in either order; else None."""
    conv = next((n for n in graph.node if n.op_type == "Conv"), None)
    if conv is None or not _plain_conv(conv):
        return None
    chain = channel_chain(graph, conv, consumers)[:3]
    if sorted(n.op_type for n in chain[1:]) != ["MaxPool", "Relu"]:
        return None
    pool = next(n for n in chain if n.op_type == "MaxPool")
    return (conv, chain, chain[-1].output[0]) if _pool_2x2(pool) else None


def _input_hw(model, name: str) -> tuple[int, int] | None:
    """(H, W) of the 4-D value `name` where both are known, else None."""
    dims = known_dims(model).get(name, [])
    return (dims[2], dims[3]) if len(dims) == 4 and dims[2] and dims[3] else None


def _phase_weights(weight, bias):
    """The space-to-depth convolution's weight [4F, 4C, k//2 + 1, ...] and bias [4F] from the k x k one's."""
    import numpy as np

    f, c, kh, kw = weight.shape
    out = np.zeros((PHASES * f, PHASES * c, kh // 2 + 1, kw // 2 + 1), weight.dtype)
    for a in range(2):  # output row parity
        for b in range(2):  # output column parity
            rows = slice((2 * a + b) * f, (2 * a + b + 1) * f)
            for i in range(kh):
                for j in range(kw):
                    # input row 2Y + a + i is block row Y + (a + i) // 2, in-block row (a + i) % 2 (and columns
                    # likewise); SpaceToDepth puts in-block position (p, q) in channels (2p + q) * C onwards
                    p, q = (a + i) % 2, (b + j) % 2
                    out[rows, (2 * p + q) * c:(2 * p + q + 1) * c, (a + i) // 2, (b + j) // 2] = weight[:, :, i, j]
    return out, np.tile(bias if bias is not None else np.zeros(f, weight.dtype), PHASES)


def _rewritable(model):
    """(Conv, its block's nodes, the block's output, (weight, bias or None) initializers) when the graph's first
    Conv block can be rewritten, else None."""
    graph = model.graph
    consumers = consumers_of(graph)
    found = _block(graph, consumers)
    if found is None:
        return None
    constants = own_constants(found[0], {t.name: t for t in graph.initializer}, consumers)
    hw = None if constants is None else _input_hw(model, found[0].input[0])
    if hw is None or hw[0] % 2 or hw[1] % 2:
        return None
    return (*found, constants)


def _phase_nodes(name: str, source: str, weight: str, bias: str, kernel: list[int], result: str) -> list[Any]:
    """SpaceToDepth -> Conv -> Relu -> a Slice per phase -> Max, writing `result`."""
    from onnx import helper

    nodes = [helper.make_node("SpaceToDepth", [source], [f"{name}_blocks"], name=f"{name}_space_to_depth",
                              blocksize=2),
             helper.make_node("Conv", [f"{name}_blocks", weight, bias], [f"{name}_phases"], name=name,
                              kernel_shape=kernel),
             helper.make_node("Relu", [f"{name}_phases"], [f"{name}_phases_relu"], name=f"{name}_relu")]
    nodes += [helper.make_node("Slice", [f"{name}_phases_relu", f"{name}_phase_start{p}", f"{name}_phase_end{p}",
                                         f"{name}_phase_axes"], [f"{name}_phase{p}"], name=f"{name}_phase{p}")
              for p in range(PHASES)]
    return [*nodes, helper.make_node("Max", [f"{name}_phase{p}" for p in range(PHASES)], [result],
                                     name=f"{name}_pool_of_phases")]


def space_to_depth_first_conv(model) -> tuple[Any, str] | None:
    """A copy of `model` whose first Conv block (a stride-1 Conv, then a 2x2 MaxPool and a Relu in either order)
    is SpaceToDepth -> Conv over the four output phases -> Relu -> Max of the phases, and what was done; None when
    the graph has no such block or its input's height and width are not known and even."""
    import numpy as np
    from onnx import numpy_helper

    model = copy.deepcopy(model)
    found = _rewritable(model)
    if found is None:
        return None
    conv, chain, result, (weight_t, bias_t) = found
    graph, name = model.graph, conv.name
    weight = numpy_helper.to_array(weight_t)
    weight2, bias2 = _phase_weights(weight, None if bias_t is None else numpy_helper.to_array(bias_t))
    weight_t.CopyFrom(numpy_helper.from_array(weight2, weight_t.name))
    if bias_t is None:
        bias_t = graph.initializer.add()
    bias_t.CopyFrom(numpy_helper.from_array(bias2, bias_t.name or f"{name}_phases_bias"))
    f = weight.shape[0]
    bounds = {"axes": 1, **{f"{k}{p}": v for p in range(PHASES) for k, v in (("start", p * f), ("end", (p + 1) * f))}}
    graph.initializer.extend(numpy_helper.from_array(np.array([v], np.int64), f"{name}_phase_{k}")
                             for k, v in bounds.items())
    block = _phase_nodes(name, conv.input[0], conv.input[1], bias_t.name, list(weight2.shape[2:]), result)
    nodes = list(graph.node)
    at = nodes.index(conv)
    set_nodes(graph, nodes[:at] + block + [n for n in nodes[at:] if all(n is not c for c in chain)])
    return model, (f"{name} and its 2x2 max-pool as space-to-depth, a {weight2.shape[2]}x{weight2.shape[3]} Conv "
                   f"over the {PHASES} output phases ({f} to {weight2.shape[0]} filters) and a Max of the phases")


def _scalar_params(node, constants: dict[str, Any]) -> tuple | None:
    """A QuantizeLinear's or DequantizeLinear's (scale, zero point) when both are scalar initializers, else None."""
    values = [constants.get(name) for name in node.input[1:3]]
    if len(values) < 2 or any(v is None or v.size != 1 for v in values):
        return None
    return tuple((v.dtype.str, v.item()) for v in values)


def _quantized_max(node, producers, consumers, constants) -> list[Any]:
    """Rewire `node`, a Max of DequantizeLinear outputs read by one QuantizeLinear, all of one scalar scale and zero
    point, to run on the uint8 values; the nodes it no longer needs, or [] where it is left as it is."""
    sources = [producers.get(name) for name in node.input]
    readers = consumers.get(node.output[0], [])
    if (node.op_type != "Max" or len(readers) != 1 or readers[0].op_type != "QuantizeLinear"
            or not all(s is not None and s.op_type == "DequantizeLinear" for s in sources)):
        return []
    params = {_scalar_params(n, constants) for n in [*sources, readers[0]]}
    if len(params) != 1 or None in params:
        return []
    node.input[:] = [s.input[0] for s in sources]
    node.output[0] = readers[0].output[0]
    return [readers[0], *(s for s in sources if len(consumers[s.output[0]]) == 1)]


def uint8_max(model):
    """`model` with each Max whose inputs are all DequantizeLinear of one scale and zero point, and whose only
    reader is a QuantizeLinear of the same, run on the quantized values (the Max reads the DequantizeLinear inputs
    and writes the QuantizeLinear's output); the same outputs, exactly. Other graphs are returned unchanged."""
    from onnx import numpy_helper

    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers = consumers_of(graph)
    dropped = [d for node in graph.node for d in _quantized_max(node, producers, consumers, constants)]
    if dropped:
        set_nodes(graph, [n for n in graph.node if all(n is not d for d in dropped)])
        read = {name for n in graph.node for name in n.input} | {i.name for i in graph.input}
        kept = [t for t in graph.initializer if t.name in read]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return model
