"""ExecuTorch (`executorch.runtime`) on the CPU, running the .pte programs with their XNNPACK delegate.

The runtime takes and returns torch tensors, so this runner needs torch. A program's input buffer is planned
for a largest batch (read from the program itself); larger batches are fed that many images at a time.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from toolkit import formats, native_logs
from toolkit.artifacts import PTE_METADATA_METHOD, Artifact, read_verified
from toolkit.errors import ArtifactError
from toolkit.metadata import Normalization, json_object, read_normalization
from toolkit.refinputs import declares_own_input
from toolkit.runners.base import Runner, RunnerOptions, load_error

RUNTIME = "executorch"


def load_program(data: bytes, label: str) -> Any:
    """The ExecuTorch program in the (hash-checked) bytes. The program reads them in place: whoever holds the
    program must hold the bytes too (ExecuTorchRunner does)."""
    with native_logs.silenced():  # importing it logs a torch deprecation warning
        from executorch.runtime import Runtime  # outside the try: a missing runtime is no unreadable file
    try:
        with native_logs.silenced():
            return Runtime.get().load_program(data)
    except Exception as e:  # the runtime raises RuntimeError/ValueError for what it cannot read
        raise load_error(label, RUNTIME, e) from None


def read_metadata(program: Any, label: str) -> dict[str, str]:
    """The toolkit metadata the program carries as its constant method PTE_METADATA_METHOD."""
    if PTE_METADATA_METHOD not in program.method_names:
        raise ArtifactError(f"{label} is not a toolkit model (no {PTE_METADATA_METHOD} method); "
                            "export one with `toolkit export`")
    try:
        metadata = json.loads(program.load_method(PTE_METADATA_METHOD).execute([])[0])
    except Exception as e:  # a method that is not a JSON string
        raise load_error(label, RUNTIME, e) from None
    return json_object(metadata, label, f"{PTE_METADATA_METHOD} method")


class ExecuTorchRunner(Runner):
    """The program's forward method; images go through it at most `max_batch` at a time."""

    runtime = RUNTIME

    def __init__(self, program: Any, data: bytes, label: str, options: RunnerOptions,
                 normalization: Normalization, metadata: dict[str, str] | None = None) -> None:
        super().__init__(label, formats.NORMALIZED, options)
        self._program, self._data = program, data  # the method runs from both: freeing either crashes it
        try:
            with native_logs.silenced():
                self.method = program.load_method("forward")
            sizes = list(program.metadata("forward").input_tensor_meta(0).sizes())
        except Exception as e:  # a program without a usable forward method
            raise load_error(label, RUNTIME, e) from None
        # [N,1,28,28], or the model's own input where the file says so (an export made with --input-shape)
        if sizes[1:] != [1, 28, 28] and not declares_own_input(sizes[1:], metadata or {}):
            raise ArtifactError(f"{label}: input is {sizes}; toolkit .pte files take [N,1,28,28] or the input "
                                "shape their metadata's input_layout declares")
        self.max_batch = int(sizes[0])
        self.mean, self.std = normalization.mean, normalization.std

    def settings(self) -> dict[str, Any]:
        return {"device": "cpu", "delegate": "xnnpack", "max_batch": self.max_batch}

    def _feed(self, pixels: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(super()._feed(pixels))

    def _infer(self, native: Any) -> list[Any]:
        step = self.max_batch
        # the output lives in the program's planned memory, which the next call overwrites: copied out
        parts = [self.method.execute([native[i:i + step]])[0].numpy().copy() for i in range(0, len(native), step)]
        return [parts[0] if len(parts) == 1 else np.concatenate(parts)]


IDENTIFIER = b"ET12"  # the flatbuffer file identifier of an ExecuTorch program, at bytes 4..8


def open_bytes(data: bytes, label: str, options: RunnerOptions, declared_format: str | None = None) -> ExecuTorchRunner:
    """A toolkit .pte from its (hash-checked) bytes; with `declared_format`, its metadata must say that format."""
    program = load_program(data, label)
    metadata = read_metadata(program, label)
    if declared_format and metadata.get("artifact_format") != declared_format:
        raise ArtifactError(f"{label}: its metadata says {metadata.get('artifact_format')!r}, "
                            f"the manifest {declared_format}")
    return ExecuTorchRunner(program, data, label, options, read_normalization(metadata, label), metadata)


def open_artifact(artifact: Artifact, options: RunnerOptions) -> ExecuTorchRunner:
    """A manifest artifact in ExecuTorch, from its hash-checked bytes."""
    return open_bytes(read_verified(artifact), artifact.file, options, artifact.format)
