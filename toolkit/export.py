"""Export a checkpoint to ONNX (fp32, fp16, int8, app-ready) and TorchScript, with metadata and a manifest.

One table, FORMATS, says which formats exist, which precisions each supports and how each is built; option
checking and dispatch both read it. Every file is written atomically and checked before it is listed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit import data as mnist
from toolkit import fileio, golden, sysinfo
from toolkit import formats as vocabulary
from toolkit.artifacts import (
    GOLDEN_NAME,
    MANIFEST_NAME,
    META_KEY,
    RESULT_FILES,
    Artifact,
    GoldenEntry,
    read_golden_entry,
    read_manifest,
    write_manifest,
)
from toolkit.checkpoint import model_from_checkpoint, read_checkpoint
from toolkit.errors import ArtifactError, ConfigError, ToolkitError
from toolkit.formats import (
    DEFAULT_CALIBRATION_SIZE,
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    QUANT_ACTIVATIONS,
    QUANT_FORMATS,
)
from toolkit.model import forward_flops
from toolkit.preprocess import MEAN, STD, normalize

PRECISIONS = ("fp32", "fp16", "int8")
CLASS_LABELS = [str(d) for d in range(10)]
MAX_CALIBRATION_IMAGES = 60000

Log = Callable[[str], None]


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how. `formats`/`precisions` hold concrete names ('all' is expanded by the CLI)."""

    checkpoint: str
    out_dir: str = "exported"
    formats: tuple[str, ...] = ("onnx",)
    precisions: tuple[str, ...] = ("fp32",)
    opset: int = DEFAULT_OPSET
    simplify: bool = True  # onnxslim pass over the exported graph
    data_dir: str = "data"  # training images for int8 calibration
    calibration_size: int = DEFAULT_CALIBRATION_SIZE
    quant_format: str = QUANT_FORMATS[0]
    quant_activation: str = QUANT_ACTIVATIONS[0]  # activations u8 or s8; weights are always s8
    # per-tensor ranked fastest in benchmarks/quantization.py, with the same accuracy as per-channel
    per_channel: bool = False
    seed: int = 0  # picks the calibration images
    overwrite: bool = False  # replace another checkpoint's export in out_dir (and its verify/bench results)
    triton: bool = False  # also lay out a Triton model repository in out_dir/triton
    triton_max_batch_size: int = 1024


@dataclass(frozen=True)
class FormatSpec:
    name: str
    suffix: str
    precisions: tuple[str, ...]
    devices: tuple[str, ...]
    description: str
    build: Callable[..., None]  # (module, precision, config, ctx, tmp_path, metadata) -> None


@dataclass
class ExportResult:
    artifacts: list[Artifact]
    manifest: str
    removed: list[str] = field(default_factory=list)
    triton_models: list[str] = field(default_factory=list)
    golden: GoldenEntry | None = None  # the reference outputs' manifest entry, when written or kept


def artifact_file(fmt: str, precision: str) -> str:
    """model.onnx, model.fp16.onnx, model.int8.onnx, model.app.onnx, model.ts.pt."""
    spec = FORMATS[fmt]
    return "model" + ("" if precision == "fp32" else f".{precision}") + spec.suffix


def plan(formats: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    """The (format, precision) pairs to build. 'all' on either side keeps only the pairs that exist;
    a pair named explicitly that does not exist is an error. 'triton' adds the fp32 files a Triton
    repository serves."""
    from toolkit.triton import ARTIFACTS

    extra = list(ARTIFACTS) if "triton" in formats else []
    formats = [f for f in formats if f != "triton"]
    if extra and not formats:
        return extra
    fmt_all, prec_all = "all" in formats, "all" in precisions
    fmts = list(FORMATS) if fmt_all else formats
    precs = list(PRECISIONS) if prec_all else precisions
    for f in fmts:
        if f not in FORMATS:
            raise ConfigError(f"unknown format {f!r}; choose from: {', '.join(FORMATS)}, triton, all")
    for p in precs:
        if p not in PRECISIONS:
            raise ConfigError(f"unknown precision {p!r}; choose from: {', '.join(PRECISIONS)}, all")
    pairs = []
    for f in fmts:
        for p in precs:
            if p in FORMATS[f].precisions:
                pairs.append((f, p))
            elif not (fmt_all or prec_all):
                raise ConfigError(f"format {f} supports precision {', '.join(FORMATS[f].precisions)} only, "
                                  f"not {p}")
    if not pairs:
        raise ConfigError("no format supports the precisions asked for")
    return pairs + [p for p in extra if p not in pairs]


def _validate(config: ExportConfig) -> None:
    if not MIN_OPSET <= config.opset <= MAX_OPSET:
        raise ConfigError(f"opset {config.opset} is out of range; use {MIN_OPSET} to {MAX_OPSET}")
    if config.quant_format not in QUANT_FORMATS:
        raise ConfigError(f"unknown quantization format {config.quant_format!r}; use {' or '.join(QUANT_FORMATS)}")
    if config.quant_activation not in QUANT_ACTIVATIONS:
        raise ConfigError(f"unknown activation type {config.quant_activation!r}; use u8 or s8")
    if not 1 <= config.calibration_size <= MAX_CALIBRATION_IMAGES:
        raise ConfigError(f"calibration-size must be between 1 and {MAX_CALIBRATION_IMAGES} (the training set), "
                          f"got {config.calibration_size}")
    from toolkit.triton import MAX_MAX_BATCH_SIZE  # checked here too, so no artifact is built before it fails

    if not 1 <= config.triton_max_batch_size <= MAX_MAX_BATCH_SIZE:
        raise ConfigError(f"Triton max batch size must be between 1 and {MAX_MAX_BATCH_SIZE}, "
                          f"got {config.triton_max_batch_size}")


@dataclass
class _Context:
    """What every builder may need, computed once per export."""

    checkpoint_path: str
    checkpoint_sha256: str
    ckpt: dict[str, Any]
    fp32_onnx: Any = None  # the fp32 ModelProto, reused by int8 quantization
    calibration_images: int = 0  # how many training images int8 calibration really used


def _quiet():
    """Silence the exporters' progress prints and deprecation warnings (they are not the user's concern)."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def _metadata(ctx: _Context, fmt: str, precision: str) -> dict[str, str]:
    """The self-description stored in every artifact (ONNX metadata_props / TorchScript extra file)."""
    app = fmt == "onnx-app"
    v = sysinfo.versions("torch", "onnx")
    return {
        "toolkit.format_version": "1",
        "model": ctx.ckpt["model"]["name"],
        "artifact_format": fmt,
        "precision": precision,
        "input_layout": "N,H,W (raw pixels)" if app else "N,C,H,W with C=1, H=W=28",
        "input_dtype": "uint8" if app else "float32",
        "preprocessing": ("none: 0-255 grayscale pixels, white digit on black, 28x28" if app
                          else "x = (pixel / 255 - mean) / std, white digit on black, 28x28"),
        "mean": str(MEAN),
        "std": str(STD),
        "labels": json.dumps(CLASS_LABELS),
        "output": ("probabilities: float32 [N,10] softmax; digit: int64 [N] argmax" if app
                   else "log_probs: float32 [N,10] natural-log class probabilities (log_softmax)"),
        "source_checkpoint_sha256": ctx.checkpoint_sha256,
        "test_accuracy": str(ctx.ckpt.get("metrics", {}).get("test_accuracy", "")),
        "toolkit_version": v["toolkit"],
        "torch_version": v.get("torch", ""),
        "onnx_version": v.get("onnx", ""),
    }


def _to_onnx(module, example, input_name: str, output_names: list[str], config: ExportConfig):
    """torch.onnx (dynamo) export with a dynamic batch dimension, optionally slimmed; returns a ModelProto."""
    with _quiet():
        program = torch.onnx.export(
            module.eval(), (example,), dynamo=True, input_names=[input_name], output_names=output_names,
            opset_version=config.opset, dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False, verbose=False, optimize=True)
    model = program.model_proto
    if config.simplify:
        import onnxslim

        with _quiet():
            model = onnxslim.slim(model)
    return model


def _check_and_save_onnx(model, tmp: Path, metadata: dict[str, str]) -> None:
    import onnx

    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "toolkit", metadata["toolkit_version"]
    model.doc_string = "MNIST digit classifier exported by toolkit; see metadata_props for the I/O contract"
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ArtifactError(f"exported ONNX graph failed onnx.checker: {str(e).splitlines()[0]}") from None
    onnx.save(model, str(tmp))


def _build_onnx(module, precision: str, config: ExportConfig, ctx: _Context, tmp: Path, meta: dict) -> None:
    example = torch.zeros(2, 1, 28, 28)
    if precision == "fp16":
        model = _to_onnx(_Float16(module), example, "image", ["log_probs"], config)
    else:  # fp32, and int8 quantized from it: one fp32 export serves both
        if ctx.fp32_onnx is None:
            ctx.fp32_onnx = _to_onnx(module, example, "image", ["log_probs"], config)
        model = ctx.fp32_onnx if precision == "fp32" else _quantize_int8(ctx.fp32_onnx, config, ctx, tmp.parent)
    _check_and_save_onnx(model, tmp, meta)


def _build_onnx_app(module, precision: str, config: ExportConfig, ctx: _Context, tmp: Path, meta: dict) -> None:
    example = torch.zeros(2, 28, 28, dtype=torch.uint8)
    model = _to_onnx(_AppModel(module), example, "pixels", ["probabilities", "digit"], config)
    _check_and_save_onnx(model, tmp, meta)


def _build_torchscript(module, precision: str, config: ExportConfig, ctx: _Context, tmp: Path,
                       meta: dict) -> None:
    with _quiet():
        traced = torch.jit.trace(module, torch.zeros(2, 1, 28, 28))
        frozen = torch.jit.freeze(traced)
        torch.jit.save(frozen, str(tmp), _extra_files={META_KEY: json.dumps(meta, indent=1)})


class _Float16(nn.Module):
    """float16 weights and compute; float32 in and out so callers change nothing."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).half().eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image.half()).float()


class _AppModel(nn.Module):
    """Raw uint8 pixels in; probabilities and the predicted digit out. Normalization is inside the graph.

    The channel axis is added by a Reshape to [-1, 1, 28, 28], not an Unsqueeze: OpenCV's classic ONNX
    importer (its default in 4.x) mis-sizes an Unsqueeze at any batch above 1, and every engine reads Reshape.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels.float().reshape(-1, 1, 28, 28) / 255.0 - MEAN) / STD
        probabilities = self.model(x).exp()
        return probabilities, probabilities.argmax(dim=1)


def _quantize_int8(fp32_model, config: ExportConfig, ctx: _Context, workdir: Path):
    """ONNX Runtime static quantization, calibrated on training images only."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    images, _ = mnist.load_split(config.data_dir, "train")
    rng = np.random.default_rng(config.seed)
    pick = rng.choice(len(images), size=min(config.calibration_size, len(images)), replace=False)
    calib = normalize(images[np.sort(pick)], MEAN, STD)
    ctx.calibration_images = len(calib)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calib, max(1, len(calib) // 100)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    stamp = f"{time.time_ns()}"
    raw, pre, out = (workdir / f".int8-{stamp}-{n}.onnx" for n in ("raw", "pre", "out"))
    try:
        onnx.save(fp32_model, str(raw))
        with _quiet():
            quant_pre_process(str(raw), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre), str(out), Reader(),
                quant_format=QuantFormat.QDQ if config.quant_format == "qdq" else QuantFormat.QOperator,
                per_channel=config.per_channel,
                activation_type=QuantType.QUInt8 if config.quant_activation == "u8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        return onnx.load(str(out))
    finally:
        for p in (raw, pre, out):
            p.unlink(missing_ok=True)
        for p in workdir.glob(f".int8-{stamp}-*"):  # calibration side files
            p.unlink(missing_ok=True)


FORMATS: dict[str, FormatSpec] = {
    "onnx": FormatSpec("onnx", vocabulary.FORMATS["onnx"].suffix, ("fp32", "fp16", "int8"), ("cpu", "cuda"),
                       "normalized float32 image [N,1,28,28] -> log-probabilities [N,10]", _build_onnx),
    "torchscript": FormatSpec("torchscript", vocabulary.FORMATS["torchscript"].suffix, ("fp32",), ("cpu", "cuda"),
                              "frozen TorchScript, same I/O as onnx", _build_torchscript),
    "onnx-app": FormatSpec("onnx-app", vocabulary.FORMATS["onnx-app"].suffix, ("fp32",), ("cpu", "cuda"),
                           "raw uint8 pixels [N,28,28] -> probabilities [N,10], digit [N]", _build_onnx_app),
}


def _io_spec(fmt: str, path: Path) -> tuple[list[dict], list[dict]]:
    if fmt == "torchscript":
        return ([{"name": "image", "shape": ["batch", 1, 28, 28], "dtype": "float32"}],
                [{"name": "log_probs", "shape": ["batch", 10], "dtype": "float32"}])
    import onnx
    from onnx import helper

    graph = onnx.load(str(path)).graph

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "shape": shape, "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name})
        return out

    return describe(graph.input), describe(graph.output)


def export(config: ExportConfig, pairs: list[tuple[str, str]], log: Log = lambda m: None) -> ExportResult:
    """Build every (format, precision) in `pairs` from the checkpoint into `config.out_dir`.

    Artifacts from an earlier export of the same checkpoint that are not rebuilt stay listed; those from
    another checkpoint are deleted, so the folder never mixes models.
    """
    _validate(config)
    ckpt, ckpt_sha256 = read_checkpoint(config.checkpoint)
    module = model_from_checkpoint(ckpt)
    out_dir = fileio.check_writable_dir(config.out_dir, "exported artifacts")
    # recorded relative to the manifest, so a copied folder (with runs/ beside it) still finds it
    ctx = _Context(os.path.relpath(Path(config.checkpoint).resolve(), out_dir.resolve()), ckpt_sha256, ckpt)
    if any(p == "int8" for _, p in pairs):
        mnist.load_split(config.data_dir, "train")  # fail early, before any file is written
    reference = _golden_outputs(module, config.data_dir, log)

    with fileio.folder_lock(out_dir):  # a second export into this folder waits, so models never mix
        return _export_locked(config, pairs, ckpt, module, out_dir, ctx, log, reference)


def _golden_outputs(module, data_dir: str, log: Log) -> tuple[Any, Any] | None:
    """(log-probabilities, labels) of the checkpoint's model on the test set, computed before any artifact is
    built; None when the test set is not in `data_dir` (said in the log once the export has succeeded)."""
    if not golden.has_test_set(data_dir):
        return None
    pixels, labels = mnist.load_split(data_dir, "test")
    return golden.reference_log_probs(module, pixels), labels


def _write_or_keep_golden(out_dir: Path, reference: tuple[Any, Any] | None, data_dir: str, ctx: _Context,
                          log: Log) -> GoldenEntry | None:
    """Write the golden outputs; without new ones, keep the earlier file only if it came from this checkpoint."""
    if reference is not None:
        entry = golden.write_golden(out_dir, *reference, source_checkpoint=ctx.checkpoint_path,
                                    source_sha256=ctx.checkpoint_sha256)
        log(f"wrote {entry.file} (golden outputs, {entry.size_bytes / 1024:.0f} KiB)")
        return entry
    try:
        previous = read_golden_entry(out_dir) if (out_dir / MANIFEST_NAME).is_file() else None
    except ArtifactError:
        previous = None  # a damaged entry is not kept; its file goes below
    if (previous is not None and previous.source_sha256 == ctx.checkpoint_sha256
            and Path(previous.path).is_file() and not Path(previous.path).is_symlink()):
        log(f"no MNIST test set in {data_dir}: kept the golden outputs written earlier from this checkpoint")
        return previous
    log(f"no MNIST test set in {data_dir}: golden outputs not written (verify will then need torch and the "
        "checkpoint); run `toolkit data` and export with --data-dir to write them")
    stale = out_dir / GOLDEN_NAME
    if stale.exists() or stale.is_symlink():
        try:
            stale.unlink()  # a symlink is removed itself, never what it points to
        except OSError as e:
            raise ArtifactError(f"cannot remove {stale}: {e.strerror or e}") from None
        log(f"removed {GOLDEN_NAME}: it was computed from another checkpoint")
    return None


def _export_locked(config: ExportConfig, pairs: list[tuple[str, str]], ckpt: dict[str, Any], module,
                   out_dir: Path, ctx: _Context, log: Log, reference: tuple[Any, Any] | None) -> ExportResult:
    kept, removed = _previous_artifacts(out_dir, ctx.checkpoint_sha256, {artifact_file(f, p) for f, p in pairs},
                                        config.overwrite)
    for name in removed:
        log(f"removed {name}: it described another checkpoint's model")
    for a in kept:
        a.source_checkpoint = ctx.checkpoint_path
    built = []
    for fmt, precision in pairs:
        spec = FORMATS[fmt]
        name = artifact_file(fmt, precision)
        meta = _metadata(ctx, fmt, precision)
        t0 = time.perf_counter()
        with fileio.atomic_path(out_dir / name) as tmp:
            try:
                spec.build(module, precision, config, ctx, tmp, meta)
            except ToolkitError:
                raise
            except Exception as e:  # an exporter failure is reported, never half-written
                raise ArtifactError(f"exporting {fmt}/{precision} failed: {type(e).__name__}: "
                                    f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}") from e
            inputs, outputs = _io_spec(fmt, tmp)
            seconds = time.perf_counter() - t0
            settings = {"simplify": config.simplify} if fmt != "torchscript" else {"frozen": True, "traced": True}
            if precision == "int8":
                settings.update(quant_format=config.quant_format, activations=config.quant_activation,
                                weights="s8", per_channel=config.per_channel,
                                calibration_images=ctx.calibration_images, calibration_split="train")
            artifact = Artifact(
                file=name, format=fmt, precision=precision, size_bytes=tmp.stat().st_size,
                sha256=fileio.file_digest(tmp), inputs=inputs, outputs=outputs,
                source_checkpoint=ctx.checkpoint_path, source_sha256=ctx.checkpoint_sha256,
                test_accuracy=ckpt.get("metrics", {}).get("test_accuracy"),
                opset=config.opset if fmt != "torchscript" else None, settings=settings,
                versions=sysinfo.versions("torch", "onnx", "onnxruntime-gpu", "onnxruntime", "onnxslim"),
                export_seconds=round(seconds, 3), path=str((out_dir / name).resolve()))
        built.append(artifact)
        log(f"wrote {name} ({artifact.size_bytes / 1024:.0f} KiB, {seconds:.1f} s)")

    golden_entry = _write_or_keep_golden(out_dir, reference, config.data_dir, ctx, log)
    extra: dict[str, Any] = {
        "toolkit_version": sysinfo.versions()["toolkit"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": ctx.checkpoint_path,  # relative to this folder
        "checkpoint_sha256": ctx.checkpoint_sha256,
        "model_flops_per_image": forward_flops(module),  # for bench's efficiency targets where torch is absent
    }
    triton_models = []
    if config.triton:
        from toolkit.triton import REPOSITORY, write_repository

        triton_models = write_repository(out_dir, kept + built, config.triton_max_batch_size)
        extra["triton"] = {"repository": REPOSITORY, "models": [
            {"name": m.name, "artifact": m.artifact, "platform": m.platform} for m in triton_models]}
        log(f"wrote {REPOSITORY}/ with {len(triton_models)} models")
    else:
        _drop_stale_triton(out_dir, {a.file for a in built}, log)
    manifest = write_manifest(out_dir, kept + built, extra, golden=golden_entry)
    return ExportResult(artifacts=kept + built, manifest=str(manifest), removed=removed,
                        triton_models=[m.name for m in triton_models], golden=golden_entry)


def _drop_stale_triton(out_dir: Path, rebuilt: set[str], log: Log) -> None:
    """A Triton repository serves copies of the artifacts: once one of them is rebuilt, the copy is stale."""
    from toolkit.triton import ARTIFACTS, REPOSITORY, remove_repository

    if rebuilt & {artifact_file(f, p) for f, p in ARTIFACTS} and remove_repository(out_dir):
        log(f"removed {REPOSITORY}/: its models were exported again (add --format triton to lay it out anew)")


def _previous_artifacts(out_dir: Path, checkpoint_sha256: str, rebuilding: set[str],
                        overwrite: bool) -> tuple[list[Artifact], list[str]]:
    """Split an earlier export in `out_dir` into entries to keep and files removed.

    Another checkpoint's export is replaced only with `overwrite`, and then its verify/bench results go too.
    Only files this exporter itself writes are ever removed, and only inside `out_dir`; a manifest naming
    anything else is refused (read_manifest), never followed.
    """
    if not (out_dir / MANIFEST_NAME).exists() and not (out_dir / MANIFEST_NAME).is_symlink():
        return [], []
    try:
        previous = read_manifest(out_dir)
    except ArtifactError as e:
        raise ArtifactError(f"{e} (remove {out_dir / MANIFEST_NAME} or export into another folder)") from None
    ours = {artifact_file(f, p) for f, spec in FORMATS.items() for p in spec.precisions}
    others = sorted(a.file for a in previous if a.source_sha256 != checkpoint_sha256)
    if others and not overwrite:
        raise ConfigError(f"{out_dir}/ holds an export of another checkpoint ({', '.join(others)}); pass --overwrite "
                          "to replace it (its verify and bench results there go too), or choose another --out")
    kept, removed = [], []
    if others:
        from toolkit.triton import REPOSITORY, remove_repository

        for name in RESULT_FILES:
            if (out_dir / name).is_file() or (out_dir / name).is_symlink():
                (out_dir / name).unlink()
                removed.append(name)
        if remove_repository(out_dir):
            removed.append(f"{REPOSITORY}/")
    for a in previous:
        if a.file in rebuilding:
            continue
        path = out_dir / a.file
        if a.source_sha256 == checkpoint_sha256 and path.is_file() and not path.is_symlink():
            kept.append(a)
        elif a.file in ours:
            try:
                path.unlink(missing_ok=True)  # a symlink is removed itself, never what it points to
            except OSError as e:
                raise ArtifactError(f"cannot remove {path}: {e.strerror or e}") from None
            removed.append(a.file)
        else:
            raise ArtifactError(f"bad manifest in {out_dir}/: {a.file} is not a file toolkit exports; "
                                f"remove {out_dir / MANIFEST_NAME} or export into another folder")
    return kept, removed
