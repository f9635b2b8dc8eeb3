"""The `toolkit` command line: parses options, calls the library, renders results, maps errors to exit codes.

This is the only module that imports typer or prints. Library modules are imported inside each command so
that `toolkit --help` and the torch-free `toolkit predict` stay fast and light.
"""

from __future__ import annotations

import contextlib
import functools
import json
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

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train the MNIST ConvNet, export it to TorchScript/ONNX, prove parity, and benchmark it.")
# Piped output is not cut to 80 columns: tables stay readable in logs and CI. Markup is off: file names and
# messages are text (a file called "d[x].png" prints as itself); styles are applied with Text objects.
out = Console(width=None if sys.stdout.isatty() else 200, markup=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200, markup=False)
_state = {"debug": False}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every temporary file is removed on the way out."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def _error(message: str, label: str = "error:") -> None:
    """One line on stderr: the label in bold red, then the message as plain text (never markup)."""
    err.print(Text.assemble((label, "bold red"), " ", " ".join(str(message).split())), soft_wrap=True)


def _styled(text: str, style: str) -> Text:
    return Text(text, style=style)

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
    if not err.is_terminal:
        yield _NoStatus()
        return
    with err.status(text) as status:
        yield status


def _write_json(path: Path, obj: Any) -> None:
    from toolkit.errors import ConfigError
    from toolkit.fileio import write_json

    try:
        write_json(path, obj)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None


@app.callback()
def main_options(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False) -> None:
    _state["debug"] = debug


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
    recipe: Annotated[str, typer.Option(help="fast (default) or seed (the 2019 notebook).")] = "fast",
    epochs: Annotated[Optional[int], typer.Option(help="Override the recipe's epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Override the recipe's batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Override the recipe's (peak) learning rate.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed on the CPU gives the same result.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/<model>-<recipe>-seed<seed>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out (default: the latest run).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start again in a run folder that holds a checkpoint.")] = False,
    train_limit: Annotated[Optional[int], typer.Option(help="Train on the first N images only (smoke tests).")] = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Train a model on MNIST; writes checkpoint.pt, history.json and errors.png to the run folder."""
    from toolkit.checkpoint import DEFAULT_RUNS_DIR, latest_checkpoint
    from toolkit.errors import ConfigError
    from toolkit.train import make_config
    from toolkit.train import train as run_training

    overrides = dict(epochs=epochs, batch_size=batch_size, lr=lr, train_limit=train_limit)
    if resume:
        if any(v is not None for v in overrides.values()):
            raise ConfigError("--resume continues a run with its own settings; drop --epochs/--batch-size/--lr/--train-limit")
        run_dir = out_dir or latest_checkpoint(DEFAULT_RUNS_DIR).parent
        config = make_config(recipe, model=model, seed=seed, device=device)
    else:
        config = make_config(recipe, model=model, seed=seed, device=device, **overrides)
        run_dir = out_dir or DEFAULT_RUNS_DIR / f"{config.model}-{config.recipe}-seed{config.seed}"

    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    table = Table(title=f"training {config.model} ({config.recipe} recipe) -> {run_dir}")
    for col in ("epoch", "train loss", "train acc %", "test loss", "test acc %", "lr", "seconds"):
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

    def on_epoch(s: Any, total: int) -> None:
        table.add_row(f"{s.epoch}/{total}", f"{s.train_loss:.4f}", f"{s.train_accuracy:.2f}", f"{s.test_loss:.4f}",
                      f"{s.test_accuracy:.2f}", f"{s.lr:.4f}", f"{s.seconds:.1f}")

    try:
        result = run_training(config, data_dir, run_dir, resume=resume, overwrite=overwrite,
                              on_epoch=on_epoch, on_batch=on_batch)
    finally:
        progress.update(task, visible=False)
        if live.is_started:
            live.stop()
    out.print(f"{result.model}: {result.parameters:,} parameters; device {result.device}"
              f"{', bf16 autocast' if result.bf16 else ''}; test accuracy {result.test_accuracy:.2f}% "
              f"after {len(result.history)} epochs ({result.train_seconds:.1f} s"
              f"{f', resumed after epoch {result.resumed_from_epoch}' if result.resumed_from_epoch else ''})",
              highlight=False)
    out.print(f"wrote {result.checkpoint}, {Path(result.run_dir) / 'history.json'}, "
              f"{Path(result.run_dir) / 'errors.png'}")


def _default_checkpoint(checkpoint: Path | None) -> Path:
    from toolkit.checkpoint import DEFAULT_RUNS_DIR, latest_checkpoint

    return checkpoint or latest_checkpoint(DEFAULT_RUNS_DIR)


@_command
def export(
    format: Annotated[Optional[list[str]], typer.Option("--format", help="onnx, torchscript, onnx-app or all (comma list or repeated).")] = None,
    precision: Annotated[Optional[list[str]], typer.Option(help="fp32, fp16, int8 or all (ONNX only for fp16/int8).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint to export (default: the latest under runs/).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the artifacts and manifest.json.")] = Path("exported"),
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 20,
    simplify: Annotated[bool, typer.Option(help="Simplify the ONNX graph with onnxslim.")] = True,
    calibration_size: Annotated[int, typer.Option(help="Training images used to calibrate int8.")] = 500,
    quant_format: Annotated[str, typer.Option(help="int8 graph form: qdq or qoperator.")] = "qdq",
    quant_activation: Annotated[str, typer.Option(help="int8 activation type: u8 or s8 (weights are s8).")] = "u8",
    per_channel: Annotated[bool, typer.Option(help="Per-channel int8 weight scales (default per-tensor: faster here, same accuracy).")] = False,
    data_dir: DataDir = Path("data"),
) -> None:
    """Export a checkpoint to ONNX and/or TorchScript, with metadata and exported/manifest.json."""
    from toolkit.export import ExportConfig, plan
    from toolkit.export import export as run_export

    pairs = plan(_csv(format) or ["onnx"], _csv(precision) or ["fp32"])
    config = ExportConfig(checkpoint=str(_default_checkpoint(checkpoint)), out_dir=str(out_dir), opset=opset,
                          simplify=simplify, data_dir=str(data_dir), calibration_size=calibration_size,
                          quant_format=quant_format, quant_activation=quant_activation, per_channel=per_channel)
    with _status("exporting"):
        result = run_export(config, pairs, log=lambda m: err.print(m))
    table = Table(title=f"artifacts from {config.checkpoint}")
    for col in ("file", "format", "precision", "size KiB", "sha256", "input", "outputs"):
        table.add_column(col)

    def io(specs: list[dict]) -> str:
        return ", ".join(f"{s['name']} {s['dtype']}[{','.join(map(str, s['shape']))}]" for s in specs)

    for a in result.artifacts:
        table.add_row(a.file, a.format, a.precision, f"{a.size_bytes / 1024:.0f}", a.sha256[:12], io(a.inputs),
                      io(a.outputs))
    out.print(table)
    out.print(f"wrote {result.manifest}")


@_command
def verify(
    artifacts: Annotated[Path, typer.Option(help="Folder with manifest.json.")] = Path("exported"),
    checkpoint: Annotated[Optional[Path], typer.Option(help="Reference checkpoint (default: the one the artifacts came from).")] = None,
    provider: Annotated[str, typer.Option(help="ONNX Runtime provider: cpu, cuda or tensorrt.")] = "cpu",
    format: Annotated[Optional[list[str]], typer.Option("--format", help="Only these formats.")] = None,
    precision: Annotated[Optional[list[str]], typer.Option(help="Only these precisions.")] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(help="Override a tolerance: PRECISION.FIELD=VALUE, e.g. fp16.min_agreement=0.998.")] = None,
    batch1_images: Annotated[int, typer.Option(help="Test images also run one at a time.")] = 2000,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON here.")] = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Run all 10,000 MNIST test images through PyTorch and every artifact; exit 1 if any artifact fails."""
    from toolkit.errors import ConfigError
    from toolkit.verify import VerifyConfig, parse_tolerance_overrides
    from toolkit.verify import verify as run_verify

    if batch1_images < 0:
        raise ConfigError("batch1-images must not be negative")
    config = VerifyConfig(artifacts=str(artifacts), checkpoint=str(checkpoint) if checkpoint else None,
                          data_dir=str(data_dir), provider=provider, formats=tuple(_csv(format)),
                          precisions=tuple(_csv(precision)), batch1_images=batch1_images,
                          tolerances=parse_tolerance_overrides(_csv(tolerance)))
    with _status("verifying") as status:
        report = run_verify(config, on_artifact=lambda r: status.update(f"verified {r.artifact}"))
    table = Table(title=f"parity with PyTorch on {report.n:,} MNIST test images "
                        f"(PyTorch accuracy {report.reference_accuracy:.2f}%, provider {report.provider})")
    for col in ("artifact", "format", "precision", "max |diff|", "mean |diff|", "agreement", "accuracy %",
                "Δ acc", "batch-1 |diff|", "result"):
        table.add_column(col, justify="right" if col not in ("artifact", "format", "precision", "result") else "left")
    for r in report.results:
        table.add_row(r.artifact, r.format, r.precision, f"{r.max_abs_diff:.2e}", f"{r.mean_abs_diff:.2e}",
                      f"{r.agreement:,}/{r.n:,}", f"{r.accuracy:.2f}", f"{r.accuracy_delta:+.2f}",
                      f"{r.batch1_max_diff:.1e} (n={r.batch1_n})",
                      _styled("pass", "green") if r.passed else _styled(f"FAIL: {'; '.join(r.failures)}", "red"))
    out.print(table)
    out.print(f"verified in {report.seconds:.1f} s")
    if json_path:
        _write_json(json_path, report.to_json())
    report.raise_for_failures()


@_command
def bench(
    provider: Annotated[Optional[list[str]], typer.Option(help="cpu, cuda, tensorrt or all (comma list or repeated).")] = None,
    artifacts: Annotated[Path, typer.Option(help="Folder with manifest.json.")] = Path("exported"),
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint for the PyTorch eager baseline (default: the artifacts' source).")] = None,
    format: Annotated[Optional[list[str]], typer.Option("--format", help="Narrow to these: onnx, onnx-app, torchscript, pytorch.")] = None,
    precision: Annotated[Optional[list[str]], typer.Option(help="Narrow to these precisions.")] = None,
    batch_sizes: Annotated[Optional[list[str]], typer.Option(help="Batch sizes (default 1,8,64,256,1024).")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="Timed calls per point (instead of --seconds).")] = None,
    seconds: Annotated[float, typer.Option(help="Time budget per point.")] = 1.0,
    warmup: Annotated[int, typer.Option(help="Untimed calls before each timed block.")] = 5,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds over all runtimes.")] = 3,
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads on the CPU (default: the runtimes' own).")] = None,
    optimization: Annotated[Optional[list[str]], typer.Option(help="ONNX Runtime graph optimization levels to compare: all, extended, basic, none.")] = None,
    concurrency: Annotated[Optional[list[str]], typer.Option(help="ONNX Runtime CPU: calls in flight at once to compare, e.g. 1,2 (each gets cores/N threads).")] = None,
    cuda_graph: Annotated[bool, typer.Option(help="Also time ONNX Runtime CUDA with CUDA graphs.")] = False,
    matmul_peak: Annotated[bool, typer.Option(help="Measure the CPU's float32 matmul peak (for the efficiency target).")] = True,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the full results as JSON here.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Write a markdown table here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG of throughput against batch size here.")] = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Latency percentiles and throughput per runtime, precision and batch size."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from toolkit import bench as bench_lib

    config = bench_lib.BenchConfig(
        artifacts=str(artifacts), checkpoint=str(checkpoint) if checkpoint else None, data_dir=str(data_dir),
        providers=tuple(_csv(provider) or ["cpu"]), formats=tuple(_csv(format)), precisions=tuple(_csv(precision)),
        batch_sizes=tuple(_ints(batch_sizes, "batch sizes") or bench_lib.DEFAULT_BATCH_SIZES),
        warmup=warmup, iterations=iterations, seconds=seconds, rounds=rounds, threads=threads,
        optimizations=tuple(_csv(optimization) or ["all"]),
        concurrency=tuple(_ints(concurrency, "concurrency") or [1]), cuda_graph=cuda_graph, matmul_peak=matmul_peak)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("benchmarking", total=None)
        report = bench_lib.bench(config, on_progress=lambda done, total, what: progress.update(
            task, completed=done, total=total, description=what))
    gpu = report.machine.get("gpu")
    table = Table(title=f"inference on {report.machine['cpu']} ({report.machine['cpu_cores']} cores)"
                        + (f" + {gpu['name']}" if gpu else ""))
    for col in ("runtime", "provider", "I/O", "batch", "first ms", "p50 ms", "p90 ms", "p99 ms", "images/s"):
        table.add_column(col, justify="left" if col in ("runtime", "provider", "I/O") else "right")
    for p in report.points:
        table.add_row(p.name, p.provider, p.io, str(p.batch_size), f"{p.first_call_ms:.2f}", f"{p.p50_ms:.3f}",
                      f"{p.p90_ms:.3f}", f"{p.p99_ms:.3f}", f"{p.throughput:,.0f}")
    out.print(table)
    for name, reason in report.skipped.items():
        out.print(f"skipped provider {name}: {reason}")
    if report.matmul_peak_gflops:
        out.print(f"float32 matmul peak: {report.matmul_peak_gflops:.1f} GFLOP/s; model: "
                  f"{report.model_flops_per_image / 1e6:.2f} MFLOP per image")
    for name, t in report.targets.items():
        out.print(Text.assemble(("met", "green") if t["met"] else ("missed", "red"),
                                f" {name}: {t['value']:.2f} (target {t['target']}) — {t['detail']}"))
    if json_path:
        _write_json(json_path, report.to_json())
    if markdown:
        from toolkit.fileio import write_bytes

        write_bytes(markdown, bench_lib.markdown_table(report).encode())
    if plot:
        bench_lib.plot(report, plot)


@_command
def predict(
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files.")],
    model: Annotated[Optional[Path], typer.Option(help="A toolkit .onnx (default: exported/model.app.onnx, else exported/model.onnx).")] = None,
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
        out.print_json(json.dumps([p.__dict__ for p in predictions]))
        return
    table = Table(title=f"predictions by {model}")
    for col in ("file", "digit", "probability"):
        table.add_column(col)
    for p in predictions:
        table.add_row(p.file, str(p.digit), f"{p.probability:.4f}")
    out.print(table)


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
