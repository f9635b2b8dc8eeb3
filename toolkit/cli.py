"""The `toolkit` command line: parses options, calls the library, renders results, maps errors to exit codes.

This is the only module that imports typer or prints. Library modules are imported inside each command so
that `toolkit --help` and the torch-free `toolkit predict` stay fast and light.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from toolkit.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED, ToolkitError
from toolkit.preprocess import MEAN, STD

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train the MNIST ConvNet, export it to TorchScript/ONNX, prove parity, and benchmark it.")
# Piped output is 200 columns wide: tables stay whole in logs and CI. On a terminal, tables that do not fit
# drop their less important columns and fold (never cut) the names that tell rows apart (see _print_table).
# Markup is off: file names and messages are text (a file called "d[x].png" prints as itself); styles are
# applied with Text objects.
out = Console(width=None if sys.stdout.isatty() else 200, markup=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200, markup=False)
_state = {"debug": False, "quiet": False}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every temporary file is removed on the way out."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def _printable(text: str) -> str:
    """User-supplied text (file names above all) made safe for a terminal: control characters such as ESC are
    shown as escapes (\\x1b), never sent, so a file name cannot recolour or rewrite the screen."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text)


def _error(message: str, label: str = "error:") -> None:
    """One line on stderr: the label in bold red, then the message as plain text (never markup)."""
    err.print(Text.assemble((label, "bold red"), " ", _printable(" ".join(str(message).split()))), soft_wrap=True)


def _styled(text: str, style: str) -> Text:
    return Text(text, style=style)


def _table(title: str, columns: list[str], names: tuple[str, ...] = (), left: tuple[str, ...] = ()) -> Table:
    """A table whose `names` columns (what tells rows apart) fold instead of being cut with an ellipsis."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col in names or col in left else "right",
                         overflow="fold" if col in names or col in left else "ellipsis",
                         no_wrap=col not in names and col not in left)
    table.names = names  # type: ignore[attr-defined]  # read by _print_table
    return table


def _print_table(table: Table, optional: tuple[str, ...] = (), console: Console | None = None) -> None:
    """Print `table`, first dropping `optional` columns (in that order) while it is wider than the console."""
    console = console or out

    def natural_width() -> int:  # measured without the console's own limit
        return console.measure(table, options=console.options.update(max_width=100_000)).maximum

    for name in optional:
        if natural_width() <= console.width:
            break
        table.columns = [c for c in table.columns if c.header != name]
    names = [c for c in table.columns if c.header in getattr(table, "names", ())]
    for cap in range(30, 6, -1):  # names stay whole as far as the width allows; other text columns fold first
        for c in names:
            c.min_width = min(cap, max((len(str(cell)) for cell in c._cells), default=0))
        if console.measure(table, options=console.options.update(max_width=100_000)).minimum <= console.width:
            break
    if natural_width() > console.width:
        table.show_lines = True  # names will fold onto several lines: rule the rows apart
    console.print(table)

DataDir = Annotated[Path, typer.Option("--data-dir", envvar="TOOLKIT_DATA_DIR",
                                       help="Folder holding MNIST/raw/ (env TOOLKIT_DATA_DIR).")]


# Modules outside the base (inference-only) install, and the extra that brings each one.
EXTRA_FOR_MODULE = {name: "train" for name in ("torch", "torchvision", "onnx", "onnxscript", "onnxslim", "matplotlib")}


def _command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register a command whose typed errors become one line on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ModuleNotFoundError as e:
            module = (e.name or "").partition(".")[0]
            if module not in EXTRA_FOR_MODULE or _state["debug"]:
                raise
            _error(f"toolkit {fn.__name__} needs {module}, which is not installed; "
                   f"pip install 'toolkit[{EXTRA_FOR_MODULE[module]}]'")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except ToolkitError as e:
            if _state["debug"]:
                raise
            _error(str(e))
            raise typer.Exit(e.exit_code) from None
        except Terminated:
            err.print("terminated")
            raise typer.Exit(EXIT_TERMINATED) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except MemoryError:
            if _state["debug"]:
                raise
            _error("out of memory; use a smaller batch size or fewer images")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except OSError as e:  # the environment, not toolkit: a full disk, a permission, a vanished file
            if _state["debug"]:
                raise
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            _error(f"{e.strerror or e}{where}")
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return app.command()(wrapper)


def _csv(values: list[str] | None) -> list[str]:
    """Options given as repeated flags and/or comma lists ('--format onnx,torchscript')."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _ints(values: list[str] | None, what: str) -> list[int]:
    from toolkit.errors import ConfigError

    try:
        return [int(v) for v in _csv(values)]
    except ValueError:
        raise ConfigError(f"{what} must be whole numbers, e.g. 1,8,64") from None


class _NoStatus:
    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextlib.contextmanager
def _status(text: str) -> Iterator[Any]:
    """A spinner on a terminal; nothing when stderr is a pipe or file (logs stay clean)."""
    if not err.is_terminal or _state.get("quiet"):
        yield _NoStatus()
        return
    with err.status(text) as status:
        yield status


def _outputs(*paths: Path | None) -> None:
    """Check output paths before any work starts, so a long run never fails at its last step.

    `--json -` means stdout: the JSON is then the only thing printed there (tables are left out).
    """
    from toolkit.errors import ConfigError

    for path in paths:
        if path is None:
            continue
        if str(path) == "-":
            out.quiet = True
            continue
        if path.is_dir():
            raise ConfigError(f"cannot write {path}: it is a folder; give a file name")
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot write {path}: {parent} is not a writable folder")


def _write_json(path: Path, obj: Any) -> None:
    from toolkit.fileio import write_json

    if str(path) == "-":
        sys.stdout.write(json.dumps(obj, indent=2) + "\n")
        sys.stdout.flush()
        return
    write_json(path, obj)  # OutputError (one line) if the disk or folder refuses


def _print_version(value: bool) -> None:
    if value:
        from toolkit import __version__

        out.print(f"toolkit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors (and JSON asked for with --json -).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    _state["debug"] = debug
    _state["quiet"] = quiet
    out.quiet = quiet


@_command
def data(data_dir: DataDir = Path("data")) -> None:
    """Obtain the four official MNIST files, verify their MD5s, and repair any missing or corrupt one."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from toolkit.data import ensure_mnist

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        tasks: dict[str, int] = {}

        def on_progress(name: str, done: int, total: int | None) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=total)
            progress.update(tasks[name], completed=done)

        report = ensure_mnist(data_dir, log=lambda m: err.print(m), progress=on_progress)
    table = Table(title=f"MNIST in {data_dir}")
    for col in ("file", "md5", "status"):
        table.add_column(col)
    for name, path in report.paths.items():
        table.add_row(Path(path).name, report.md5[name], "verified")
    out.print(table)
    for attempt in report.attempts:
        out.print(f"  {attempt.source}: {attempt.detail}")


@_command
def train(
    model: Annotated[str, typer.Option(help="convnet or mlp.")] = "convnet",
    recipe: Annotated[str, typer.Option(help="fast (default: 99% in one epoch), best (most accurate, a few minutes) "
                                              "or seed (the 2019 notebook).")] = "fast",
    epochs: Annotated[Optional[int], typer.Option(help="Override the recipe's epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Override the recipe's batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Override the recipe's (peak) learning rate.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed on the CPU gives the same result.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/<model>-<recipe>-seed<seed>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out (default: the latest run).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start again in a run folder that holds a checkpoint.")] = False,
    train_limit: Annotated[Optional[int], typer.Option(help="Train on the first N images only (smoke tests).")] = None,
    holdout: Annotated[Optional[int], typer.Option(
        help="Keep the last N training images out of training and report accuracy on them each epoch: a "
             "validation split for choosing settings without looking at the test set.")] = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Train a model on MNIST; writes checkpoint.pt, history.json and errors.png to the run folder."""
    from toolkit.checkpoint import DEFAULT_RUNS_DIR, latest_checkpoint
    from toolkit.errors import ConfigError
    from toolkit.train import make_config
    from toolkit.train import train as run_training

    overrides = dict(epochs=epochs, batch_size=batch_size, lr=lr, train_limit=train_limit, holdout=holdout)
    if resume:
        if any(v is not None for v in overrides.values()):
            raise ConfigError("--resume continues a run with its own settings; "
                              "drop --epochs/--batch-size/--lr/--train-limit/--holdout")
        run_dir = out_dir or latest_checkpoint(DEFAULT_RUNS_DIR).parent
        config = make_config(recipe, model=model, seed=seed, device=device)
    else:
        config = make_config(recipe, model=model, seed=seed, device=device, **overrides)
        run_dir = out_dir or DEFAULT_RUNS_DIR / f"{config.model}-{config.recipe}-seed{config.seed}"

    header = f"training {config.model} ({config.recipe} recipe) -> {run_dir}"
    with _epoch_display(header, validation=config.holdout > 0) as (on_epoch, on_batch):
        result = run_training(config, data_dir, run_dir, resume=resume, overwrite=overwrite,
                              on_epoch=on_epoch, on_batch=on_batch)
    out.print(f"{result.model}: {result.parameters:,} parameters; device {result.device}"
              f"{', bf16 autocast' if result.bf16 else ''}; test accuracy {result.test_accuracy:.2f}% "
              f"after {len(result.history)} epoch{'s' * (len(result.history) != 1)} ({result.train_seconds:.1f} s"
              f"{f', resumed after epoch {result.resumed_from_epoch}' if result.resumed_from_epoch else ''})")
    out.print(f"wrote {result.checkpoint}, {Path(result.run_dir) / 'history.json'}, "
              f"{Path(result.run_dir) / 'errors.png'}")


@contextlib.contextmanager
def _epoch_display(header: str, validation: bool) -> Iterator[tuple[Callable[..., None], Callable[..., None]]]:
    """(on_epoch, on_batch) callbacks: a live table and progress bar on a terminal, else one plain line per
    epoch, printed as it finishes (so `toolkit train | tee log` shows progress). `validation`: the run holds
    out a validation split, shown in its own column."""
    columns = ("epoch", "train loss", "train acc %", *(("val acc %",) if validation else ()), "test loss",
               "test acc %", "lr", "seconds")

    def cells(s: Any, total: int) -> tuple[str, ...]:
        val = (f"{s.val_accuracy:.2f}",) if validation else ()
        return (f"{s.epoch}/{total}", f"{s.train_loss:.4f}", f"{s.train_accuracy:.2f}", *val, f"{s.test_loss:.4f}",
                f"{s.test_accuracy:.2f}", f"{s.lr:.3g}", f"{s.seconds:.1f}")

    if not out.is_terminal:
        out.print(header)

        def plain_epoch(s: Any, total: int) -> None:
            out.print("  ".join(f"{name}={value}" for name, value in zip(columns, cells(s, total))))
            out.file.flush()
        yield plain_epoch, lambda *a: None
        return

    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    table = Table(title=header)
    for col in columns:
        table.add_column(col, justify="right")
    progress = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err)
    task = progress.add_task("epoch", total=None)
    # the live table starts with the first batch, so errors found before training print alone
    live = Live(Group(table, progress), console=out, refresh_per_second=2)  # low rate: rendering costs CPU

    def on_batch(epoch: int, batch: int, total: int) -> None:
        if not live.is_started:
            live.start()
        if batch == 1:
            progress.reset(task, description=f"epoch {epoch}", total=total)
        if batch == total or batch % 20 == 0:
            progress.update(task, completed=batch)

    try:
        yield (lambda s, total: table.add_row(*cells(s, total))), on_batch
    finally:
        progress.update(task, visible=False)
        if live.is_started:
            live.stop()


def _default_checkpoint(checkpoint: Path | None) -> Path:
    from toolkit.checkpoint import DEFAULT_RUNS_DIR, latest_checkpoint

    return checkpoint or latest_checkpoint(DEFAULT_RUNS_DIR)


@_command
def export(
    format: Annotated[Optional[list[str]], typer.Option("--format", help="onnx, torchscript, onnx-app, triton (a Triton model repository of the fp32 files) or all (comma list or repeated).")] = None,
    precision: Annotated[Optional[list[str]], typer.Option(help="fp32, fp16, int8 or all (ONNX only for fp16/int8).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint to export (default: the latest under runs/).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the artifacts and manifest.json.")] = Path("exported"),
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 20,
    simplify: Annotated[bool, typer.Option(help="Simplify the ONNX graph with onnxslim.")] = True,
    calibration_size: Annotated[int, typer.Option(help="Training images used to calibrate int8.")] = 500,
    quant_format: Annotated[str, typer.Option(help="int8 graph form: qdq or qoperator.")] = "qdq",
    quant_activation: Annotated[str, typer.Option(help="int8 activation type: u8 or s8 (weights are s8).")] = "u8",
    per_channel: Annotated[bool, typer.Option(help="Per-channel int8 weight scales (default per-tensor: faster here, same accuracy).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace another checkpoint's export in --out (and its verify/bench results there).")] = False,
    triton_max_batch_size: Annotated[int, typer.Option(help="max_batch_size of the Triton models (with --format triton).")] = 1024,
    data_dir: DataDir = Path("data"),
) -> None:
    """Export a checkpoint to ONNX and/or TorchScript, with metadata and exported/manifest.json."""
    from toolkit.export import ExportConfig, plan
    from toolkit.export import export as run_export

    pairs = plan(_csv(format) or ["onnx"], _csv(precision) or ["fp32"])
    config = ExportConfig(checkpoint=str(_default_checkpoint(checkpoint)), out_dir=str(out_dir), opset=opset,
                          simplify=simplify, data_dir=str(data_dir), calibration_size=calibration_size,
                          quant_format=quant_format, quant_activation=quant_activation, per_channel=per_channel,
                          overwrite=overwrite, triton="triton" in _csv(format),
                          triton_max_batch_size=triton_max_batch_size)
    with _status("exporting"):
        result = run_export(config, pairs, log=lambda m: err.print(m))
    table = _table(f"artifacts from {config.checkpoint}",
                   ["file", "format", "precision", "size KiB", "sha256", "input", "outputs"],
                   names=("file", "format", "precision"), left=("sha256", "input", "outputs"))

    def io(specs: list[dict]) -> str:
        return ", ".join(f"{s['name']} {s['dtype']}[{','.join(map(str, s['shape']))}]" for s in specs)

    for a in result.artifacts:
        table.add_row(a.file, a.format, a.precision, f"{a.size_bytes / 1024:.0f}", a.sha256[:12], io(a.inputs),
                      io(a.outputs))
    _print_table(table, ("outputs", "sha256", "input"))
    if result.triton_models:
        out.print(f"wrote Triton repository {Path(config.out_dir) / 'triton'}: {', '.join(result.triton_models)}")
    out.print(f"wrote {result.manifest}")


def _config(cls: Any, **given: Any) -> Any:
    """A library config from the options the user gave; the rest keep the dataclass's own defaults."""
    return cls(**{k: v for k, v in given.items() if v is not None and v != ()})


@_command
def verify(
    artifacts: Annotated[Path, typer.Option(help="Folder with manifest.json.")] = Path("exported"),
    checkpoint: Annotated[Optional[Path], typer.Option(help="Reference checkpoint (default: the one the artifacts came from).")] = None,
    runtime: Annotated[Optional[list[str]], typer.Option(help="Runtimes: onnxruntime, torchscript, openvino, opencv or all (default: each file's own, onnxruntime and torchscript).")] = None,
    provider: Annotated[Optional[str], typer.Option(help="Device: cpu, cuda or tensorrt.")] = None,
    format: Annotated[Optional[list[str]], typer.Option("--format", help="Only these formats.")] = None,
    precision: Annotated[Optional[list[str]], typer.Option(help="Only these precisions.")] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(help="Override a tolerance: PRECISION.FIELD=VALUE, e.g. fp16.min_agreement=0.998.")] = None,
    batch1_images: Annotated[Optional[int], typer.Option(help="How many test images also run one at a time.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON here.")] = None,
    reference: Annotated[Optional[str], typer.Option(help="What to compare with: checkpoint (PyTorch, needs torch), golden (the golden.npy export wrote) or auto (checkpoint when torch and the checkpoint are here, else golden).")] = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Run all 10,000 MNIST test images through every artifact and compare with PyTorch's outputs; exit 1 if any fails."""
    _outputs(json_path)
    from toolkit.verify import VerifyConfig, parse_tolerance_overrides
    from toolkit.verify import verify as run_verify

    config = _config(VerifyConfig, artifacts=str(artifacts), checkpoint=str(checkpoint) if checkpoint else None,
                     data_dir=str(data_dir), provider=provider, runtimes=tuple(_csv(runtime)),
                     formats=tuple(_csv(format)), precisions=tuple(_csv(precision)), batch1_images=batch1_images,
                     tolerances=parse_tolerance_overrides(_csv(tolerance)), reference=reference)
    with _status("verifying") as status:
        report = run_verify(config, on_artifact=lambda r: status.update(f"verified {r.name}"))
    _print_table(*_verify_table(report))
    for name, reason in report.skipped.items():
        out.print(f"skipped runtime {name}: {reason}")
    out.print(f"verified in {report.seconds:.1f} s ({', '.join(f'{k} {v}' for k, v in report.runtimes.items())})",
              highlight=False)
    if json_path:
        _write_json(json_path, report.to_json())
    report.raise_for_failures()


@_command
def compare(
    a: Annotated[Path, typer.Argument(help="The reference model: .onnx or TorchScript.")],
    b: Annotated[Path, typer.Argument(help="The model judged against A: .onnx or TorchScript.")],
    tolerance: Annotated[Optional[list[str]], typer.Option(help="FIELD=VALUE over --judge-as's limits: max_abs_diff, min_agreement, max_accuracy_change (none switches one off).")] = None,
    judge_as: Annotated[str, typer.Option(help="Start from verify's limits for this precision: fp32, fp16, bf16, int8.")] = "fp32",
    compare_as: Annotated[str, typer.Option("--as", help="What |diff| is taken on: auto (same kind as given, else both as probabilities if either is, else log-softmax), log_probs, probabilities, raw.")] = "auto",
    mean: Annotated[float, typer.Option(help="Foreign files: input = (pixel/255 - mean) / std (uint8 inputs get raw pixels).")] = MEAN,
    std: Annotated[float, typer.Option(help="Foreign files: see --mean.")] = STD,
    layout: Annotated[str, typer.Option(help="Foreign files: auto (ONNX: from the input's shape; TorchScript: nchw), nchw [N,1,28,28], nhwc [N,28,28,1], nhw [N,28,28], flat [N,784]; one for both, or A,B.")] = "auto",
    provider: Annotated[str, typer.Option(help="Device: cpu or cuda.")] = "cpu",
    limit: Annotated[Optional[int], typer.Option(help="Only the first N test images.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the report as JSON here (- for stdout).")] = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Run two model files on the MNIST test set and judge B against A like verify; exit 1 if B fails.

    Either may be toolkit-made or not. A TorchScript file is code: loading it runs whatever its author
    wrote, so give only files you trust like a script you would run.
    """
    _outputs(json_path)
    from toolkit.compare import CompareConfig, parse_tolerance
    from toolkit.compare import compare as run_compare
    from toolkit.errors import ConfigError
    from toolkit.runners.foreign import Preprocessing

    layouts = _csv([layout]) or ["auto"]
    if len(layouts) > 2:
        raise ConfigError(f"--layout takes one layout or two (A,B), not {layout!r}")
    prep_a, prep_b = (Preprocessing(mean=mean, std=std, layout=lay) for lay in (layouts[0], layouts[-1]))
    config = CompareConfig(a=str(a), b=str(b), data_dir=str(data_dir), provider=provider, prep_a=prep_a, prep_b=prep_b,
                           as_=compare_as, tolerance=parse_tolerance(_csv(tolerance), judge_as), limit=limit)
    with _status("comparing"):
        report = run_compare(config)
    out.print(_compare_table(report))
    out.print(f"compared {report.compared} on {report.n:,} MNIST test images in {report.seconds:.1f} s", highlight=False)
    if json_path:
        _write_json(json_path, report.to_json())
    report.raise_for_failures()


def _compare_table(report: Any) -> Any:
    table = Table(title=f"B against A on {report.n:,} MNIST test images")
    for col in ("", "file", "runtime", "outputs", "accuracy %"):
        table.add_column(col, justify="right" if col == "accuracy %" else "left", overflow="fold")
    for tag, side in (("A", report.a), ("B", report.b)):
        table.add_row(tag, side.file, side.runtime, side.outputs + ("" if side.toolkit_model else " (input by options)"),
                      f"{side.accuracy:.2f}")
    t = report.tolerance
    verdict = _styled("pass", "green") if report.passed else _styled(f"FAIL: {'; '.join(report.failures)}", "red")
    summary = Table(show_header=True, title=f"compared as {report.compared}")
    for col in ("max |diff|", "mean |diff|", "agreement", "Δ acc", "result"):
        summary.add_column(col, justify="left" if col == "result" else "right", overflow="fold")
    summary.add_row(f"{report.max_abs_diff:.2e}" + (f" (≤ {t['max_abs_diff']:g})" if t["max_abs_diff"] is not None else ""),
                    f"{report.mean_abs_diff:.2e}", f"{report.agreement:,}/{report.n:,}",
                    f"{report.accuracy_delta:+.2f}", verdict)
    from rich.console import Group

    return Group(table, summary)


def _verify_table(report: Any) -> tuple[Table, tuple[str, ...]]:
    """The verify table and the columns it may drop, least important first."""
    table = _table(f"parity with PyTorch ({report.reference}) on {report.n:,} MNIST test images (PyTorch accuracy "
                   f"{report.reference_accuracy:.2f}%, provider {report.provider})",
                   ["artifact", "runtime", "precision", "max |diff|", "mean |diff|", "agreement", "accuracy %",
                    "Δ acc", "batch-1 |diff|", "result"], names=("artifact", "runtime", "precision"), left=("result",))
    for r in report.results:
        table.add_row(r.artifact, r.runtime + ("" if r.mode == "f32" else f" {r.mode}"),
                      r.precision if r.judged_as in ("", r.precision) else f"{r.precision} (as {r.judged_as})",
                      f"{r.max_abs_diff:.2e}", f"{r.mean_abs_diff:.2e}", f"{r.agreement:,}/{r.n:,}",
                      f"{r.accuracy:.2f}", f"{r.accuracy_delta:+.2f}", f"{r.batch1_max_diff:.1e} (n={r.batch1_n})",
                      _styled("pass", "green") if r.passed else _styled(f"FAIL: {'; '.join(r.failures)}", "red"))
    return table, ("batch-1 |diff|", "mean |diff|", "Δ acc", "accuracy %")


@_command
def bench(
    file: Annotated[Optional[Path], typer.Argument(help="Time this .onnx alone (toolkit-made or not) instead of the artifacts folder.")] = None,
    runtime: Annotated[Optional[list[str]], typer.Option(help="onnxruntime, pytorch, torchscript, openvino, opencv or all (default: every installed one).")] = None,
    provider: Annotated[Optional[list[str]], typer.Option(help="cpu, cuda, tensorrt or all (comma list or repeated).")] = None,
    artifacts: Annotated[Path, typer.Option(help="Folder with manifest.json.")] = Path("exported"),
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint for the PyTorch eager baseline (default: the artifacts' source).")] = None,
    format: Annotated[Optional[list[str]], typer.Option("--format", help="Narrow to these: onnx, onnx-app, torchscript, pytorch.")] = None,
    precision: Annotated[Optional[list[str]], typer.Option(help="Narrow to these precisions.")] = None,
    batch_sizes: Annotated[Optional[list[str]], typer.Option(help="Batch sizes, e.g. 1,64,256.")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="Timed calls per point (instead of --seconds).")] = None,
    seconds: Annotated[Optional[float], typer.Option(help="Time budget per point, in seconds.")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Untimed calls before each timed block.")] = None,
    rounds: Annotated[Optional[int], typer.Option(help="Interleaved rounds over all configurations.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads on the CPU (default: the runtimes' own).")] = None,
    optimization: Annotated[Optional[list[str]], typer.Option(help="ONNX Runtime graph optimization levels to compare: all, extended, basic, none.")] = None,
    concurrency: Annotated[Optional[list[str]], typer.Option(help="ONNX Runtime CPU: calls in flight at once to compare, e.g. 1,2 (each gets cores/N threads).")] = None,
    mode: Annotated[Optional[list[str]], typer.Option(help="OpenVINO inference precisions: f32, bf16 (bf16 on fp32 files only).")] = None,
    hint: Annotated[Optional[list[str]], typer.Option(help="OpenVINO performance hints: latency, throughput.")] = None,
    cuda_graph: Annotated[Optional[bool], typer.Option("--cuda-graph/--no-cuda-graph", help="Also time ONNX Runtime CUDA with CUDA graphs.")] = None,
    verify: Annotated[Optional[bool], typer.Option("--verify/--no-verify", help="Check each configuration on the test set first (fastest names verified ones only).")] = None,
    matmul_peak: Annotated[Optional[bool], typer.Option("--matmul-peak/--no-matmul-peak", help="Measure the CPU's float32 and int8 matmul peaks (for the efficiency targets).")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the full results as JSON here.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Write a markdown table here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG of throughput against batch size here.")] = None,
    mean: Annotated[float, typer.Option(help="With FILE: input = (pixel/255 - mean) / std for a float image input.")] = MEAN,
    std: Annotated[float, typer.Option(help="With FILE: see --mean.")] = STD,
    layout: Annotated[str, typer.Option(help="With FILE: auto, nchw, nhwc, nhw or flat (the image input's layout).")] = "auto",
    shape: Annotated[Optional[list[str]], typer.Option(help="With FILE: INPUT=DxD... for an input's dynamic dimensions after the batch.")] = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Latency percentiles and throughput per runtime, precision and batch size; names the fastest verified.

    With FILE: that .onnx alone in ONNX Runtime on the CPU, fed MNIST test images when its input fits an
    MNIST layout, else random data of its declared shapes and types (not verified: there is no reference).
    """
    _outputs(json_path, markdown, plot)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from toolkit import bench as bench_lib

    config = _config(
        bench_lib.BenchConfig, artifacts=str(artifacts), checkpoint=str(checkpoint) if checkpoint else None,
        data_dir=str(data_dir), runtimes=tuple(_csv(runtime)), providers=tuple(_csv(provider)),
        formats=tuple(_csv(format)), precisions=tuple(_csv(precision)),
        batch_sizes=tuple(_ints(batch_sizes, "batch sizes")), warmup=warmup, iterations=iterations, seconds=seconds,
        rounds=rounds, threads=threads, optimizations=tuple(_csv(optimization)),
        concurrency=tuple(_ints(concurrency, "concurrency")), modes=tuple(_csv(mode)), hints=tuple(_csv(hint)),
        cuda_graph=cuda_graph, verify=verify, matmul_peak=matmul_peak)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("benchmarking", total=None)
        def on_progress(done: int, total: int, what: str) -> None:
            progress.update(task, completed=done, total=total, description=what)
        if file is None:
            report = bench_lib.bench(config, on_progress=on_progress)
        else:
            from toolkit.runners.foreign import Preprocessing, parse_shapes

            report = bench_lib.bench_file(config, str(file), Preprocessing(mean=mean, std=std, layout=layout),
                                          parse_shapes(_csv(shape)), on_progress=on_progress)
    _print_bench(report, bench_lib)
    if json_path:
        _write_json(json_path, report.to_json())
    if markdown:
        from toolkit.fileio import write_bytes

        write_bytes(markdown, bench_lib.markdown_table(report).encode())
    if plot:
        bench_lib.plot(report, plot)


def _bench_table(report: Any) -> tuple[Table, tuple[str, ...]]:
    """The bench table and the columns it may drop: the tail percentiles first, then provider and I/O when
    every row shares them (they then tell no rows apart)."""
    gpu = report.machine.get("gpu")
    table = _table(f"inference on {report.machine['cpu']} ({report.machine['cpu_cores']} cores)"
                   + (f" + {gpu['name']}" if gpu else ""),
                   ["runtime", "provider", "I/O", "batch", "first ms", "p50 ms", "p90 ms", "p99 ms", "images/s",
                    "verified"], names=("runtime", "provider", "I/O"), left=("verified",))
    for p in report.points:
        table.add_row(p.name, p.provider, p.io, str(p.batch_size), f"{p.first_call_ms:.2f}", f"{p.p50_ms:.3f}",
                      f"{p.p90_ms:.3f}", f"{p.p99_ms:.3f}", f"{p.throughput:,.0f}",
                      {True: "yes", False: _styled("FAILED", "red"), None: "-"}[p.verified])
    constant = tuple(col for col, attr in (("I/O", "io"), ("provider", "provider"))
                     if len({getattr(p, attr) for p in report.points}) <= 1)
    return table, ("p99 ms", "p90 ms", "first ms", *constant)


def _print_bench(report: Any, bench_lib: Any) -> None:
    _print_table(*_bench_table(report))
    for name, reason in report.skipped.items():
        out.print(f"skipped {name}: {reason}")
    for regime, f in report.fastest.items():
        out.print(f"fastest here ({regime}): {bench_lib.fastest_line(f)}")
    if report.matmul_peak_gflops:
        out.print(f"float32 matmul peak: {report.matmul_peak_gflops:.1f} GFLOP/s; int8: "
                  f"{report.int8_matmul_peak_gops or 0:.1f} GOP/s; model: "
                  f"{report.model_flops_per_image / 1e6:.2f} MFLOP per image")
    for name, t in report.targets.items():
        out.print(Text.assemble(("met", "green") if t["met"] else ("missed", "red"),
                                f" {name}: {t['value']:.2f} (target {t['target']}) — {t['detail']}"))


@_command
def predict(
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files.")],
    model: Annotated[Optional[Path], typer.Option(help="A toolkit .onnx (default: exported/model.app.onnx, else exported/model.onnx); checked against the manifest.json beside it, if any.")] = None,
    invert: Annotated[Optional[bool], typer.Option("--invert/--no-invert", help="Force (or forbid) inverting dark-on-light images; default: detect.")] = None,
    provider: Annotated[str, typer.Option(help="ONNX Runtime provider.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Classify digit images with the exported .onnx alone (ONNX Runtime, numpy and Pillow; no torch)."""
    from toolkit.runtime import predict_files

    if model is None:
        candidates = [Path("exported/model.app.onnx"), Path("exported/model.onnx")]
        model = next((c for c in candidates if c.is_file()), candidates[0])
    predictions = predict_files(images, model, invert=invert, provider=provider)
    if as_json:
        out.print_json(json.dumps([p.__dict__ for p in predictions], allow_nan=False))
        return
    table = Table(title=f"predictions by {model}")
    for col in ("file", "digit", "probability"):
        table.add_column(col)
    for p in predictions:
        table.add_row(_printable(p.file), str(p.digit), f"{p.probability:.4f}")
    out.print(table)


@_command
def web(
    model: Annotated[Path, typer.Option(help="The app-ready model to serve at /model/model.app.onnx.")] = Path("exported/model.app.onnx"),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 8000,
    site: Annotated[Optional[Path], typer.Option(help="The page's folder (default: the repository's examples/web).")] = None,
) -> None:
    """Serve the draw-a-digit page on 127.0.0.1 (cross-origin isolated for multi-threaded wasm) until Ctrl-C."""
    from toolkit.web import DEFAULT_SITE, WebConfig, make_server, url

    server = make_server(WebConfig(site=site or DEFAULT_SITE, model=model, port=port))
    out.print(f"serving {model} and the demo page at {url(server)} (Ctrl-C to stop)", highlight=False, soft_wrap=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def main() -> None:
    """Entry point: like typer's own, but every failure is one line with its own exit code (see errors.py).

    Usage mistakes are one line (click prints several); SIGTERM ends a command like Ctrl-C (temporary files
    removed, exit 143); an unexpected exception is a bug: one line and exit 3, the traceback with --debug.
    """
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = app(prog_name="toolkit", standalone_mode=False)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except Terminated:  # outside a command (e.g. while parsing options)
        sys.exit(EXIT_TERMINATED)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # a click/typer usage error
            if not e.format_message():  # no arguments at all: the help was printed
                sys.exit(e.exit_code)
            command = getattr(getattr(e, "ctx", None), "command_path", "toolkit")
            _error(f"{e.format_message()} (see `{command} --help`)")
            sys.exit(e.exit_code)
        if _state["debug"] or "--debug" in sys.argv[1:2]:
            raise
        _error(f"{type(e).__name__}: {str(e)[:300]} (run with --debug for the traceback, and please report it)",
               label="internal error:")
        sys.exit(EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
