"""The runner interface every runtime implements, and the error helpers they share.

A runner is one model loaded in one runtime on one device. It takes uint8 pixels [N, 28, 28] and returns
named outputs (`formats.OUTPUTS` of its input kind): `log_probs` for the normalized models, `probabilities`
and `digit` for the app model. It can also be prepared for timing (`timed`: inputs converted once, I/O bound,
CUDA graphs). Each runtime's module builds its native object with a loader from hash-checked bytes and hands
it to its runner class.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit import formats
from toolkit.bounds import is_number_within
from toolkit.errors import ArtifactError, ConfigError, ToolkitError
from toolkit.preprocess import MEAN, STD, normalize

IO_MODES = ("host", "device")  # host: inputs from numpy and outputs back (copies timed); device: resident


@dataclass(frozen=True)
class RunnerOptions:
    """How to open a runner; each runtime reads the fields that apply to it."""

    device: str = "cpu"  # a key of devices.DEVICES (torch runs tensorrt rows as cuda)
    threads: int | None = None  # intra-op threads on the CPU; None: the runtime's default
    optimization: str = "all"  # ONNX Runtime graph optimization level
    mode: str = formats.DEFAULT_MODE  # the runtime's compute mode (formats.MODES): OpenVINO's f32 (parity) or bf16
    hint: str = "latency"  # OpenVINO performance hint: latency (one call at a time) or throughput (async queue)
    cuda_graph: bool = False  # ONNX Runtime CUDA: replay a CUDA graph (device-resident I/O)
    time_limit_s: float | None = None  # stop a model call that runs longer (None: no limit, signals still stop it)

    def __post_init__(self) -> None:
        check_time_limit(self.time_limit_s)


MAX_TIME_LIMIT_S = 86_400.0
DEFAULT_TIME_LIMIT_S = 60.0  # for files the toolkit did not write (compare, bench FILE, predict)


def check_time_limit(value: float | None) -> None:
    """ConfigError unless `value` is None or a finite number of seconds in (0, MAX_TIME_LIMIT_S]."""
    if value is None:
        return
    if not is_number_within(value, 0.0, MAX_TIME_LIMIT_S) or value == 0:
        raise ConfigError(f"--time-limit must be a number of seconds in (0, {MAX_TIME_LIMIT_S:g}], not {value!r}")


@dataclass
class Timed:
    """A prepared timing loop body: `call(i)` runs batch i (of the rotated ones) `batches_per_call` at a time.

    A call may return with work still running (an async queue kept fed): `drain()` waits for it, so a timed
    block that ends with it covers every batch it started. Made inside `run_guard`, each call restarts the
    guard's clock: the time limit is per call."""

    call: Callable[[int], Any]
    batches_per_call: int = 1
    drain: Callable[[], Any] = lambda: None

    def __post_init__(self) -> None:
        watch = getattr(_local, "watch", None)
        if watch is not None:
            call = self.call

            def restart_clock(i: int) -> Any:
                watch.started = time.monotonic()
                return call(i)
            self.call = restart_clock


class Runner:
    """One model loaded in one runtime. Subclasses set `runtime` and implement `_infer` (and `_feed` when their
    input is not a numpy array)."""

    runtime = ""

    def __init__(self, label: str, kind: str, options: RunnerOptions) -> None:
        self.label = label  # the file (or checkpoint) it was opened from, for messages
        self.kind = kind  # formats.NORMALIZED or formats.APP ("foreign" for files the toolkit did not make)
        self.options = options
        self.mean, self.std = MEAN, STD
        self.inputs_as_given = False  # True: fed reference inputs, the model's own input already, not pixels
        self.metadata: dict[str, str] = {}  # the toolkit metadata read from the file, where it has any

    @property
    def outputs(self) -> tuple[str, ...]:
        return formats.OUTPUTS[self.kind]

    def settings(self) -> dict[str, Any]:
        """What this runner was opened with, as recorded in results."""
        return {"device": self.options.device}

    @property
    def computed_mode(self) -> str:
        """The compute mode the runtime reports using: the one asked for, unless the runtime chose another
        (OpenVINO computes f32 when asked for bf16 on a CPU that has neither bf16 nor AVX-512)."""
        return self.options.mode

    def _feed(self, pixels: np.ndarray) -> Any:
        """uint8 pixels -> this runtime's input (normalized floats for the normalized models); inputs as given
        pass through, and a subclass converts either for its runtime."""
        return pixels if self.kind == formats.APP or self.inputs_as_given else normalize(pixels, self.mean, self.std)

    def _infer(self, native: Any) -> list[Any]:
        raise NotImplementedError

    @property
    def failure_hint(self) -> str:
        """What to add to the message of a call that failed inside the model (what it was fed, what to try)."""
        return ""

    @property
    def time_limit_s(self) -> float | None:
        return self.options.time_limit_s

    def _cancel(self) -> bool:
        """Ask the runtime to stop the call in progress (from another thread); False when it cannot."""
        return False

    def _uncancel(self) -> None:
        """Make the runner usable again after `_cancel`."""

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for uint8 pixels [N, 28, 28]; a failure inside the model is an ArtifactError."""
        with run_guard(self):
            raw = self._infer(self._feed(pixels))
        if len(raw) != len(self.outputs):
            raise ArtifactError(f"{self.label} on {self.runtime} returned {len(raw)} outputs, expected "
                                f"{len(self.outputs)} ({', '.join(self.outputs)})")
        return {name: np.asarray(value) for name, value in zip(self.outputs, raw)}

    def timed(self, batches: list[np.ndarray], io: str = "host") -> Timed:
        """A loop body for bench: inputs converted once, so only the runtime's call is timed."""
        with run_guard(self):
            inputs = [self._feed(b) for b in batches]
        return Timed(lambda i: self._infer(inputs[i % len(inputs)]))


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's text on one line, cut at `limit` characters (its type's name when it has none). A text that
    carries a traceback (TorchScript's holds the serialized code of each frame) gives its last line: the error."""
    text = str(e)
    if "Traceback" in text:
        text = next((line for line in reversed(text.splitlines()) if line.strip()), text)
    return " ".join(text.split())[:limit] or type(e).__name__


@contextlib.contextmanager
def run_guard(runner: Runner) -> Iterator[None]:
    """Run a model under watch: interruptible and bounded, its failures turned into typed errors.

    While the block runs, SIGINT or SIGTERM (through `signal.set_wakeup_fd`, so even while the main thread is
    inside the runtime's C++ code) and passing the runner's time limit make a watcher thread cancel the call
    (ONNX Runtime's `RunOptions.terminate`, OpenVINO's `cancel()`). A runtime that cannot be stopped ends the
    process after a grace period instead (exit 130/143, or 2 for a time limit). A call that returns past the
    limit (one shorter than the watcher's 0.1 s tick, or one that finished despite the cancel) fails the same
    way: its outputs are never used. What the runtime raises becomes a ConfigError (memory) or an ArtifactError.
    """
    watch = _WATCHER.watch(runner)
    outer, _local.watch = getattr(_local, "watch", None), watch
    try:
        yield
    except ToolkitError:
        raise
    except MemoryError:
        raise ConfigError(f"not enough memory to run {runner.label} on {runner.runtime}; use smaller batches") from None
    except Exception as e:  # each runtime raises its own types (ORT's Fail/RuntimeException, cv2.error, ...)
        if watch.timed_out:
            raise ArtifactError(timeout_message(runner)) from None
        if watch.signalled:
            raise KeyboardInterrupt from None  # the signal's own handler normally raises first
        text = one_line(e)
        if "alloc" in text.lower() or "out of memory" in text.lower():
            raise ConfigError(f"cannot allocate memory to run {runner.label} on {runner.runtime} "
                              f"({text[:120]}); use smaller batches") from None
        raise ArtifactError(f"{runner.label} failed while running on {runner.runtime}: {text}"
                            f"{runner.failure_hint}") from None
    else:
        if watch.ran_over():
            raise ArtifactError(timeout_message(runner))
    finally:
        _local.watch = outer
        _WATCHER.unwatch(watch)
        if watch.cancelled:
            runner._uncancel()


def timeout_message(runner: Runner) -> str:
    return (f"{runner.label} ran longer than the time limit of {runner.time_limit_s:g} s on {runner.runtime} "
            "and was stopped; raise --time-limit if it is just slow")


GRACE_S = 1.5  # after a cancel, how long a runtime may take to return before the process ends itself
_local = threading.local()


class _Watch:
    """One guarded stretch of model calls: its runner, when its current call started, what happened to it."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.started = time.monotonic()
        self.timed_out = False
        self.signalled = 0
        self.cancelled = False
        self.stuck_after: float | None = None

    def ran_over(self) -> bool:
        """Whether the current call passed its runner's time limit, whether the watcher caught it or not."""
        limit = self.runner.time_limit_s
        return self.timed_out or (limit is not None and time.monotonic() - self.started > limit)


class _Watcher:
    """The process's one watcher thread: woken by signals (set_wakeup_fd) and every 0.1 s, it cancels watched
    calls on SIGINT/SIGTERM or when they pass their time limit, and ends the process if they do not stop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watches: list[_Watch] = []
        self.wakeup: int | None = None
        self.thread: threading.Thread | None = None

    def watch(self, runner: Runner) -> _Watch:
        w = _Watch(runner)
        with self.lock:
            self._start()
            self.watches.append(w)
        return w

    def unwatch(self, w: _Watch) -> None:
        with self.lock:
            if w in self.watches:
                self.watches.remove(w)

    def _start(self) -> None:
        if self.thread is not None:
            return
        if threading.current_thread() is threading.main_thread():
            read, write = os.pipe()
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
            if previous != -1:  # someone else (an event loop) owns the wakeup fd: leave it to them
                signal.set_wakeup_fd(previous)
                os.close(read)
                os.close(write)
            else:
                self.wakeup = read
        self.thread = threading.Thread(target=self._loop, name="toolkit-run-guard", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            signums = b""
            if self.wakeup is not None:
                ready, _, _ = select.select([self.wakeup], [], [], 0.1)
                if ready:
                    with contextlib.suppress(BlockingIOError):
                        signums = os.read(self.wakeup, 64)
            else:
                time.sleep(0.1)
            signum = next((n for n in signums if n in (signal.SIGINT, signal.SIGTERM)), 0)
            with self.lock:
                watches = list(self.watches)
            now = time.monotonic()
            for w in watches:
                limit = w.runner.time_limit_s
                if signum and not w.signalled:
                    w.signalled = signum
                    self._cancel(w, now)
                elif limit is not None and not w.timed_out and not w.signalled and now - w.started > limit:
                    w.timed_out = True
                    self._cancel(w, now)
                elif w.stuck_after is not None and now > w.stuck_after:
                    _end_process(w)

    @staticmethod
    def _cancel(w: _Watch, now: float) -> None:
        try:
            w.cancelled = w.runner._cancel()
        except Exception:  # a runtime that fails to cancel is treated as one that cannot
            w.cancelled = False
        w.stuck_after = now + (GRACE_S if w.cancelled else 0.2)


_WATCHER = _Watcher()


def _end_process(w: _Watch) -> None:
    """The last resort for a runtime that does not return when cancelled: leave at once, with the code the
    CLI would have used (130 Ctrl-C, 143 SIGTERM, 2 a time limit)."""
    if w.signalled:
        code = 128 + w.signalled
        line = "interrupted" if w.signalled == signal.SIGINT else "terminated"
    else:
        code, line = 2, "error: " + timeout_message(w.runner)
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode(errors="replace"))
    os._exit(code)


def load_error(label: str, runtime: str, e: Exception) -> ArtifactError:
    """The error for a file `runtime` cannot read or compile."""
    return ArtifactError(f"{runtime} cannot load {label}: {one_line(e)}")


def check_kind(label: str, declared_format: str, found_kind: str) -> None:
    """ArtifactError when a file's input is not the kind its manifest's format says."""
    if formats.kind_of(declared_format) != found_kind:
        raise ArtifactError(f"{label}: manifest says {declared_format} but its input is {found_kind}")
