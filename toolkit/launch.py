"""The `toolkit` command's entry point (and `python -m toolkit`'s).

Loading the CLI imports typer, numpy and ONNX Runtime, a few tenths of a second in which Python's own handling
of Ctrl-C would print a KeyboardInterrupt traceback and SIGTERM would end the process without a word. Nothing
has been read or written yet then, so a signal ends it at once with the line and exit code a command gives
(errors.py); once loaded, the CLI's own handling takes over (cli.main).
"""

from __future__ import annotations

import os
import signal

from toolkit.errors import EXIT_INTERRUPTED, EXIT_TERMINATED


def _stop_while_loading(signum: int, frame: object) -> None:
    interrupted = signum == signal.SIGINT
    os.write(2, b"interrupted\n" if interrupted else b"terminated\n")
    os._exit(EXIT_INTERRUPTED if interrupted else EXIT_TERMINATED)


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_while_loading)
    from toolkit.cli import main as cli_main

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises KeyboardInterrupt again
    cli_main()  # sets its own SIGTERM handler
