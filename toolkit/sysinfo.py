"""What produced a file: tool versions and the machine, recorded in checkpoints, manifests and results; and which
optional packages this install has."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from typing import Any

import toolkit

_PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime-gpu", "onnxruntime", "onnxslim", "numpy")


def versions(*packages: str) -> dict[str, str]:
    """Versions of toolkit, Python and the given installed packages (all known ones when none given)."""
    found = {"toolkit": toolkit.__version__, "python": platform.python_version()}
    for name in packages or _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def installed(module: str) -> bool:
    """Whether `module` can be imported here, without importing it. An import hook that refuses it counts as
    missing, as it would refuse the real import too: a process that blocks torch sees what a torch-free install
    sees."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _cpuinfo(keys: tuple[str, ...], path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first value the kernel's CPU description gives each of `keys` (the first processor's, where every
    processor repeats them); {} where there is no such file (not Linux)."""
    found: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in keys and key not in found:
                    found[key] = value.strip()
                    if len(found) == len(keys):
                        break
    except OSError:
        pass
    return found


def cpu_model() -> str:
    name = _cpuinfo(("model name",)).get("model name")
    return name if name is not None else platform.processor() or platform.machine()


# CPU flags (Linux /proc/cpuinfo) that mean bf16 arithmetic in hardware; without them OpenVINO emulates bf16,
# slower than f32, so nobody would deploy that mode there.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as the kernel reports them; empty where there is no such file (not Linux)."""
    return frozenset(_cpuinfo(("flags",), path).get("flags", "").split())


def cpu_id(path: str = "/proc/cpuinfo") -> str | None:
    """The x86 CPU's family and model numbers as the kernel reports them ('family 26, model 2'): what tells apart
    CPUs that a virtual machine names alike ('AMD EPYC'); None where the file does not say."""
    fields = _cpuinfo(("cpu family", "model"), path)
    if not all(v.isascii() and v.isdigit() for v in (fields.get("cpu family", ""), fields.get("model", ""))):
        return None
    return f"family {fields['cpu family']}, model {fields['model']}"


def native_bf16(flags: frozenset[str] | set[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX); `flags` defaults to this CPU's."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def physical_cores(topology: str = "/sys/devices/system/cpu") -> int:
    """Physical cores among the CPUs this process may run on: the two hyperthreads of a core count once. Where
    the kernel does not say which CPUs share a core (not Linux), every usable CPU counts as a core."""
    if not hasattr(os, "sched_getaffinity"):
        return usable_cores()
    cores = set()
    for cpu in os.sched_getaffinity(0):
        try:
            with open(f"{topology}/cpu{cpu}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:
            return usable_cores()
    return len(cores) or usable_cores()


def machine() -> dict[str, Any]:
    """CPU model (with its family and model numbers where the kernel gives them) and core count, and the GPU
    (name, driver, CUDA) when torch sees one."""
    ident = cpu_id()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        **({"cpu_id": ident} if ident else {}),
        "cpu_cores": usable_cores(),
        "native_bf16": native_bf16(),
        "platform": platform.platform(),
        "gpu": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                           "cuda": torch.version.cuda, "driver": _nvidia_driver()}
    except ImportError:
        pass
    return info


def _nvidia_driver() -> str | None:
    try:
        with open("/proc/driver/nvidia/version") as f:
            first = f.readline()
        return next((tok for tok in first.split() if tok[:1].isascii() and tok[:1].isdigit() and "." in tok), None)
    except OSError:
        return None
