"""Progress for every long stage, shown the same way by every command.

On a terminal: a rich bar with the stage's description, a count (M/N, or bytes for downloads), the time
elapsed and an ETA. In a pipe or a file: a plain line with the same facts once the stage has run 2 s, then every
10 s while it runs (whether or not the library reported anything new, so a log never goes quiet for minutes),
and one at the end; a stage over within 2 s prints nothing (a mistake found at once stays a one-line error).
`-q` shows nothing. The library only calls `update(done, total, what)`; nothing here decides
what a stage is.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Column, Table
from rich.text import Text

from toolkit.cli.common import _printable, _state, err, out

PIPE_FIRST_S = 2.0
PIPE_INTERVAL_S = 10.0


def clock(seconds: float | None) -> str:
    """0:07, 1:02:03; '-:--' when not known yet."""
    if seconds is None:
        return "-:--"
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def count(done: float, total: float | None, as_bytes: bool) -> str:
    """'3/12' or '1.2/9.9 MB'; '3/?' while the total is unknown."""
    if as_bytes:
        return f"{done / 1e6:.1f}/{'?' if total is None else f'{total / 1e6:.1f}'} MB"
    return f"{int(done)}/{'?' if total is None else int(total)}"


def eta_s(elapsed: float, done: float, total: float | None) -> float | None:
    """Seconds left at the average rate so far; None before the first step or without a total."""
    if total is None or done <= 0 or elapsed <= 0:
        return None
    return max(0.0, elapsed * (total - done) / done)


class _TimesColumn(ProgressColumn):
    """'0:12 elapsed, ETA 0:30': the same average-rate estimate as the pipe's lines."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        return Text(f"{clock(elapsed)} elapsed, ETA {clock(eta_s(elapsed, task.completed, task.total))}",
                    style="progress.elapsed")


def columns(as_bytes: bool = False) -> tuple[ProgressColumn, ...]:
    """The bar's columns. The description is plain text (markup=False: a file name is never read as markup); it
    and the bar share what the count and the times leave (3:1), the description cut with an ellipsis when the
    line is short, so the facts always show."""
    return (TextColumn("{task.description}", markup=False,
                       table_column=Column(no_wrap=True, overflow="ellipsis", ratio=3, min_width=12)),
            BarColumn(bar_width=None, table_column=Column(no_wrap=True, ratio=1, min_width=6)),
            (DownloadColumn if as_bytes else MofNCompleteColumn)(table_column=Column(no_wrap=True)),
            _TimesColumn(table_column=Column(no_wrap=True)))


class StageProgress:
    """update(done, total, what) from the library, shown as a bar (terminal) or plain lines (pipe).

    `console`: where it shows (stderr by default). `above`: a renderable kept over the bar while it runs (train's
    epoch table); the bar then shares one live display with it. `lazy`: start showing at the first update, not
    at entry (data shows nothing when every file is already there; train's errors before the first batch print
    alone). `first_s`, `interval_s`: when the pipe's first line comes, and how often the next ones (by default
    PIPE_FIRST_S and PIPE_INTERVAL_S).
    """

    def __init__(self, description: str, *, console: Console | None = None, as_bytes: bool = False,
                 above: RenderableType | None = None, lazy: bool = False,
                 first_s: float | None = None, interval_s: float | None = None,
                 quiet: bool | None = None) -> None:
        self.console = console or err
        self.description = description
        self.as_bytes = as_bytes
        self.above = above
        self.lazy = lazy
        self.first_s = PIPE_FIRST_S if first_s is None else first_s  # the module's, as they are at the start
        self.interval_s = PIPE_INTERVAL_S if interval_s is None else interval_s
        self.lines = 0  # printed in a pipe
        self.quiet = _state.get("quiet", False) if quiet is None else quiet
        self.terminal = self.console.is_terminal
        self.done: float = 0
        self.total: float | None = None
        self.what = ""
        self.started_at: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._bar: Progress | None = None
        self._live: Any = None
        self._task: Any = None

    # the library's side
    def update(self, done: float, total: float | None = None, what: str | None = None) -> None:
        """`done` of `total` steps (None: unknown yet, or unchanged); `what`: the step now under way."""
        with self._lock:
            self.done = done
            if total is not None:
                self.total = total
            if what is not None:
                self.what = _printable(what)
        if self.started_at is None:
            self._start()
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=self.total, description=self._label())

    def restart(self, description: str, total: float | None) -> None:
        """Begin a new run of the bar (train's next epoch): count and times from zero."""
        with self._lock:
            self.description, self.done, self.total, self.what = description, 0, total, ""
            if self.started_at is not None:
                self.started_at = time.monotonic()
        if self.started_at is None:
            self._start()
        elif self._bar is not None:
            self._bar.reset(self._task, total=total, description=self._label())

    # what a person sees
    def _label(self) -> str:
        return f"{self.description}: {self.what}" if self.what else self.description

    def line(self, final: bool = False) -> str:
        """The pipe's line: description, count (and percentage), elapsed and ETA, or the total time at the end."""
        with self._lock:
            elapsed = time.monotonic() - (self.started_at or time.monotonic())
            done, total = self.done, self.total
            label = self._label() if not final else self.description
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        if total is None and not done:
            return f"{label}: started {clock(elapsed)} ago" if not final else f"{label}: done in {clock(elapsed)}"
        if final:
            return f"{label}: done, {count(done, total, self.as_bytes)} in {clock(elapsed)}"
        return (f"{label} {count(done, total, self.as_bytes)}{pct}, {clock(elapsed)} elapsed, "
                f"ETA {clock(eta_s(elapsed, done, total))}")

    def _emit(self, final: bool = False) -> None:
        self.console.print(self.line(final), markup=False, highlight=False, soft_wrap=True)
        self.console.file.flush()
        self.lines += 1

    def _tick(self) -> None:
        wait = self.first_s
        while not self._stop.wait(wait):
            self._emit()
            wait = self.interval_s

    # lifetime
    def _start(self) -> None:
        self.started_at = time.monotonic()
        if self.quiet:
            return
        if not self.terminal:
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()
            return
        self._bar = Progress(*columns(self.as_bytes), console=self.console, transient=True, expand=True,
                             refresh_per_second=4 if self.above is None else 2)  # a low rate: rendering costs CPU
        self._task = self._bar.add_task(self._label(), total=self.total, completed=self.done)
        if self.above is None:
            self._bar.start()
        else:
            from rich.live import Live

            self._live = Live(Group(self.above, self._bar), console=self.console, refresh_per_second=2)
            self._live.start(refresh=True)  # drawn at once: a fast epoch may end before the first refresh

    def __enter__(self) -> StageProgress:
        if not self.lazy:
            self._start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            if exc_type is None and self.lines:
                self._emit(final=True)
        if self._bar is not None:
            if self._live is not None:
                self._bar.update(self._task, visible=False)
                self._live.stop()  # the table above stays on the screen; the bar goes
            else:
                self._bar.stop()


@contextlib.contextmanager
def stage(description: str) -> Iterator[Callable[[int, int, str], None]]:
    """An on_progress(done, total, what) callback for a stage that counts steps (export, verify, bench)."""
    with StageProgress(description) as progress:
        yield lambda done, total, what: progress.update(done, total, what)


@contextlib.contextmanager
def download_progress() -> Iterator[Callable[[str, int, int | None], None]]:
    """An on_progress(name, done_bytes, total_bytes) callback for data's downloads, one file after another;
    nothing shows when every file is already there."""
    with StageProgress("downloading", as_bytes=True, lazy=True) as progress:
        current = ""

        def on_progress(name: str, done: int, total: int | None) -> None:
            nonlocal current
            if name != current:
                current = name
                progress.restart(f"downloading {name}", total)
            progress.update(done, total)

        yield on_progress


@contextlib.contextmanager
def epoch_display(header: str, epochs: int, validation: bool) -> Iterator[tuple[Callable[..., None], ...]]:
    """(on_epoch, on_batch) callbacks for train. On a terminal: a live table of the finished epochs with the
    running epoch's bar below it. In a pipe: one line per epoch on stdout as it finishes (so `toolkit train |
    tee log` keeps them), and the bar's plain lines on stderr. `validation`: the run holds out a validation
    split, shown in its own column."""
    columns = ("epoch", "train loss", "train acc %", *(("val acc %",) if validation else ()), "test loss",
               "test acc %", "peak lr", "seconds")

    def cells(s: Any, total: int) -> tuple[str, ...]:
        val = (f"{s.val_accuracy:.2f}",) if validation else ()
        return (f"{s.epoch}/{total}", f"{s.train_loss:.4f}", f"{s.train_accuracy:.2f}", *val, f"{s.test_loss:.4f}",
                f"{s.test_accuracy:.2f}", f"{s.lr if s.peak_lr is None else s.peak_lr:.3g}", f"{s.seconds:.1f}")

    table = Table(title=header)
    for col in columns:
        table.add_column(col, justify="right")
    terminal = out.is_terminal
    headed = terminal  # on a terminal, the header is the table's title

    def head() -> None:
        nonlocal headed
        if not headed:
            out.print(header)
            headed = True

    # lazy: the display, and in a pipe the header, start with the first batch, so that an error found before
    # training (a run folder that holds a checkpoint, a device that is not there, no data) prints alone
    with StageProgress("epoch", console=out if terminal else err, above=table if terminal else None,
                       lazy=True) as progress:

        def on_epoch(s: Any, total: int) -> None:
            head()
            if terminal:
                table.add_row(*cells(s, total))
                return
            out.print("  ".join(f"{name}={value}" for name, value in zip(columns, cells(s, total))))
            out.file.flush()

        def on_batch(epoch: int, batch: int, total: int) -> None:
            if batch == 1:
                head()
                progress.restart(f"epoch {epoch}/{epochs}", total)
            progress.update(batch, total)  # cheap: the display redraws at its own rate

        yield on_epoch, on_batch
        head()  # a resumed run that had no epoch left to train
