"""The aoti format: the torch.export program compiled ahead of time by AOTInductor into a package.

The package is a PT2 archive holding a shared library compiled for this machine's CPU (model name "model")
and, where torch sees a CUDA device at export time, a second one compiled for CUDA (model name "cuda"; the
names are runners.torch_export.AOTI_MODELS).
Python loads it with `torch._inductor.aoti_load_package`, C++ with `torch::inductor::AOTIModelPackageLoader`
(examples/cpp). The metadata is carried twice: as the archive's extra file (read without loading anything)
and as the compiled model's own metadata (what `AOTIModelPackageLoader::get_metadata()` returns in C++).

A shared library is code: loading the package runs it.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from toolkit.artifacts import META_KEY
from toolkit.exporters import BuildOptions, Built, ExportContext, quiet
from toolkit.exporters.pt2 import MIN_BATCH, export_program
from toolkit.runners.torch_export import AOTI_MODELS


def _compile(module: nn.Module, device: str, metadata: dict[str, str], work: Path, ctx: ExportContext) -> list:
    """AOTInductor's files (sources, shared library, metadata) for `module` on `device`, written under `work`."""
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    program = export_program(module, device, example=ctx.example(device=device))
    args, kwargs = program.example_inputs
    # Compiled from scratch, sharing nothing with other processes: Inductor's cache (and the precompiled
    # headers it keeps in a global folder that no cache setting moves) outlives a killed compile, and a
    # half-written header file there fails every later compile with "cannot read PCH file".
    options = {"aot_inductor.package": True, "aot_inductor.output_path": str(work / device),
               "aot_inductor.metadata": dict(metadata), "aot_inductor.precompile_headers": False}
    # Inductor first proves each SIMD instruction set that /proc/cpuinfo lists by compiling and loading a probe
    # library with it, a large part of the compile, paid again in every fresh cache.
    # The CPU's own flags are trusted instead; a compiler that cannot target them gets the probes on a retry.
    try:
        with quiet(), temporary_cache_dir(str(work / f"cache-{device}")):
            return torch._inductor.aot_compile(program.module(check_guards=False), args, kwargs,
                                               options={**options, "cpp.vec_isa_ok": True})
    except Exception:  # any failure: the probed compile below raises it again if it is real
        from torch._inductor.cpu_vec_isa import valid_vec_isa_list

        valid_vec_isa_list.cache_clear()  # the list made without probes would be reused
    with quiet(), temporary_cache_dir(str(work / f"cache-{device}-probed")):
        return torch._inductor.aot_compile(program.module(check_guards=False), args, kwargs, options=options)


def build(module: nn.Module, precision: str, options: BuildOptions, ctx: ExportContext, tmp: Path,
          metadata: dict[str, str]) -> Built:
    """Compile `module` (fp32) for the CPU, and for CUDA when torch sees a GPU, into one package with
    `metadata`."""
    # torch.export.save's own packer, which package_aoti calls too; it alone also takes extra files
    from torch.export.pt2_archive._package import package_pt2

    devices = {d: AOTI_MODELS[d] for d in ("cpu", *(["cuda"] if torch.cuda.is_available() else []))}
    with tempfile.TemporaryDirectory(prefix="toolkit-aoti-") as work:
        files = {name: _compile(copy.deepcopy(module), d, metadata, Path(work), ctx) for d, name in devices.items()}
        with quiet(), open(tmp, "wb") as f:
            package_pt2(f, aoti_files=files, extra_files={META_KEY: json.dumps(metadata, indent=1)})
    return Built(settings={"dynamic_batch": True, "min_batch": MIN_BATCH, "models": devices})
