"""The runner interface every runtime implements, and the error helpers they share.

A runner is one model loaded in one runtime on one device. It takes uint8 pixels [N, 28, 28] and returns
named outputs (`formats.OUTPUTS` of its input kind): `log_probs` for the normalized models, `probabilities`
and `digit` for the app model. It can also be prepared for timing (`timed`: inputs converted once, I/O bound,
CUDA graphs). Each runtime's module builds its native object with a loader from hash-checked bytes and hands
it to its runner class.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit import formats
from toolkit.errors import ArtifactError, ConfigError, ToolkitError
from toolkit.preprocess import MEAN, STD, normalize

IO_MODES = ("host", "device")  # host: inputs from numpy and outputs back (copies timed); device: resident


@dataclass(frozen=True)
class RunnerOptions:
    """How to open a runner; each runtime reads the fields that apply to it."""

    device: str = "cpu"  # a key of devices.DEVICES (torch runs tensorrt rows as cuda)
    threads: int | None = None  # intra-op threads on the CPU; None: the runtime's default
    optimization: str = "all"  # ONNX Runtime graph optimization level
    mode: str = formats.DEFAULT_MODE  # the runtime's compute mode (formats.MODES): OpenVINO's f32 (parity) or bf16
    hint: str = "latency"  # OpenVINO performance hint: latency (one call at a time) or throughput (async queue)
    cuda_graph: bool = False  # ONNX Runtime CUDA: replay a CUDA graph (device-resident I/O)


@dataclass
class Timed:
    """A prepared timing loop body: `call(i)` runs batch i (of the rotated ones) `batches_per_call` at a time."""

    call: Callable[[int], Any]
    batches_per_call: int = 1


class Runner:
    """One model loaded in one runtime. Subclasses set `runtime` and implement `_infer` (and `_feed` when their
    input is not a numpy array)."""

    runtime = ""

    def __init__(self, label: str, kind: str, options: RunnerOptions) -> None:
        self.label = label  # the file (or checkpoint) it was opened from, for messages
        self.kind = kind  # formats.NORMALIZED or formats.APP ("foreign" for files the toolkit did not make)
        self.options = options
        self.mean, self.std = MEAN, STD

    @property
    def outputs(self) -> tuple[str, ...]:
        return formats.OUTPUTS[self.kind]

    def settings(self) -> dict[str, Any]:
        """What this runner was opened with, as recorded in results."""
        return {"device": self.options.device}

    def _feed(self, pixels: np.ndarray) -> Any:
        """uint8 pixels -> this runtime's input (normalized floats for the normalized models)."""
        return pixels if self.kind == formats.APP else normalize(pixels, self.mean, self.std)

    def _infer(self, native: Any) -> list[Any]:
        raise NotImplementedError

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for uint8 pixels [N, 28, 28]; a failure inside the model is an ArtifactError."""
        with run_guard(self):
            raw = self._infer(self._feed(pixels))
        if len(raw) != len(self.outputs):
            raise ArtifactError(f"{self.label} on {self.runtime} returned {len(raw)} outputs, expected "
                                f"{len(self.outputs)} ({', '.join(self.outputs)})")
        return {name: np.asarray(value) for name, value in zip(self.outputs, raw)}

    def timed(self, batches: list[np.ndarray], io: str = "host") -> Timed:
        """A loop body for bench: inputs converted once, so only the runtime's call is timed."""
        with run_guard(self):
            inputs = [self._feed(b) for b in batches]
        return Timed(lambda i: self._infer(inputs[i % len(inputs)]))


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's text on one line, cut at `limit` characters (its type's name when it has none)."""
    return " ".join(str(e).split())[:limit] or type(e).__name__


@contextlib.contextmanager
def run_guard(runner: Runner) -> Iterator[None]:
    """Turn what a runtime raises while running into typed errors: memory -> ConfigError, else ArtifactError."""
    try:
        yield
    except ToolkitError:
        raise
    except MemoryError:
        raise ConfigError(f"not enough memory to run {runner.label} on {runner.runtime}; use smaller batches") from None
    except Exception as e:  # each runtime raises its own types (ORT's Fail/RuntimeException, cv2.error, ...)
        text = one_line(e)
        if "alloc" in text.lower() or "out of memory" in text.lower():
            raise ConfigError(f"cannot allocate memory to run {runner.label} on {runner.runtime} "
                              f"({text[:120]}); use smaller batches") from None
        raise ArtifactError(f"{runner.label} failed while running on {runner.runtime}: {text}") from None


def load_error(label: str, runtime: str, e: Exception) -> ArtifactError:
    """The error for a file `runtime` cannot read or compile."""
    return ArtifactError(f"{runtime} cannot load {label}: {one_line(e)}")


def check_kind(label: str, declared_format: str, found_kind: str) -> None:
    """ArtifactError when a file's input is not the kind its manifest's format says."""
    if formats.kind_of(declared_format) != found_kind:
        raise ArtifactError(f"{label}: manifest says {declared_format} but its input is {found_kind}")
