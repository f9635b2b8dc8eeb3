"""The devices a model runs on, and whether each engine family can use one here.

One name per device (cpu, cuda, tensorrt) across the code and the CLI; each row says what ONNX Runtime calls
it (its execution provider) and which torch device runs it (torch runs tensorrt rows as cuda). A command
checks its device names once (`check`); the runners ask `onnxruntime_unavailable` or `torch_unavailable`
for a reason before they load anything, so nothing labelled CUDA ever runs on the CPU.

Torch-free: onnxruntime and torch are imported only by the checks that need them.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

from toolkit import sysinfo
from toolkit.errors import ConfigError


@dataclass(frozen=True)
class Device:
    """One row of DEVICES."""

    name: str
    provider: str  # ONNX Runtime's execution provider
    torch: str  # the torch device that runs it
    provider_library: str = ""  # the provider's shared library in onnxruntime/capi ("" for the built-in CPU one)


DEVICES: dict[str, Device] = {d.name: d for d in (
    Device("cpu", "CPUExecutionProvider", "cpu"),
    Device("cuda", "CUDAExecutionProvider", "cuda", "libonnxruntime_providers_cuda.so"),
    Device("tensorrt", "TensorrtExecutionProvider", "cuda", "libonnxruntime_providers_tensorrt.so"),
)}
CPU = "cpu"


def check(name: str, *also: str) -> Device | None:
    """The device `name` names, or ConfigError unless it is known (or one of `also`, such as 'all': None)."""
    if name in DEVICES:
        return DEVICES[name]
    if name in also:
        return None
    raise ConfigError(f"unknown provider {name!r}; choose one of: {', '.join([*DEVICES, *also])}")


def torch_device(name: str) -> str:
    """The torch device that runs device `name` ('cpu' or 'cuda')."""
    return DEVICES[name].torch


def onnxruntime_unavailable(name: str) -> str | None:
    """Why this onnxruntime build cannot run on device `name`; None when it offers the device's provider."""
    import onnxruntime as ort

    offered = ort.get_available_providers()
    wanted = DEVICES[name].provider
    if wanted in offered:
        return None
    return (f"ONNX Runtime {ort.__version__} here offers {', '.join(offered)}, not {wanted}; "
            "install onnxruntime-gpu on a machine with a GPU")


def onnxruntime_load_failure(name: str) -> str:
    """Why a provider that onnxruntime offers did not load: its shared library's loader error names the
    missing CUDA/TensorRT library (ONNX Runtime itself only says that it fell back to the CPU)."""
    import onnxruntime as ort

    lib = Path(ort.__file__).parent / "capi" / DEVICES[name].provider_library
    if not lib.is_file():
        return f"this onnxruntime build has no {lib.name}; install onnxruntime-gpu"
    try:
        ctypes.CDLL(str(lib))
    except OSError as e:
        return str(e)
    return "the provider library loads, but no usable GPU or driver was found"


def torch_unavailable(name: str) -> str | None:
    """Why torch cannot run on device `name` here; None when it can (always on the CPU)."""
    if DEVICES[name].torch == "cpu":
        return None
    if not sysinfo.installed("torch"):
        return "torch is not installed"
    import torch

    if torch.cuda.is_available():
        return None
    built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return f"torch ({built}) finds no usable GPU"


def expand(requested: tuple[str, ...] | list[str]) -> tuple[list[str], dict[str, str]]:
    """The devices to use: the names as given, or for 'all' every device that really loads here (the others
    skipped with a note). An explicit device that cannot load fails later, when a runner opens on it."""
    for name in requested:
        check(name, "all")
    if "all" not in requested:
        return list(dict.fromkeys(requested)), {}
    usable, skipped = [], {}
    for name, device in DEVICES.items():
        if onnxruntime_unavailable(name):
            skipped[name] = f"{device.provider} is not in this onnxruntime build"
        elif name != CPU and not sysinfo.installed("torch"):
            skipped[name] = "cannot look for a CUDA device without torch; name the provider to try it"
        elif torch_unavailable(name):
            skipped[name] = "no CUDA device visible"
        else:
            usable.append(name)
    return usable, skipped
