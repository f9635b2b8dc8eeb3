"""A Triton Inference Server model repository laid out from exported artifacts.

`<out>/triton/<model>/config.pbtxt` and `<out>/triton/<model>/1/model.onnx` (or `model.pt` for Triton's
PyTorch backend), one model per artifact, with names, data types and dims taken from the artifact's manifest
entry. The repository is built beside the old one and swapped in, so a reader never sees half of it.
Not a format of its own (formats.py has no row for it): it serves copies of the fp32 files built beside it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from toolkit import fileio
from toolkit.artifacts import TRITON_REPOSITORY, Artifact
from toolkit.errors import ConfigError, OutputError
from toolkit.formats import FORMATS

REPOSITORY = TRITON_REPOSITORY
DEFAULT_MAX_BATCH_SIZE = 1024
MAX_MAX_BATCH_SIZE = 65536
PREFERRED_BATCH_SIZES = (64, 256)
MAX_QUEUE_DELAY_US = 100
# The Triton model name of each format the repository serves (its fp32 file), in the repository's order.
_MODEL_NAMES = {"onnx": "mnist_convnet", "onnx-app": "mnist_convnet_app", "torchscript": "mnist_convnet_torchscript"}
ARTIFACTS = tuple((fmt, "fp32") for fmt in _MODEL_NAMES)  # what the repository serves

_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int64": "TYPE_INT64"}
_TORCH_PLATFORM = "pytorch_libtorch"  # Triton's PyTorch backend, which names tensors by position
# (Triton platform, file name in the version folder) per native runtime of a served format
_PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "model.onnx"), "torchscript": (_TORCH_PLATFORM, "model.pt")}


@dataclass
class TritonModel:
    name: str
    artifact: str  # the exported file it serves
    platform: str
    config: str  # config.pbtxt text


def model_name(artifact: Artifact) -> str:
    return _MODEL_NAMES[artifact.format]


def _platform(artifact: Artifact) -> tuple[str, str]:
    """(Triton platform, file name in the version folder) of an artifact's format."""
    return _PLATFORMS[FORMATS[artifact.format].native_runtime]


def _tensor(spec: dict, torchscript_index: int | None) -> str:
    """One input/output entry; the batch dimension is Triton's, a per-item scalar becomes dims [1] + reshape []."""
    if spec["dtype"] not in _TYPES:
        raise ConfigError(f"Triton has no data type for {spec['dtype']}")
    dims = [int(d) for d in spec["shape"][1:]]
    # Triton's PyTorch backend names tensors by position: <name>__<index>
    name = spec["name"] if torchscript_index is None else f"{spec['name']}__{torchscript_index}"
    lines = [f'    name: "{name}"', f"    data_type: {_TYPES[spec['dtype']]}",
             f"    dims: [ {', '.join(map(str, dims or [1]))} ]"]
    if not dims:
        lines.append("    reshape: { shape: [ ] }")
    return "  {\n" + "\n".join(lines) + "\n  }"


def model_config(artifact: Artifact, max_batch_size: int) -> TritonModel:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) for one artifact."""
    platform, _ = _platform(artifact)
    ts = platform == _TORCH_PLATFORM
    inputs = ",\n".join(_tensor(s, i if ts else None) for i, s in enumerate(artifact.inputs))
    outputs = ",\n".join(_tensor(s, i if ts else None) for i, s in enumerate(artifact.outputs))
    preferred = [b for b in PREFERRED_BATCH_SIZES if b <= max_batch_size]
    name = model_name(artifact)
    text = (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch_size}\n'
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
            "dynamic_batching {\n"
            + (f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n" if preferred else "")
            + f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}\n}}\n"
            f'parameters {{ key: "toolkit.source_sha256" value: {{ string_value: "{artifact.sha256}" }} }}\n')
    return TritonModel(name, artifact.file, platform, text)


def stage_repository(out_dir: str | os.PathLike, artifacts: list[Artifact],
                     max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, sources: dict[str, Path] | None = None
                     ) -> tuple[list[TritonModel], Path]:
    """The repository for the served artifacts, laid out in a hidden folder of `out_dir` (the export's commit puts
    it in place: toolkit/staging.py); `sources`: where an artifact's file is while it is not yet in `out_dir`."""
    if not 1 <= max_batch_size <= MAX_MAX_BATCH_SIZE:
        raise ConfigError(f"Triton max batch size must be between 1 and {MAX_MAX_BATCH_SIZE}, got {max_batch_size}")
    out_dir = Path(out_dir)
    served = [a for a in artifacts if (a.format, a.precision) in ARTIFACTS]
    models = [model_config(a, max_batch_size) for a in served]
    target = out_dir / REPOSITORY
    staging = None
    try:
        staging = fileio.scratch_folder(out_dir, fileio.TRITON_SCRATCH)
        for model, artifact in zip(models, served):
            version = staging / model.name / "1"
            version.mkdir(parents=True)
            shutil.copyfile((sources or {}).get(artifact.file, out_dir / artifact.file),
                            version / _platform(artifact)[1])
            (staging / model.name / "config.pbtxt").write_text(model.config)
        os.chmod(staging, 0o755)
    except OSError as e:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write the Triton repository in {target}: {e.strerror or e}") from None
    return models, staging
