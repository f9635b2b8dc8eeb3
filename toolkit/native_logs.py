"""What the runtimes' and converters' C++ code writes to the process's stderr: start-up notices and log lines
(absl/glog style) that are no concern of a user, whose stderr carries progress and errors only.

Python's own redirection cannot reach them: they are written to file descriptor 2 directly.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# An info or warning line of absl/glog ("I0000 00:00:1796554880.275008  5871 port.cc:153] ...", torch's
# "W1206 11:01:07.122000 5871 torch/utils/_pytree.py:630] ...") and absl's notice before its first one.
LOG_LINE = re.compile(r"[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\] |WARNING: All log messages before absl::InitializeLog\(\)")


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Drop everything written to stderr in the block, at the file descriptor and in Python: for loading a
    runtime that announces itself (ExecuTorch's CPU probing, LiteRT's delegate notice)."""
    with open(os.devnull, "w") as null, _stderr_fd_to(null.fileno()), contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def filtered() -> Iterator[None]:
    """Drop the info and warning log lines written to stderr in the block and pass the rest on at its end (a
    progress line comes late, never lost; an error line stays): for a converter that logs as it works."""
    with tempfile.TemporaryFile() as sink:
        try:
            with _stderr_fd_to(sink.fileno()):
                yield
        finally:
            sink.seek(0)
            kept = [line for line in sink.read().decode(errors="replace").splitlines(keepends=True)
                    if not LOG_LINE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@contextlib.contextmanager
def _stderr_fd_to(fileno: int) -> Iterator[None]:
    """File descriptor 2 pointed at `fileno` for the block, and back after it."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fileno, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
