"""PyTorch: the eager model from the checkpoint, and TorchScript archives (the toolkit's and foreign ones).

The loaders (`load_eager`, `load_torchscript`) check the device first and return the module on it; one
runner class runs either. torch is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit import devices, formats
from toolkit.artifacts import Artifact, read_verified
from toolkit.errors import ArtifactError, ProviderUnavailable
from toolkit.runners.base import Runner, RunnerOptions, Timed

if TYPE_CHECKING:
    from toolkit.checkpoint import RecordedCheckpoint


def check_device(device: str) -> None:
    """ProviderUnavailable when torch cannot run on `device` here."""
    if devices.torch_unavailable(device):
        raise ProviderUnavailable("torch sees no CUDA device for the PyTorch/TorchScript runners; "
                                  "pass --runtime onnxruntime to use ONNX Runtime alone")


def load_torchscript(data: bytes, device: str, label: str, *,
                     what: str = "is not a loadable TorchScript file") -> Any:
    """A TorchScript archive's module on `device`, from bytes already read (and hash-checked where a manifest
    lists them). Loading runs the archive's code: only load files you trust. ArtifactError "<label> <what>
    (<torch's first line>)" when torch cannot load it."""
    import torch

    check_device(device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            return torch.jit.load(io.BytesIO(data), map_location=devices.torch_device(device))
    except Exception as e:  # torch.jit raises RuntimeError and others for damaged archives
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{label} {what} ({first})") from None


def load_eager(checkpoint: str | RecordedCheckpoint, device: str) -> Any:
    """The checkpoint's model, rebuilt from the file alone, on `device`; a RecordedCheckpoint's from the bytes it
    holds, read and checked against its manifest once (checkpoint.read_recorded), never from the file again."""
    from toolkit.checkpoint import RecordedCheckpoint, load_model
    from toolkit.errors import CheckpointError
    from toolkit.usermodel import ModelCodeNeeded

    try:
        if isinstance(checkpoint, RecordedCheckpoint):
            model = checkpoint.model()
        else:
            model = load_model(checkpoint)
    except ModelCodeNeeded:
        raise CheckpointError(f"{checkpoint} holds the weights of a class from model code, which the toolkit imports "
                              "only when export is told to: the PyTorch eager baseline cannot be rebuilt; leave it "
                              "out by naming the runtimes (e.g. --runtime onnxruntime,torch-export)") from None
    check_device(device)
    return model.to(devices.torch_device(device))


class TorchRunner(Runner):
    """A torch module (eager from the checkpoint, or a TorchScript archive) on the CPU or CUDA."""

    def __init__(self, module: Any, label: str, runtime: str, options: RunnerOptions) -> None:
        super().__init__(label, formats.NORMALIZED, options)
        self.runtime = runtime
        self.device = devices.torch_device(options.device)
        self.module = module

    def _host_input(self, pixels: np.ndarray) -> Any:
        """uint8 pixels -> this module's input tensor on the CPU."""
        import torch

        return torch.from_numpy(super()._feed(pixels))

    def _feed(self, pixels: np.ndarray) -> Any:
        return self._host_input(pixels).to(self.device)

    def _infer(self, native: Any) -> list[Any]:
        import torch

        with torch.inference_mode():
            return [self.module(native).float().cpu().numpy()]

    def timed(self, batches: list[np.ndarray], io: str = "host") -> Timed:
        import torch

        host = [self._host_input(b) for b in batches]
        module, device = self.module, self.device
        if device == "cpu" or io == "host":
            def run_host(i: int) -> Any:
                with torch.inference_mode():
                    return module(host[i % len(host)].to(device)).cpu()
            return Timed(run_host)
        resident = [x.to(device) for x in host]

        def run_device(i: int) -> Any:
            with torch.inference_mode():
                y = module(resident[i % len(resident)])
            torch.cuda.synchronize()
            return y
        return Timed(run_device)


def open_eager(checkpoint: str | RecordedCheckpoint, options: RunnerOptions) -> TorchRunner:
    return TorchRunner(load_eager(checkpoint, options.device), str(checkpoint), "pytorch", options)


def open_scripted(artifact: Artifact, options: RunnerOptions, data: bytes | None = None) -> TorchRunner:
    """`data`: the artifact's bytes, already read and checked against its manifest entry (None: read them)."""
    check_device(options.device)  # before reading: no GPU here is the first thing to say
    module = load_torchscript(read_verified(artifact) if data is None else data, options.device, artifact.file)
    return TorchRunner(module, artifact.file, "torchscript", options)
