"""Export a checkpoint to ONNX (fp32, fp16, int8, app-ready) and TorchScript, with metadata and a manifest.

The formats table (toolkit/formats.py) says which formats exist, which precisions each supports and which
module of toolkit/exporters builds it; option checking and dispatch both read it. Every file is written
atomically and checked before it is listed.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from toolkit import calibration, export_folder, exporters, fileio, golden, refinputs, sysinfo, usermodel
from toolkit import data as mnist
from toolkit.artifacts import (
    MANIFEST_NAME,
    Artifact,
    GoldenEntry,
    Part,
    write_manifest,
)
from toolkit.checkpoint import DEFAULT_RUNS_DIR, latest_checkpoint, model_from_checkpoint, read_checkpoint
from toolkit.errors import ArtifactError, ConfigError, ToolkitError
from toolkit.exporters import ExportContext, triton
from toolkit.exporters.triton import DEFAULT_MAX_BATCH_SIZE as DEFAULT_TRITON_MAX_BATCH_SIZE
from toolkit.formats import (
    DEFAULT_CALIBRATION_SIZE,
    DEFAULT_OPSET,
    FORMATS,
    MAX_OPSET,
    MIN_OPSET,
    PRECISIONS,
    QUANT_ACTIVATIONS,
    QUANT_FORMATS,
)
from toolkit.staging import Staging
from toolkit.usermodel import ModelSource

MAX_CALIBRATION_IMAGES = 60000

Log = Callable[[str], None]
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ExportConfig:
    """How to export; what to export is the (format, precision) list that `plan` returns."""

    checkpoint: str | None = None  # None: the newest run's (latest_checkpoint under runs/)
    out_dir: str = "exported"
    opset: int = DEFAULT_OPSET
    simplify: bool = True  # onnxslim pass over the exported graph
    data_dir: str = "data"  # training images for int8 calibration
    calibration_size: int = DEFAULT_CALIBRATION_SIZE
    quant_format: str = QUANT_FORMATS[0]
    quant_activation: str = QUANT_ACTIVATIONS[0]  # activations u8 or s8; weights are always s8
    # per-tensor: in benchmarks/quantization.py as accurate as per-channel, and as fast within its noise
    per_channel: bool = False
    seed: int = 0  # picks the calibration images
    overwrite: bool = False  # replace another checkpoint's export in out_dir (and its verify/bench results)
    triton: bool = False  # also lay out a Triton model repository in out_dir/triton
    triton_max_batch_size: int = DEFAULT_TRITON_MAX_BATCH_SIZE
    # for a plain state_dict: its built-in model (default: found from its shapes), or a class from the user's
    # code (FILE.py:CLASS or package.module:CLASS: importing it runs that code) with its constructor's arguments
    model: str | None = None
    model_code: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    # a model whose input is not normalized MNIST: one sample's shape, and the reference inputs [K, *shape]
    # (float32 .npy) its golden outputs are computed on and verify compares with
    input_shape: tuple[int, ...] = refinputs.MNIST_SHAPE
    inputs: str | None = None
    # their int8 files' calibration inputs [M, *shape] (float32 .npy); None: the calibration side of `inputs`
    calibration_inputs: str | None = None


@dataclass
class ExportResult:
    artifacts: list[Artifact]
    manifest: str
    checkpoint: str = ""  # the checkpoint exported: config.checkpoint, or the newest run's
    removed: list[str] = field(default_factory=list)
    triton_models: list[str] = field(default_factory=list)
    golden: GoldenEntry | None = None  # the reference outputs' manifest entry, when written or kept


def plan(formats: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    """The (format, precision) pairs to build. 'all' on either side keeps only the pairs that exist;
    a pair named explicitly that does not exist is an error. 'triton' adds the fp32 files a Triton
    repository serves."""
    extra = list(triton.ARTIFACTS) if "triton" in formats else []
    formats = [f for f in formats if f != "triton"]
    if extra and not formats:
        return extra
    pairs = _pairs(formats, precisions)
    return pairs + [p for p in extra if p not in pairs]


def _pairs(formats: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    fmt_all, prec_all = "all" in formats, "all" in precisions
    fmts = list(FORMATS) if fmt_all else formats
    precs = list(PRECISIONS) if prec_all else precisions
    _check_names(fmts, precs)
    if not (fmt_all or prec_all):  # every pair was named: each must exist
        for f, p in ((f, p) for f in fmts for p in precs if p not in FORMATS[f].precisions):
            raise ConfigError(f"format {f} supports precision {', '.join(FORMATS[f].precisions)} only, not {p}")
    pairs = [(f, p) for f in fmts for p in precs if p in FORMATS[f].precisions]
    if not pairs:
        raise ConfigError("no format supports the precisions asked for")
    return pairs


def _check_names(formats: list[str], precisions: list[str]) -> None:
    for f in formats:
        if f not in FORMATS:
            raise ConfigError(f"unknown format {f!r}; choose from: {', '.join(FORMATS)}, triton, all")
    for p in precisions:
        if p not in PRECISIONS:
            raise ConfigError(f"unknown precision {p!r}; choose from: {', '.join(PRECISIONS)}, all")


# the files that take any input shape (and are verified to), and why the others cannot
INPUT_SHAPE_PAIRS = (("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"), ("torchscript", "fp32"),
                     ("pt2", "fp32"), ("openvino", "fp32"), ("openvino", "int8"), ("aoti", "fp32"),
                     ("executorch", "fp32"), ("tflite", "fp32"))


def _check_input_shape(config: ExportConfig, pairs: list[tuple[str, str]]) -> None:
    """ConfigError, before anything is read or built, for --input-shape/--inputs that do not go together or
    a file that cannot take the shape."""
    if refinputs.is_mnist(config.input_shape):
        if config.inputs:
            raise ConfigError("--inputs is for a model of another --input-shape; an MNIST model is verified on "
                              "the MNIST test set")
        return
    if config.triton:
        raise ConfigError("a Triton repository serves MNIST-shaped models; leave out --format triton with "
                          "--input-shape")
    if not config.inputs:
        shape = ",".join(str(d) for d in config.input_shape)
        raise ConfigError(f"--input-shape {shape} needs --inputs FILE.npy (float32 [K,{shape}]): the reference "
                          "inputs the golden outputs are computed on and verify compares with")
    for fmt, precision in pairs:
        if (fmt, precision) in INPUT_SHAPE_PAIRS:
            continue
        why = ("its input is 28x28 uint8 pixels" if fmt == "onnx-app" else
               "its int8 quantization is built for MNIST models only" if precision == "int8" else
               "it is not built for another input shape")
        allowed = ", ".join(f"{f} {p}" for f, p in INPUT_SHAPE_PAIRS)
        raise ConfigError(f"{fmt} {precision} cannot take --input-shape ({why}); choose from: {allowed}")


def _check_calibration_inputs(config: ExportConfig, pairs: list[tuple[str, str]]) -> None:
    """ConfigError for --calibration-inputs where nothing would be calibrated on them."""
    if not config.calibration_inputs:
        return
    if refinputs.is_mnist(config.input_shape):
        raise ConfigError("--calibration-inputs is for a model of another --input-shape; an MNIST model is "
                          "calibrated on its training images")
    if all(p != "int8" for _, p in pairs):
        raise ConfigError("--calibration-inputs calibrates int8 files; add --precision int8")


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
    # checked here too, so no artifact is built before it fails
    if not 1 <= config.triton_max_batch_size <= triton.MAX_MAX_BATCH_SIZE:
        raise ConfigError(f"Triton max batch size must be between 1 and {triton.MAX_MAX_BATCH_SIZE}, "
                          f"got {config.triton_max_batch_size}")


def check(config: ExportConfig, pairs: list[tuple[str, str]]) -> None:
    """ConfigError for settings that cannot work together, before anything is read or built (export checks them
    first too; the CLI checks them before it says a missing torch, which the options did not need)."""
    _validate(config)
    _check_input_shape(config, pairs)
    _check_calibration_inputs(config, pairs)


def export(config: ExportConfig, pairs: list[tuple[str, str]], log: Log = lambda m: None,
           on_progress: Progress | None = None) -> ExportResult:
    """Build every (format, precision) in `pairs` from the checkpoint into `config.out_dir`.

    Artifacts from an earlier export of the same checkpoint and model that are not rebuilt stay listed; those
    of another checkpoint or model are deleted (with `overwrite`), so the folder never mixes models.
    on_progress(done, total, what) says which step starts next: the golden outputs, then each file.
    """
    def progress(done: int, what: str) -> None:
        if on_progress:
            on_progress(done, len(pairs) + 1, what)

    check(config, pairs)
    source = ModelSource(name=config.model, code=config.model_code, args=config.model_args,
                         input_shape=tuple(config.input_shape))  # its options checked before any file is read
    inputs = None if not config.inputs else refinputs.load_inputs(config.inputs, tuple(config.input_shape))
    source = dataclasses.replace(source, reference_inputs=inputs)
    own_calibration = None if inputs is None else _own_calibration(config, pairs, inputs, log)
    checkpoint = config.checkpoint or str(latest_checkpoint(DEFAULT_RUNS_DIR))
    ckpt, ckpt_sha256 = read_checkpoint(checkpoint, source)
    module = model_from_checkpoint(ckpt)
    out_dir = fileio.check_writable_dir(config.out_dir, "exported artifacts")
    # recorded relative to the manifest, so a copied folder (with runs/ beside it) still finds it
    ctx = ExportContext(os.path.relpath(Path(checkpoint).resolve(), out_dir.resolve()), ckpt_sha256, ckpt,
                        input_shape=tuple(config.input_shape), reference_inputs=inputs,
                        own_calibration=own_calibration)
    # before the work, once an export under way there has finished (and listed or removed what it wrote) and what
    # one stopped by a crash left is settled (its new files are not the user's, and no --overwrite is asked for
    # them); another checkpoint's export may land there in the meantime, so that is checked again under the lock
    with fileio.folder_lock(out_dir):
        Staging(out_dir).recover(log)
        previous = export_folder.previous_manifest(out_dir)
        export_folder.other_exports(out_dir, previous, ctx, config.overwrite, newest_run=config.checkpoint is None)
        export_folder.check_unlisted(out_dir, previous, export_folder.written_names(
            pairs, golden.has_test_set(config.data_dir), inputs is not None, config.triton), config.overwrite)
    if ckpt["model"].get("output", "log_probs") != "log_probs":
        log(f"{ckpt['model']['name']} returns {ckpt['model']['output']}: the exported files end with "
            f"{'log' if ckpt['model']['output'] == 'probabilities' else 'log_softmax'}, so they return "
            "log-probabilities as the toolkit's own models do")
    if config.checkpoint is None:
        log(f"exporting {checkpoint}, the newest run under {DEFAULT_RUNS_DIR}/ (--checkpoint names another)")
    if inputs is None and any(p == "int8" for _, p in pairs):
        mnist.load_split(config.data_dir, "train")  # fail early, before any file is written
    progress(0, "golden outputs on the " + ("test set" if inputs is None else "reference inputs"))
    reference = _golden_outputs(module, config.data_dir, log) if inputs is None else \
        (golden.outputs_on_inputs(module, inputs), None)
    # a state_dict: its accuracy is the one measured here (none is known on reference inputs)
    if reference is not None and reference[1] is not None and "metrics" not in ckpt:
        ckpt["metrics"] = {"test_accuracy": 100.0 * float((reference[0].argmax(1) == reference[1]).mean())}

    with fileio.folder_lock(out_dir):  # a second export into this folder waits, so models never mix
        result = _export_locked(config, pairs, module, out_dir, ctx, log, reference, progress)
    return dataclasses.replace(result, checkpoint=checkpoint)


def _own_calibration(config: ExportConfig, pairs: list[tuple[str, str]], inputs, log: Log
                     ) -> calibration.Calibration | None:
    """The int8 calibration rows of a model of another input shape (its reference `inputs`): --calibration-inputs,
    or a side of --inputs; None when no int8 file is built."""
    if all(p != "int8" for _, p in pairs):
        return None
    path = config.calibration_inputs
    if path:
        # read once: the SHA-256 recorded is that of the very bytes the rows are parsed from
        data = refinputs.read_input_bytes(path, "--calibration-inputs")
        rows = refinputs.parse_inputs(data, path, tuple(config.input_shape), "--calibration-inputs")
        found = calibration.plan(inputs, rows, config.calibration_size, config.seed,
                                 {"file": Path(path).name, "sha256": fileio.digest(data)})
    else:
        found = calibration.plan(inputs, None, config.calibration_size, config.seed)
    log(f"int8 calibrated on {len(found.inputs)} {found.settings['calibration_split']}, judged on "
        f"{found.settings['judged_on']}")
    return found


def _golden_outputs(module, data_dir: str, log: Log) -> tuple[Any, Any] | None:
    """(log-probabilities, labels) of the checkpoint's model on the test set, computed before any artifact is
    built; None when the test set is not in `data_dir` (said in the log once the export has succeeded)."""
    if not golden.has_test_set(data_dir):
        return None
    pixels, labels = mnist.load_split(data_dir, "test")
    return golden.reference_log_probs(module, pixels), labels


def _export_locked(config: ExportConfig, pairs: list[tuple[str, str]], module, out_dir: Path,
                   ctx: ExportContext, log: Log, reference: tuple[Any, Any] | None,
                   progress: Callable[[int, str], None]) -> ExportResult:
    """Write every new file under a scratch name, then put them all in place at once (toolkit/staging.py): a failure
    before that leaves the folder as it was. The earlier manifest is read once here: under the lock, nothing else
    changes it until the new one replaces it."""
    rebuilding = {FORMATS[f].file_name(p) for f, p in pairs}
    staging = Staging(out_dir)
    try:
        staging.recover(log)  # what an export stopped by a crash set aside
        previous = export_folder.previous_manifest(out_dir)
        kept = export_folder.previous_artifacts(out_dir, previous, ctx, rebuilding, config.overwrite, staging,
                                                newest_run=config.checkpoint is None)
        for a in kept:
            a.source_checkpoint = ctx.checkpoint_path
        built = _build_all(config, pairs, module, staging, ctx, log, progress)
        progress(len(pairs) + 1, "manifest")
        golden_entry = export_folder.write_or_keep_golden(out_dir, previous, reference, config.data_dir, ctx, log,
                                                          staging)
        extra: dict[str, Any] = {
            "toolkit_version": sysinfo.versions()["toolkit"],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "checkpoint": ctx.checkpoint_path,  # relative to this folder
            "checkpoint_sha256": ctx.checkpoint_sha256,
            "model": usermodel.describe(ctx.ckpt),  # how verify and bench may rebuild it (model code: never by itself)
        }
        if refinputs.is_mnist(ctx.input_shape):  # for bench's efficiency targets where torch is absent
            from toolkit.model import forward_flops  # torch: imported once the options have passed their checks

            extra["model_flops_per_image"] = forward_flops(module)
        else:
            extra["input_shape"] = list(ctx.input_shape)
        triton_models = _lay_out_triton(config, staging, previous, kept, built, extra, log)
        manifest = write_manifest(out_dir, kept + built, extra, golden=golden_entry,
                                  to=staging.scratch(MANIFEST_NAME))
        removed = staging.commit(log)
    finally:
        staging.discard()  # what is left after a failure; nothing after the commit
    return ExportResult(artifacts=kept + built, manifest=str(manifest), removed=removed,
                        triton_models=[m.name for m in triton_models], golden=golden_entry)


def _build_all(config: ExportConfig, pairs: list[tuple[str, str]], module, staging: Staging, ctx: ExportContext,
               log: Log, progress: Callable[[int, str], None]) -> list[Artifact]:
    """Build every pair into scratch files of `staging`."""
    built: list[Artifact] = []
    for i, (fmt, precision) in enumerate(pairs, 1):
        progress(i, f"{fmt} {precision}")
        built.append(_build(config, fmt, precision, module, staging, ctx, log))
    return built


def _gist(error: BaseException) -> str:
    """One line that says why an exporter failed: its message's first line, and for a message of many lines (a
    compiler's, as AOTInductor's CppCompileError carries) the first line that names an error as well."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    cause = next((line for line in lines[1:] if "error" in line.lower() or "killed" in line.lower()), None)
    return (lines[0] if cause is None else f"{lines[0]}: {cause}")[:300]


def _build(config: ExportConfig, fmt: str, precision: str, module, staging: Staging, ctx: ExportContext,
           log: Log) -> Artifact:
    """Build one file (and its companions) with its format's exporter into scratch files of `staging`, and describe
    it for the manifest."""
    name = FORMATS[fmt].file_name(precision)
    meta = exporters.metadata(ctx, fmt, precision)
    build = exporters.builder(fmt)
    t0 = time.perf_counter()
    tmp = staging.scratch(name)
    try:
        built = build(module, precision, config, ctx, tmp, meta)
        parts = _stage_parts(staging, FORMATS[fmt].companion_names(precision), built.parts)
    except ToolkitError:
        raise
    except (Exception, SystemExit) as e:  # an exporter failure, or the model's sys.exit while it is traced
        interrupt = _interrupt(e)
        if interrupt is not None:  # Ctrl-C or SIGTERM, which torch.onnx wraps in its own error
            raise interrupt from None
        raise ArtifactError(f"exporting {fmt}/{precision} failed: {type(e).__name__}: {_gist(e)}") from e
    inputs, outputs = built.io or exporters.io_spec(fmt, tmp, ctx.input_shape)
    seconds = time.perf_counter() - t0
    artifact = Artifact(
        file=name, format=fmt, precision=precision, size_bytes=tmp.stat().st_size,
        sha256=fileio.file_digest(tmp), inputs=inputs, outputs=outputs,
        source_checkpoint=ctx.checkpoint_path, source_sha256=ctx.checkpoint_sha256,
        test_accuracy=ctx.ckpt.get("metrics", {}).get("test_accuracy"),
        opset=built.opset, settings=built.settings,
        versions=sysinfo.versions("torch", "onnx", "onnxruntime-gpu", "onnxruntime", "onnxslim",
                                  *(("openvino", "nncf") if parts else ())),
        export_seconds=round(seconds, 3), parts=parts, path=str((staging.out_dir / name).resolve()))
    log(f"wrote {', '.join(artifact.files)} ({artifact.total_bytes / 1024:.0f} KiB, {artifact.export_seconds:.1f} s)")
    return artifact


def _interrupt(error: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (Ctrl-C, or the CLI's SIGTERM) in `error`'s chain of causes, if any."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _stage_parts(staging: Staging, names: tuple[str, ...], written: list[Path]) -> list[Part]:
    """Hash each companion file the builder wrote; `staging` renames it to its name with the main file (until the
    new manifest replaces the old one, the old manifest's hashes refuse the new files)."""
    assert len(written) == len(names), f"the exporter wrote {len(written)} companion files, not {len(names)}"
    parts = []
    for scratch, name in zip(written, names):
        staging.add(name, scratch)
        parts.append(Part(file=name, size_bytes=scratch.stat().st_size, sha256=fileio.file_digest(scratch)))
    return parts


def _lay_out_triton(config: ExportConfig, staging: Staging, previous: export_folder.Previous, kept: list[Artifact],
                    built: list[Artifact], extra: dict[str, Any], log: Log) -> list[triton.TritonModel]:
    """Stage the Triton repository when asked (and list it in `extra`); otherwise drop one gone stale (one the
    `previous` manifest lists)."""
    out_dir = staging.out_dir
    if not config.triton:
        _drop_stale_triton(staging, previous, {a.file for a in built})
        return []
    models, staged = triton.stage_repository(out_dir, kept + built, config.triton_max_batch_size, sources=staging.files)
    staging.add_folder(triton.REPOSITORY, staged)
    extra["triton"] = {"repository": triton.REPOSITORY, "models": [
        {"name": m.name, "artifact": m.artifact, "platform": m.platform} for m in models]}
    log(f"wrote {triton.REPOSITORY}/ with {len(models)} models")
    return models


def _drop_stale_triton(staging: Staging, previous: export_folder.Previous, rebuilt: set[str]) -> None:
    """A Triton repository serves copies of the artifacts: once one of them is rebuilt, the copy is stale."""
    served = {FORMATS[f].file_name(p) for f, p in triton.ARTIFACTS}
    if rebuilt & served and triton.REPOSITORY in export_folder.listed_files(previous):
        staging.remove(f"{triton.REPOSITORY}/", "its models were exported again (add --format triton to lay it out "
                       "anew)")
