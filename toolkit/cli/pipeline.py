"""The commands that make the files, in order: data, train, export, verify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.artifacts import DEFAULT_EXPORT_DIR
from toolkit.cli.common import (
    RUNTIME_NAMES,
    DataDir,
    DeviceOption,
    JsonOption,
    VerifyTimeLimit,
    _config,
    _csv,
    _outputs,
    _path,
    _text,
    _write_json,
    defaults,
    export_inputs,
    given,
    note,
    openvino_options,
    out,
    require,
)
from toolkit.cli.progress import download_progress, epoch_display, stage
from toolkit.cli.tables import (
    _artifacts_table,
    _mnist_table,
    _print_judged_on,
    _print_not_verified,
    _print_skipped,
    _print_table,
    _verify_table,
)
from toolkit.exporters.triton import DEFAULT_MAX_BATCH_SIZE
from toolkit.formats import (
    DEFAULT_CALIBRATION_SIZE,
    DEFAULT_OPSET,
    FORMATS,
    PRECISIONS,
    QUANT_ACTIVATIONS,
    QUANT_FORMATS,
)
from toolkit.recipes import DEFAULT_MODEL, DEFAULT_RECIPE
from toolkit.runners import NATIVE_RUNTIMES
from toolkit.runners.base import DEFAULT_TIME_LIMIT_S
from toolkit.verify import VerifyConfig

VERIFY = defaults(VerifyConfig)

CODE_FORMATS = [name for name, f in FORMATS.items() if f.is_code]  # loading one runs what it carries


def _lower_precisions() -> str:
    """Which formats have which precision below fp32, from the formats table: "fp16: onnx; int8: onnx, ..."."""
    return "; ".join(f"{p}: {', '.join(n for n, f in FORMATS.items() if p in f.precisions)}" for p in PRECISIONS[1:])


def data(data_dir: DataDir = Path("data")) -> None:
    """Get the four official MNIST files, check their MD5s, and repair any missing or corrupt one."""
    from toolkit.data import ensure_mnist

    with download_progress() as on_progress:
        report = ensure_mnist(data_dir, log=note, progress=on_progress)  # which source gave what: in its notes
    out.print(_mnist_table(report, data_dir))


def _resumed_run(run_dir: Path):
    """The checkpoint of the run in `run_dir`, read once, and its settings: they head the display of its resumption,
    and training continues from that same checkpoint, whatever happens to the file in between."""
    from toolkit.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from toolkit.recipes import config_from_checkpoint, make_config

    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    return state, config_from_checkpoint(state["config"], make_config(DEFAULT_RECIPE))


def _run_to_resume(ctx: typer.Context, out_dir: Path | None, overrides: dict):
    """The folder of the run to resume, its checkpoint and its settings; options that would change them are refused."""
    from toolkit.checkpoint import DEFAULT_RUNS_DIR, latest_checkpoint
    from toolkit.errors import ConfigError

    kept = [name for name in ("model", "recipe", "seed", "device") if given(ctx, name)]
    kept += [name for name, value in overrides.items() if value is not None]
    if kept:
        raise ConfigError("--resume continues a run with its own model and settings; drop "
                          + ", ".join(f"--{name.replace('_', '-')}" for name in kept))
    require("torch")  # before looking for the run: with no torch, there is none to find and none to train
    run_dir = out_dir or latest_checkpoint(DEFAULT_RUNS_DIR).parent
    return (run_dir, *_resumed_run(run_dir))


def train(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(metavar="MODEL", help="convnet or mlp.")] = DEFAULT_MODEL,
    recipe: Annotated[str, typer.Option(
        metavar="RECIPE", help="fast (99% in one epoch), best (most accurate, a few minutes) or seed (the 2019 "
                               "notebook).")] = DEFAULT_RECIPE,
    epochs: Annotated[Optional[int], typer.Option(
        metavar="N", show_default="the recipe's", help="Override the recipe's epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        metavar="N", show_default="the recipe's", help="Override the recipe's batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option(
        metavar="LR", show_default="the recipe's", help="Override the recipe's (peak) learning rate.")] = None,
    seed: Annotated[int, typer.Option(
        metavar="SEED", help="Random seed; the same seed on the CPU gives the same result.")] = 0,
    device: Annotated[str, typer.Option(
        "--device", "--provider", metavar="DEVICE", help="auto, cpu or cuda.")] = "auto",
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", parser=_path, metavar="FOLDER", show_default="runs/<model>-<recipe>-seed<seed>",
        help="Run folder.")] = None,
    resume: Annotated[bool, typer.Option(
        help="Continue the run in --out (without --out: the latest run under runs/).")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Start again in a run folder that holds a run's files (checkpoint.pt, history.json, errors.png), "
             "replacing them.")] = False,
    train_limit: Annotated[Optional[int], typer.Option(
        metavar="N", show_default="all 60,000", help="Train on the first N images only (smoke tests).")] = None,
    holdout: Annotated[Optional[int], typer.Option(
        metavar="N", show_default="0: none",
        help="Keep the last N training images out of training and report accuracy on them each epoch: a "
             "validation split for choosing settings without looking at the test set.")] = None,
    bf16: Annotated[Optional[bool], typer.Option(
        "--bf16/--no-bf16", show_default="the recipe's",
        help="bf16 autocast where the device computes bf16 natively; --no-bf16 trains in float32, as a CPU "
             "without bf16 does.")] = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Train a model on MNIST; writes checkpoint.pt, history.json and errors.png to the run folder."""
    from toolkit.checkpoint import DEFAULT_RUNS_DIR
    from toolkit.recipes import make_config

    overrides = dict(epochs=epochs, batch_size=batch_size, lr=lr, train_limit=train_limit, holdout=holdout, bf16=bf16)
    state = None
    if resume:
        run_dir, state, config = _run_to_resume(ctx, out_dir, overrides)
        from toolkit.train import finished

        # nothing to do is not a failure (a script may resume to be sure); --overwrite too is refused by train
        if not overwrite and (why := finished(run_dir, state, config)):
            out.print(why, soft_wrap=True)
            return
    else:
        config = make_config(recipe, model=model, seed=seed, device=device, **overrides)
        run_dir = out_dir or DEFAULT_RUNS_DIR / f"{config.model}-{config.recipe}-seed{config.seed}"

    from toolkit.train import train as run_training  # torch: imported once the options have passed their checks

    header = f"training {config.model} ({config.recipe} recipe) -> {run_dir}"
    with epoch_display(header, config.epochs, validation=config.holdout > 0) as (on_epoch, on_batch):
        result = run_training(config, data_dir, run_dir, resume=resume, resume_from=state, overwrite=overwrite,
                              on_epoch=on_epoch, on_batch=on_batch)
    epochs_run = len(result.history)
    frozen = result.config["float32_first_layer_steps"]  # the run's own, also when it was resumed
    compute = ("bf16 autocast" if result.bf16 else "float32"
               + (f", first layer frozen after {frozen:.0%} of the steps" if frozen < 1 else ""))
    if result.whitened_first_layer:
        compute += ", first layer whitened (never trained)"
    out.print(f"{result.model}: {result.parameters:,} parameters; device {result.device}, {compute}; "
              f"test accuracy {result.test_accuracy:.2f}% "
              f"after {epochs_run} epoch{'s' * (epochs_run != 1)} ({result.train_seconds:.1f} s"
              f"{f', resumed after epoch {result.resumed_from_epoch}' if result.resumed_from_epoch else ''})")
    out.print(f"wrote {result.checkpoint}, {Path(result.run_dir) / 'history.json'}, "
              f"{Path(result.run_dir) / 'errors.png'}")


def export(
    ctx: typer.Context,
    format: Annotated[Optional[list[str]], typer.Option(
        "--format", metavar="FORMATS", show_default="onnx",
        help=f"{', '.join(FORMATS)} or all of them (comma list or repeated); triton adds a Triton model "
             f"repository of the fp32 files (all,triton for both). {', '.join(CODE_FORMATS)} files are code "
             "(aoti is a compiled shared library): load only files you trust.")] = None,
    precision: Annotated[Optional[list[str]], typer.Option(
        metavar="PRECISIONS", show_default="fp32",
        help=f"{', '.join(PRECISIONS)} or all; {_lower_precisions()}.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        parser=_path, metavar="PATH", show_default="the newest run's, runs/*/checkpoint.pt by file time",
        help="Checkpoint to export: a toolkit checkpoint, or a plain state_dict saved with "
             "torch.save(model.state_dict(), PATH) (read weights-only).")] = None,
    model: Annotated[Optional[str], typer.Option(
        parser=_text, metavar="NAME", show_default="found from the state_dict's names and shapes",
        help="The built-in model of a plain state_dict: convnet or mlp.")] = None,
    model_code: Annotated[Optional[str], typer.Option(
        parser=_text, metavar="CLASS", show_default="none: a built-in model",
        help="The class of a plain state_dict's model, from your code (FILE.py:CLASS or package.module:CLASS): "
             "normalized images [N,1,28,28] in, [N,10] scores out. Model code is code: importing it runs the "
             "file; name only code you trust.")] = None,
    model_args: Annotated[Optional[str], typer.Option(
        parser=_text, metavar="JSON", show_default="{}",
        help="Keyword arguments of the model's constructor, a JSON object.")] = None,
    input_shape: Annotated[Optional[str], typer.Option(
        parser=_text, metavar="SHAPE", show_default="1,28,28: normalized MNIST",
        help="One sample's input shape of a --model-code model that does not take MNIST images (without the "
             "batch); needs --inputs. onnx (fp32, fp16, int8), openvino (fp32, int8) and the other formats' fp32, "
             "but not onnx-app or Triton; no accuracy is known.")] = None,
    inputs: Annotated[Optional[Path], typer.Option(
        parser=_path, metavar="FILE", show_default="none: MNIST's test set",
        help="Reference inputs for --input-shape: float32 [K, *SHAPE] (read without pickle); the golden outputs "
             "are computed on them, and verify compares every file on them (copied into --out).")] = None,
    out_dir: Annotated[Path, typer.Option(
        "--out", parser=_path, metavar="FOLDER",
        help="Folder for the artifacts and manifest.json.")] = DEFAULT_EXPORT_DIR,
    opset: Annotated[int, typer.Option(metavar="N", help="ONNX opset.")] = DEFAULT_OPSET,
    simplify: Annotated[bool, typer.Option(help="Simplify the ONNX graph with onnxslim.")] = True,
    calibration_size: Annotated[int, typer.Option(
        metavar="N", help="Training images (with --input-shape: rows of its calibration inputs) used to calibrate "
                          "int8.")] = DEFAULT_CALIBRATION_SIZE,
    calibration_inputs: Annotated[Optional[Path], typer.Option(
        parser=_path, metavar="FILE", show_default="about half of --inputs, chosen by a hash of each row; int8 is "
                                                   "then judged on the other half",
        help="int8 calibration inputs for --input-shape: float32 [M, *SHAPE] (read without pickle).")] = None,
    quant_format: Annotated[str, typer.Option(
        metavar="FORM", help="int8 graph form: qdq or qoperator.")] = QUANT_FORMATS[0],
    quant_activation: Annotated[str, typer.Option(
        metavar="TYPE", help="int8 activation type: u8 or s8 (weights are s8).")] = QUANT_ACTIVATIONS[0],
    per_channel: Annotated[bool, typer.Option(
        help="Per-channel int8 weight scales (default per-tensor: faster here, same accuracy).")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace another checkpoint's export in --out (and its verify/bench results there).")] = False,
    triton_max_batch_size: Annotated[int, typer.Option(
        metavar="N", help="max_batch_size of the Triton models (with --format triton).")] = DEFAULT_MAX_BATCH_SIZE,
    data_dir: DataDir = Path("data"),
) -> None:
    """Export a checkpoint to ONNX, TorchScript, torch.export, AOTInductor, ExecuTorch, LiteRT or OpenVINO IR,
    with metadata and manifest.json."""
    from toolkit.errors import ConfigError
    from toolkit.export import ExportConfig, check, plan
    from toolkit.export import export as run_export
    from toolkit.refinputs import parse_shape
    from toolkit.usermodel import parse_model_args

    pairs = plan(_csv(format) or ["onnx"], _csv(precision) or ["fp32"])
    config = ExportConfig(checkpoint=str(checkpoint) if checkpoint else None, out_dir=str(out_dir), opset=opset,
                          model=model, model_code=model_code, model_args=parse_model_args(model_args),
                          simplify=simplify, data_dir=str(data_dir), calibration_size=calibration_size,
                          quant_format=quant_format, quant_activation=quant_activation, per_channel=per_channel,
                          overwrite=overwrite, triton="triton" in _csv(format),
                          triton_max_batch_size=triton_max_batch_size, input_shape=parse_shape(input_shape),
                          inputs=str(inputs) if inputs else None,
                          calibration_inputs=str(calibration_inputs) if calibration_inputs else None)
    if given(ctx, "triton_max_batch_size") and not config.triton:  # given, it would be ignored
        raise ConfigError("--triton-max-batch-size sets the Triton repository's batch; add --format triton")
    if given(ctx, "calibration_size") and all(p != "int8" for _, p in pairs):
        raise ConfigError("--calibration-size sets how int8 files are calibrated; add --precision int8")
    check(config, pairs)
    require("torch")  # before the newest run is looked for: without torch, training one would fail as well
    with stage("exporting") as on_progress:
        result = run_export(config, pairs, log=note, on_progress=on_progress)
    _print_table(*_artifacts_table(result, result.checkpoint + (" (the newest run)" if checkpoint is None else "")))
    if result.triton_models:
        out.print(f"wrote Triton repository {Path(config.out_dir) / 'triton'}: {', '.join(result.triton_models)}")
    out.print(f"wrote {result.manifest}")


def verify(
    artifacts: Annotated[Path, typer.Option(
        parser=_path, metavar="FOLDER", help="Folder with manifest.json.")] = DEFAULT_EXPORT_DIR,
    checkpoint: Annotated[Optional[Path], typer.Option(
        parser=_path, metavar="PATH", show_default="the one the artifacts came from",
        help="Reference checkpoint.")] = None,
    runtime: Annotated[Optional[list[str]], typer.Option(
        metavar="RUNTIMES", show_default=f"each file's own: {', '.join(NATIVE_RUNTIMES)}",
        help=f"{', '.join(RUNTIME_NAMES)} or all.")] = None,
    provider: DeviceOption = VERIFY["provider"],
    format: Annotated[Optional[list[str]], typer.Option(
        "--format", metavar="FORMATS", show_default="all", help="Only these formats.")] = None,
    precision: Annotated[Optional[list[str]], typer.Option(
        metavar="PRECISIONS", show_default="all", help="Only these precisions.")] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(
        metavar="PRECISION.FIELD=VALUE", help="Override a tolerance, e.g. fp16.min_agreement=0.998.")] = None,
    batch1_images: Annotated[int, typer.Option(
        metavar="N", help="How many test images also run one at a time.")] = VERIFY["batch1_images"],
    json_path: JsonOption = None,
    reference: Annotated[str, typer.Option(
        metavar="REFERENCE",
        help="What to compare with: checkpoint (PyTorch, needs torch), golden (the golden.npy export wrote) or "
             "auto (checkpoint when torch and the checkpoint are here, else golden).")] = VERIFY["reference"],
    time_limit: VerifyTimeLimit = DEFAULT_TIME_LIMIT_S,
    mode: Annotated[Optional[list[str]], typer.Option(
        metavar="MODES", show_default="f32, and bf16 where the CPU computes it natively",
        help="OpenVINO inference precisions to check the fp32 files at: f32, bf16 (one this CPU only emulates is "
             "checked when named).")] = None,
    require_all: Annotated[bool, typer.Option(
        help="Exit 1 also when a selected file is not verified: its runtime is not installed or cannot run on this "
             "device, or no runtime named with --runtime opens it (without it, such a file is noted as not verified, "
             "with why, and the run passes).")] = False,
    data_dir: DataDir = Path("data"),
) -> None:
    """Run all 10,000 MNIST test images through every artifact and compare with PyTorch's outputs; \
exit 1 if any fails."""  # one line in `toolkit --help`
    _outputs(json_path, inputs=export_inputs(artifacts, checkpoint))
    openvino_options(_csv(runtime), mode=mode is not None)
    from toolkit.verify import parse_tolerance_overrides
    from toolkit.verify import verify as run_verify

    config = _config(VerifyConfig, artifacts=str(artifacts), checkpoint=str(checkpoint) if checkpoint else None,
                     data_dir=str(data_dir), provider=provider, runtimes=tuple(_csv(runtime)),
                     formats=tuple(_csv(format)), precisions=tuple(_csv(precision)), batch1_images=batch1_images,
                     tolerances=parse_tolerance_overrides(_csv(tolerance)), reference=reference,
                     time_limit_s=time_limit, modes=tuple(_csv(mode)))
    with stage("verifying") as on_progress:
        report = run_verify(config, on_progress=on_progress)
    _print_table(*_verify_table(report))
    for r in report.results:  # an int8 file judged on some of its reference inputs, or on its calibration rows too
        _print_judged_on(r.name, r.n, report.n, r.also_calibrating)
    _print_skipped(report.skipped, report.unverified)
    _print_not_verified(report)
    out.print(f"verified in {report.seconds:.1f} s ({', '.join(f'{k} {v}' for k, v in report.runtimes.items())})",
              highlight=False)
    if json_path:
        _write_json(json_path, report.to_json())
    report.raise_for_failures(require_all)
