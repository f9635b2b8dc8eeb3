"""Timing candidates: warm-up, then timed calls in interleaved rounds, on real test images rotated among batches.

Rounds interleave every candidate and batch size, so drift on a shared machine hits all of them alike; the
very first call of each is timed apart, since it pays for lazy initialisation the later calls do not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit import data as mnist
from toolkit.bench.config import BenchConfig
from toolkit.bench.search import Candidate, Runner, Timed, run_guard
from toolkit.errors import ConfigError

ROTATE = 8  # distinct input batches cycled through, so no cache holds one batch's answers
WARMUP_SHARE = 0.5  # of a timed block's budget, at most, spent warming up
# timed calls per point at least, shared over its rounds: a slow call (batch 1024 in PyTorch eager) would
# otherwise cost several times its budget
MIN_CALLS = 3


def _measure(run: Callable[[int], Any], warmup: int, iterations: int | None, seconds: float,
             offset: int, concurrency: int = 1, min_calls: int = MIN_CALLS,
             drain: Callable[[], Any] = lambda: None) -> tuple[list[float], float]:
    """Time calls of `run` after up to `warmup` untimed ones; returns (per-call seconds, wall seconds).

    `drain` waits for work the calls left running: once after the warm-up, untimed, and once at the end, inside
    the wall time.

    Warm-up stops early, after at least one call, once it has taken WARMUP_SHARE of the block's `seconds`: a
    slow call (a large batch in a slow runtime) is warm after one, and five of them would cost more than the
    timing. With concurrency N, N threads call `run` at once (the runtimes release the GIL while they compute),
    each for the same budget; the wall time then covers all of them.
    """
    warm0, warmed = time.perf_counter(), 0
    while warmed < warmup and (warmed == 0 or time.perf_counter() - warm0 < WARMUP_SHARE * seconds):
        run(offset + warmed)
        warmed += 1
    drain()
    offset += warmed
    # a fixed count is shared out so the callers' calls add up to it (each makes one at least)
    calls = [None if iterations is None else max(1, iterations // concurrency + (k < iterations % concurrency))
             for k in range(concurrency)]
    if concurrency == 1:
        wall0 = time.perf_counter()
        times = _loop(run, offset, calls[0], seconds, concurrency, min_calls)
        drain()
        return times, time.perf_counter() - wall0

    # threads are started before the clock and released together, so their start-up is not timed
    start = threading.Barrier(concurrency + 1)
    parts: list[list[float]] = [[] for _ in range(concurrency)]

    def worker(k: int) -> None:
        start.wait()
        parts[k] = _loop(run, offset + k, calls[k], seconds, concurrency, min_calls)

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for w in workers:
        w.start()
    start.wait()
    wall0 = time.perf_counter()
    for w in workers:
        w.join()
    drain()
    return [t for part in parts for t in part], time.perf_counter() - wall0


def _loop(run: Callable[[int], Any], start_index: int, budget_calls: int | None, seconds: float,
          stride: int, min_calls: int = MIN_CALLS) -> list[float]:
    """One caller's timed calls: `budget_calls` of them, or as many as `seconds` allows (at least `min_calls`).

    Concurrent callers start at neighbouring indices and step by their number, so no two run the same batch.
    """
    times = []
    start = time.perf_counter()
    i = start_index
    while True:
        t0 = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - t0)
        i += stride
        if budget_calls is not None:
            if len(times) >= budget_calls:
                return times
        elif time.perf_counter() - start >= seconds and len(times) >= min_calls:
            return times


def bench_pixels(data_dir: str) -> np.ndarray:
    """The MNIST test images (a file without them is fed random_pixels)."""
    return mnist.load_split(data_dir, "test")[0]


def _batches(pixels: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """ROTATE batches of real test images; past the 10,000 images they wrap around."""
    n = len(pixels)
    try:
        return [np.take(pixels, np.arange(k * batch_size, (k + 1) * batch_size) % n, axis=0) for k in range(ROTATE)]
    except MemoryError:
        raise ConfigError(f"not enough memory for {ROTATE} batches of {batch_size:,} images; "
                          "use smaller batch sizes") from None


@dataclass(frozen=True)
class Budget:
    """How long each point is timed: rounds, and per point either `iterations` calls or `seconds` in all."""

    rounds: int
    seconds: float
    warmup: int
    iterations: int | None = None

    @classmethod
    def of(cls, config: BenchConfig) -> Budget:
        return cls(config.rounds, config.seconds, config.warmup, config.iterations)


@dataclass
class Series:
    """What the rounds gather for one candidate at one batch size."""

    first_ms: float
    batches_per_call: int = 1
    times: list[float] = field(default_factory=list)
    wall_s: float = 0.0


Job = tuple[Candidate, tuple[int, ...]]  # a candidate and the batch sizes to time it at


def steps(jobs: list[Job], budget: Budget) -> int:
    """How many timed blocks `time_rounds` runs: the unit of its progress."""
    return sum(len(sizes) for _, sizes in jobs) * budget.rounds


def time_rounds(jobs: list[Job], open_runner: Callable[[Candidate], Runner],
                pixels: np.ndarray | Callable[[Candidate], np.ndarray], budget: Budget,
                on_progress: Callable[[int, str], None] | None = None) -> dict[tuple[str, int], Series]:
    """Interleaved rounds over every job's candidate and batch sizes; the first call of each is timed apart.

    `pixels` are the images every candidate is fed, or a function giving each one's. Each round opens each
    candidate's runner afresh and lets it go afterwards: one runner's memory at a time.
    `on_progress(steps done, what)` follows each timed block.
    """
    series: dict[tuple[str, int], Series] = {}
    done = 0
    per_round = None if budget.iterations is None else max(1, budget.iterations // budget.rounds)
    min_calls = -(-MIN_CALLS // budget.rounds)  # per round and caller
    for rnd in range(budget.rounds):
        for c, sizes in jobs:
            runner = open_runner(c)
            for bs in sizes:
                with run_guard(runner):
                    timed = runner.timed(_batches(pixels(c) if callable(pixels) else pixels, bs), c.io)
                    s = series.get((c.key, bs)) or _first_call(timed)
                    series[(c.key, bs)] = s
                    # a later round's runner is a new one, but the same file is already in the caches: one call
                    # warms it
                    warmup = budget.warmup if rnd == 0 else min(budget.warmup, 1)
                    block, wall = _measure(timed.call, warmup, per_round, budget.seconds / budget.rounds,
                                           offset=rnd, concurrency=c.concurrency, min_calls=min_calls,
                                           drain=timed.drain)
                s.times.extend(block)
                s.wall_s += wall
                done += 1
                if on_progress:
                    on_progress(done, f"{c.runtime} {c.format}/{c.precision} {c.options.device} batch {bs}")
            del runner, timed
    return series


def _first_call(timed: Timed) -> Series:
    t0 = time.perf_counter()
    timed.call(0)
    timed.drain()
    return Series((time.perf_counter() - t0) * 1e3, timed.batches_per_call)
