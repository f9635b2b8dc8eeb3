"""OpenCV's DNN module (5.x: its new engine, falling back to the classic importer) on the CPU."""

from __future__ import annotations

from typing import Any

import numpy as np

from toolkit import formats
from toolkit.artifacts import Artifact, read_verified
from toolkit.errors import ArtifactError
from toolkit.runners.base import Runner, RunnerOptions, load_error

RUNTIME = "opencv"


def read_net(data: bytes, threads: int | None, label: str) -> Any:
    """An OpenCV DNN network from .onnx bytes."""
    import cv2

    if threads:
        cv2.setNumThreads(threads)
    try:
        return cv2.dnn.readNetFromONNX(np.frombuffer(data, np.uint8))
    except Exception as e:  # cv2.error
        raise load_error(label, RUNTIME, e) from None


class OpenCvRunner(Runner):
    """A network whose input kind is given (OpenCV does not say what it expects), checked by its outputs."""

    runtime = RUNTIME

    def __init__(self, net: Any, label: str, kind: str, options: RunnerOptions) -> None:
        super().__init__(label, kind, options)
        self.net = net
        try:
            found = set(net.getUnconnectedOutLayersNames())
        except Exception as e:  # cv2.error
            raise load_error(label, RUNTIME, e) from None
        if not set(self.outputs) <= found:  # asked for by name: OpenCV lists its outputs in its own order
            raise ArtifactError(f"{label}: OpenCV finds outputs {', '.join(sorted(found))}, "
                                f"not {', '.join(self.outputs)}")

    def settings(self) -> dict[str, Any]:
        return {"device": "cpu", "threads": self.options.threads}

    def _infer(self, native: Any) -> list[Any]:
        self.net.setInput(native)
        return list(self.net.forward(list(self.outputs)))


def open_artifact(artifact: Artifact, options: RunnerOptions) -> OpenCvRunner:
    net = read_net(read_verified(artifact), options.threads, artifact.file)
    return OpenCvRunner(net, artifact.file, formats.kind_of(artifact.format), options)
