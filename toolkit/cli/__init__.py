"""The `toolkit` command line: parses options, calls the library, renders results, maps errors to exit codes.

This package is the only part of toolkit that imports typer or prints. `common` holds the consoles and the
option helpers, `tables` every table and progress display, `pipeline` and `inspect` the commands; this
module registers them on `app` and turns every failure into one line and an exit code. Library modules are
imported inside each command so that `toolkit --help` and the torch-free `toolkit predict` stay fast and light.
"""

from __future__ import annotations

import functools
import inspect as inspect_module
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any

import typer
import typer.core

from toolkit import sysinfo
from toolkit.cli import inspect, pipeline
from toolkit.cli.common import _error, _state, err, out
from toolkit.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED, ToolkitError

# Plain (click) help rather than rich panels: it wraps the help text and never cuts an option's name, at any
# width; defaults show as [default: ...], values as named placeholders (SIZES, PATH).
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
                  help="Train the MNIST ConvNet (or bring your own model's weights), export it to ONNX, OpenVINO "
                       "IR, torch.export, AOTInductor, ExecuTorch, LiteRT or TorchScript, prove each file computes "
                       "what PyTorch does, and benchmark it.")

# An argument's help names its value by its metavar (A, FILE, IMAGES); typer would add the Python type too
# (<list[Path]>), which says nothing to a user.
typer.core.TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]

# Modules outside the base (inference-only) install that are no runtime, and the extra that brings each one; a
# runtime's module and extra are in its row of toolkit.runners.RUNTIMES.
EXTRA_FOR_MODULE = {name: "train" for name in ("torch", "torchvision", "onnx", "onnxscript", "onnxslim", "matplotlib")}
# Commands that cannot run on the base install: --help says which extra they need.
EXTRA_FOR_COMMAND = {"train": "train", "export": "train"}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every temporary file is removed on the way out."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def _help(fn: Callable[..., Any]) -> tuple[str, str]:
    """(help, short help) of a command: its docstring, and for one that needs an extra, which one and whether
    it is installed here."""
    doc = inspect_module.cleandoc(fn.__doc__ or "")
    summary = doc.split("\n\n", 1)[0].replace("\n", " ").rstrip(".")
    extra = EXTRA_FOR_COMMAND.get(fn.__name__)
    if extra is None:
        return doc, summary + "."
    missing = not sysinfo.installed("torch")
    note = f"Needs the {extra} extra: pip install 'toolkit[{extra}]'" + (" (not installed here)." if missing else ".")
    return f"{doc}\n\n{note}", f"{summary} [needs toolkit[{extra}]{': not installed' if missing else ''}]"


def _command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register a command whose typed errors become one line on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ModuleNotFoundError as e:
            needed = _not_installed((e.name or "").partition(".")[0])
            if needed is None or _state["debug"]:
                raise
            _error(f"toolkit {fn.__name__} needs {needed[0]}, which is not installed; {needed[1]}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except ToolkitError as e:
            _traceback_if_debug()
            _error(str(e))
            raise typer.Exit(e.exit_code) from None
        except Terminated:
            err.print("terminated")
            raise typer.Exit(EXIT_TERMINATED) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except MemoryError:
            _traceback_if_debug()
            _error("out of memory; use a smaller batch size or fewer images")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except OSError as e:  # the environment, not toolkit: a full disk, a permission, a vanished file
            _traceback_if_debug()
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            _error(f"{e.strerror or e}{where}")
            raise typer.Exit(EXIT_BAD_INPUT) from None

    help_text, short_help = _help(fn)
    return app.command(help=help_text, short_help=short_help)(wrapper)


def _not_installed(module: str) -> tuple[str, str] | None:
    """(what a command that could not import `module` needs, the pip command that installs it), or None for a
    module that no extra of toolkit brings: a bug, not a missing install."""
    if module in EXTRA_FOR_MODULE:
        return module, f"pip install 'toolkit[{EXTRA_FOR_MODULE[module]}]'"
    from toolkit.runners import RUNTIMES

    runtime = next((r for r in RUNTIMES.values() if r.module == module and r.extra), None)
    return None if runtime is None else (f"runtime {runtime.name}", runtime.install_hint)


def _traceback_if_debug() -> None:
    """With --debug, the traceback of the error being handled, before its one line: the exit code stays the
    error's own, so a script sees the same code with and without --debug."""
    if _state["debug"]:
        traceback.print_exc()


def _print_version(value: bool) -> None:
    if value:
        from toolkit import __version__

        out.print(f"toolkit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print nothing but errors and the results asked for (predict's digits, JSON on "
                              "stdout): no tables, progress or notes.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    _state["debug"] = debug
    _state["quiet"] = quiet
    out.quiet = quiet


# in the order `toolkit --help` lists them: the pipeline's stages, then what uses their files
for _fn in (pipeline.data, pipeline.train, pipeline.export, pipeline.verify,
            inspect.compare, inspect.bench, inspect.predict, inspect.web):
    _command(_fn)


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
            if type(e).__name__ == "NoArgsIsHelpError" or not e.format_message():
                # no arguments at all: the help, as --help prints it (older click printed it itself)
                ctx = getattr(e, "ctx", None)
                if ctx is not None and e.format_message():
                    sys.stdout.write(ctx.get_help() + "\n")
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
