"""Small hand-built ONNX files for the hostile tests: a Loop that never ends, constant-output classifiers with
toolkit metadata, and a classifier whose input is not MNIST-shaped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _save(graph, path: Path, metadata: dict[str, str] | None = None) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def toolkit_metadata(**changes: str | None) -> dict[str, str]:
    """Metadata like an exported model's; a value of None leaves that key out."""
    meta = {"toolkit.format_version": "1", "mean": "0.1307", "std": "0.3081",
            "labels": json.dumps([str(d) for d in range(10)]), "output": "log_probs: float32 [N,10]"}
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


def endless_loop(path: Path, image: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """A Loop of 2**62 trips. image=True: float [N,1,28,28] -> [N,10] (with toolkit metadata, predict opens
    it); else float [N,10] -> [N,10] (fed random data)."""
    from onnx import TensorProto as T
    from onnx import helper as h

    body = h.make_graph(
        [h.make_node("Identity", ["c_in"], ["c_out"]), h.make_node("Add", ["x_in", "one"], ["x_out"])], "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("c_in", T.BOOL, []),
         h.make_tensor_value_info("x_in", T.FLOAT, None)],
        [h.make_tensor_value_info("c_out", T.BOOL, []), h.make_tensor_value_info("x_out", T.FLOAT, None)],
        [h.make_tensor("one", T.FLOAT, [], [1.0])])
    nodes = [h.make_node("Constant", [], ["M"], value=h.make_tensor("M", T.INT64, [], [2 ** 62])),
             h.make_node("Constant", [], ["C"], value=h.make_tensor("C", T.BOOL, [], [True]))]
    if image:
        nodes += [h.make_node("Constant", [], ["shape"], value=h.make_tensor("shape", T.INT64, [2], [0, -1])),
                  h.make_node("Reshape", ["x", "shape"], ["flat"]),
                  h.make_node("Slice", ["flat", "starts", "ends", "axes"], ["start"])]
        inits = [h.make_tensor("starts", T.INT64, [1], [0]), h.make_tensor("ends", T.INT64, [1], [10]),
                 h.make_tensor("axes", T.INT64, [1], [1])]
        shape: list = ["N", 1, 28, 28]
    else:
        nodes += [h.make_node("Identity", ["x"], ["start"])]
        inits, shape = [], ["N", 10]
    nodes.append(h.make_node("Loop", ["M", "C", "start"], ["y"], body=body))
    out = "log_probs" if image else "y"
    if image:
        nodes.append(h.make_node("Identity", ["y"], [out]))
    graph = h.make_graph(nodes, "endless", [h.make_tensor_value_info("x", T.FLOAT, shape)],
                         [h.make_tensor_value_info(out, T.FLOAT, ["N", 10])], inits)
    return _save(graph, path, metadata)


def constant_classifier(path: Path, scores: list[float], metadata: dict[str, str] | None = None,
                        input_shape: tuple = ("N", 1, 28, 28), uint8: bool = False) -> Path:
    """float (or `uint8`) input -> the same ten `scores` for every image (output named log_probs)."""
    from onnx import TensorProto as T
    from onnx import helper as h

    features = int(np.prod([d for d in input_shape[1:]]))
    nodes = [h.make_node("Reshape", ["xf" if uint8 else "x", "shape"], ["flat"]),
             h.make_node("MatMul", ["flat", "w"], ["zero"]), h.make_node("Add", ["zero", "b"], ["log_probs"])]
    if uint8:  # raw pixels in, as floats into the rest
        nodes.insert(0, h.make_node("Cast", ["x"], ["xf"], to=T.FLOAT))
    inits = [h.make_tensor("shape", T.INT64, [2], [0, -1]),
             h.make_tensor("w", T.FLOAT, [features, 10], np.zeros(features * 10, np.float32).tolist()),
             h.make_tensor("b", T.FLOAT, [10], [float(v) for v in scores])]
    x = h.make_tensor_value_info("x", T.UINT8 if uint8 else T.FLOAT, list(input_shape))
    graph = h.make_graph(nodes, "constant", [x], [h.make_tensor_value_info("log_probs", T.FLOAT, ["N", 10])], inits)
    return _save(graph, path, metadata)


def linear_classifier(path: Path, input_type: str = "float32", seed: int = 0) -> Path:
    """A seeded linear classifier, logits out. float32 input [N,1,28,28]: pixels normalized by the feeder, as
    (pixel/255 - 0.1307) / 0.3081; an integer `input_type` [N,28,28]: the raw pixels 0..255, which the graph
    normalizes the same way, so both files give the same scores for the same images."""
    from onnx import TensorProto as T
    from onnx import helper as h

    w = np.random.default_rng(seed).standard_normal((784, 10)).astype(np.float32) * 0.05
    nodes = [h.make_node("Reshape", ["xn", "shape"], ["flat"]), h.make_node("MatMul", ["flat", "w"], ["logits"])]
    inits = [h.make_tensor("shape", T.INT64, [2], [0, -1]), h.make_tensor("w", T.FLOAT, [784, 10], w.ravel())]
    if input_type == "float32":
        nodes.insert(0, h.make_node("Identity", ["x"], ["xn"]))
        x = h.make_tensor_value_info("x", T.FLOAT, ["N", 1, 28, 28])
    else:
        nodes[:0] = [h.make_node("Cast", ["x"], ["xf"], to=T.FLOAT), h.make_node("Div", ["xf", "max"], ["x01"]),
                     h.make_node("Sub", ["x01", "mean"], ["xc"]), h.make_node("Div", ["xc", "std"], ["xn"])]
        inits += [h.make_tensor(n, T.FLOAT, [], [v]) for n, v in (("max", 255.0), ("mean", 0.1307), ("std", 0.3081))]
        x = h.make_tensor_value_info("x", h.np_dtype_to_tensor_dtype(np.dtype(input_type)), ["N", 28, 28])
    graph = h.make_graph(nodes, "linear", [x], [h.make_tensor_value_info("logits", T.FLOAT, ["N", 10])], inits)
    return _save(graph, path)


def swapped_after_read(monkeypatch, other: Path) -> list[Path]:
    """Make every read of a model file by `toolkit.runners.foreign` replace the file with `other` once it has been
    read, as a writer racing the toolkit would; the paths read are listed in the list returned."""
    import shutil

    from toolkit.runners import foreign

    reads, read = [], foreign.read_listed_model_file

    def read_then_replace(p):
        read_back = read(p)
        reads.append(p)
        shutil.copy(other, p)
        return read_back

    monkeypatch.setattr(foreign, "read_listed_model_file", read_then_replace)
    return reads
