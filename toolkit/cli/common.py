"""What every command shares: the two consoles, one-line errors, option parsing and output-path checks."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.text import Text

from toolkit import sysinfo
from toolkit.runners import RUNTIMES

# Piped output is 200 columns wide: tables stay whole in logs and CI. On a terminal, tables that do not fit
# drop their less important columns and fold (never cut) the names that tell rows apart (see
# tables._print_table). Markup is off: file names and messages are text (a file called "d[x].png" prints as
# itself); styles are applied with Text objects.
out = Console(width=None if sys.stdout.isatty() else 200, markup=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200, markup=False)
_state = {"debug": False, "quiet": False}
# the endings of Python source (a script, a windowed script, a type stub): no result is ever written over one
PYTHON_SUFFIXES = (".py", ".pyw", ".pyi")


def _path(value: str | Path) -> Path:
    """The parser of every path option and argument: an empty value names nothing (Path("") would silently be the
    current folder), so it is refused like any other bad value."""
    if str(value) == "":
        raise typer.BadParameter("an empty path names no file or folder; give one")
    return Path(value)


def _text(value: str) -> str:
    """The parser of a text option whose absence means something (--model-code: none, a built-in model): an
    empty value would silently mean that absence, so it is refused."""
    if value == "":
        raise typer.BadParameter("an empty value says nothing; give one, or leave the option out")
    return value


DataDir = Annotated[Path, typer.Option("--data-dir", envvar="TOOLKIT_DATA_DIR", parser=_path, metavar="FOLDER",
                                       help="Folder holding MNIST/raw/.")]
# One spelling per idea across the commands: --device (as train says it; --provider, the name the inference
# commands used first, stays an alias) and --json PATH, where - is stdout.
DeviceOption = Annotated[str, typer.Option("--device", "--provider", metavar="DEVICE", help="cpu, cuda or tensorrt.")]
JsonOption = Annotated[Optional[Path], typer.Option(
    "--json", parser=_path, metavar="PATH",
    help="Write the results as JSON to PATH (- for stdout, then the only output there).")]
# Every model run is bounded: a file the toolkit did not write (or a forged export folder) may never finish.
_TIME_LIMIT_HELP = ("Seconds one model call may run before it is stopped ({}): a file the toolkit did not write may "
                    "never finish.")
TimeLimit = Annotated[float, typer.Option("--time-limit", metavar="SECONDS", help=_TIME_LIMIT_HELP.format("exit 2"))]
# verify goes on with the other artifacts: the one stopped fails, like one that crashes
VerifyTimeLimit = Annotated[float, typer.Option(
    "--time-limit", metavar="SECONDS", help=_TIME_LIMIT_HELP.format("that artifact fails"))]


def defaults(cls: Any) -> dict[str, Any]:
    """A config dataclass's defaults as option defaults (tuples as lists of strings): --help shows the library's
    own values, and no second copy of them can drift."""
    import dataclasses

    return {f.name: [str(v) for v in f.default] if isinstance(f.default, tuple) else f.default
            for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def _printable(text: str) -> str:
    """User-supplied text (file names above all) made safe for a terminal: control characters such as ESC are
    shown as escapes (\\x1b), never sent, so a file name cannot recolour or rewrite the screen."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text)


def _error(message: str, label: str = "error:") -> None:
    """One line on stderr: the label in bold red, then the message as plain text (never markup)."""
    err.print(Text.assemble((label, "bold red"), " ", _printable(" ".join(str(message).split()))), soft_wrap=True)


def _csv(values: list[str] | None) -> list[str]:
    """Options given as repeated flags and/or comma lists ('--format onnx,torchscript', spaces allowed around
    each item). A value that names nothing ('--batch-sizes ""') is an error, not the option's default, and so is
    an empty item ('--batch-sizes 1,,2'): a list with a hole in it is malformed, never read as a shorter one."""
    from toolkit.errors import ConfigError

    if any(not item.strip(" ,") for item in values or []):
        raise ConfigError(f"an option was given an empty value ({', '.join(map(repr, values or []))}); name at least "
                          "one, or leave the option out for its default")
    items = [v.strip() for item in values or [] for v in item.split(",")]
    if not all(items):
        hole = next(item for item in values or [] if not all(v.strip() for v in item.split(",")))
        raise ConfigError(f"the list {hole[:60]!r} has an empty item (two commas in a row, or one at an end); "
                          "give each value once, separated by single commas")
    return items


def _ints(values: list[str] | None, what: str) -> list[int]:
    from toolkit.errors import ConfigError

    try:
        return [int(v) for v in _csv(values)]
    except ValueError:
        raise ConfigError(f"{what} must be whole numbers, e.g. 1,8,64") from None


def require(module: str) -> None:
    """Raise ModuleNotFoundError, which every command turns into "needs MODULE, which is not installed; pip install
    ...", when `module` is missing: called once the options have passed their checks, before work that would fail
    for another reason first (export with no run to default to: training one needs torch too)."""
    if not sysinfo.installed(module):
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)


def given(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was given (on the command line or in the environment), not left at its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


def openvino_options(runtimes: list[str], **given: bool) -> None:
    """ConfigError for an OpenVINO option (--mode, --hint) given where --runtime leaves OpenVINO out: it would do
    nothing, and the user would not know."""
    from toolkit.errors import ConfigError

    if runtimes and not {"openvino", "all"} & set(runtimes):
        for option, was_given in given.items():
            if was_given:
                raise ConfigError(f"--{option} sets how OpenVINO runs, and --runtime {','.join(runtimes)} leaves "
                                  f"OpenVINO out; add openvino to --runtime or drop --{option}")


def _config(cls: Any, **given: Any) -> Any:
    """A library config from the options the user gave; the rest keep the dataclass's own defaults."""
    return cls(**{k: v for k, v in given.items() if v is not None and v != ()})


def _outputs(*paths: Path | None, inputs: tuple[Path | None, ...] = ()) -> None:
    """Check output paths before any work starts, so a long run never fails at its last step and never
    replaces what is not a result file: a device, a FIFO, a link, a folder, one of the command's inputs, a model,
    checkpoint or export file wherever it is, Python code, or a training run's file beside its checkpoint.

    `--json -` means stdout: the JSON is then the only thing printed there (tables are left out).
    """
    from toolkit.errors import ConfigError

    given = [p for p in paths if p is not None and str(p) != "-"]
    if any(p is not None and str(p) == "-" for p in paths):
        out.quiet = True
    for path in given:
        if str(path).startswith("-"):  # `--json --model m.onnx` would otherwise write a file called --model
            raise ConfigError(f"{path} looks like an option, not a file to write; give a path, or - for stdout")
        _check_output(path, [i for i in inputs if i is not None])
    resolved = [os.path.abspath(p) for p in given]
    if len(set(resolved)) != len(resolved):
        raise ConfigError("two outputs name the same file; give each its own")


@functools.cache
def _model_names() -> tuple[str, tuple[str, ...]]:
    """The manifest's name and the suffixes of model, checkpoint and export files, built once."""
    from toolkit.artifacts import MANIFEST_NAME
    from toolkit.formats import FORMATS

    # .pbtxt: the config.pbtxt of each model in an export's Triton repository, which the server reads
    suffixes = {s for f in FORMATS.values() for s in (f.suffix, *f.companions)} | {".npy", ".pt", ".pth", ".pbtxt"}
    return MANIFEST_NAME, tuple(sorted(suffixes))


def _is_model_file(path: Path) -> bool:
    manifest, suffixes = _model_names()
    return path.name == manifest or path.name.endswith(suffixes)


def _is_binary(path: Path) -> bool:
    """Whether an existing file is binary data other than a PNG: what no result (JSON, markdown, a PNG plot) ever
    was, whatever its name (a model renamed .json)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False  # not readable: check_target and the write itself say so
    return b"\0" in head and not head.startswith(b"\x89PNG\r\n\x1a\n")


def export_inputs(folder: Path, checkpoint: Path | None = None) -> tuple[Path, ...]:
    """What a command reads from an export folder, which its outputs may not replace: the manifest, the model
    files and their companions, the golden outputs and reference inputs (.npy), the checkpoints beside it, the
    checkpoint the manifest names, the model code it records (`--model-code FILE.py:CLASS`), and `checkpoint`
    (--checkpoint)."""
    from toolkit.artifacts import read_manifest_fields
    from toolkit.errors import ArtifactError

    try:
        files = [p for p in folder.iterdir() if _is_model_file(p)]
    except OSError:
        files = []
    try:  # the reference checkpoint, usually in the run folder, recorded relative to the manifest
        artifacts, fields = read_manifest_fields(folder)
    except ArtifactError:
        artifacts, fields = [], {}  # no manifest, or a bad one: the command itself says so
    files += [folder / a.source_checkpoint for a in artifacts[:1] if a.source_checkpoint]
    code = _model_code_file(fields.get("model"))
    return (*files, *([code] if code is not None else []), *([checkpoint] if checkpoint is not None else []))


def _model_code_file(model: Any) -> Path | None:
    """The file of the model code a manifest records (`FILE.py:CLASS`, a path export read relative to the folder it
    ran in, as the same path from here names it) when it is there; None for none, a module name (its files are
    .py files, which no result replaces anyway) or a value no export writes."""
    code = model.get("code") if isinstance(model, dict) else None
    where = code.rpartition(":")[0] if isinstance(code, str) else ""
    if not where.endswith(".py"):
        return None
    try:
        return Path(where) if Path(where).is_file() else None
    except (OSError, ValueError):  # a name too long, or with a NUL byte: nothing to protect
        return None


def _check_output(path: Path, inputs: list[Path]) -> None:
    from toolkit.errors import ConfigError, OutputError
    from toolkit.fileio import check_target

    if path.is_dir() and not path.is_symlink():
        raise ConfigError(f"cannot write {path}: it is a folder; give a file name")
    try:
        check_target(path)
    except OutputError as e:
        raise ConfigError(str(e)) from None
    if path.exists():
        _check_replaceable(path, inputs)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: {parent} is not a writable folder")


def _is_run_file(path: Path) -> bool:
    """Whether `path` is one of a training run's files (history.json, errors.png) beside the run's checkpoint."""
    from toolkit.checkpoint import CHECKPOINT_NAME, RUN_FILES

    return path.name in RUN_FILES and (path.parent / CHECKPOINT_NAME).is_file()


def _check_replaceable(path: Path, inputs: list[Path]) -> None:
    """ConfigError unless the existing file at `path` may be replaced by a result: not one of the command's
    inputs, not a model, checkpoint or export file, not Python code (model code), not a training run's record
    beside its checkpoint, nor binary data of any name."""
    from toolkit.errors import ConfigError

    same = next((i for i in inputs if i.exists() and os.path.samefile(path, i)), None)
    if same is not None:
        raise ConfigError(f"cannot write {path}: it is one of this command's inputs ({same})")
    if _is_model_file(path):
        raise ConfigError(f"cannot write {path}: it is a model, checkpoint or export file, not a results file; "
                          "give the results a file name of their own")
    if path.suffix.lower() in PYTHON_SUFFIXES:
        raise ConfigError(f"cannot write {path}: it is Python code (model code, perhaps), not a results file; "
                          "give the results a file name of their own")
    if _is_run_file(path):
        raise ConfigError(f"cannot write {path}: it is a training run's file, beside its checkpoint, not a results "
                          "file; give the results a file name of their own")
    if _is_binary(path):
        raise ConfigError(f"cannot write {path}: it holds binary data, not a result (JSON, markdown or a PNG); "
                          "give the results a file name of their own")


def _write_json(path: Path, obj: Any) -> None:
    from toolkit.fileio import json_text, write_json

    if str(path) == "-":
        sys.stdout.write(json_text(obj) + "\n")
        sys.stdout.flush()
        return
    write_json(path, obj)  # OutputError (one line) if the disk or folder refuses


def note(message: str) -> None:
    """A note on stderr (what a stage wrote, removed or kept), left out under --quiet like progress."""
    if not _state["quiet"]:
        err.print(message, highlight=False, soft_wrap=True)  # one line, as the terminal wraps it, never split


def _print_result(renderable: Any) -> None:
    """Print what the user asked for on stdout, under --quiet too (quiet silences everything else)."""
    quiet, out.quiet = out.quiet, False
    try:
        out.print(renderable)
    finally:
        out.quiet = quiet


RUNTIME_NAMES = tuple(RUNTIMES)  # for help texts: every runtime the toolkit has, from its table
