"""What a bench run measures, and the bounds every setting is checked against before anything runs."""

from __future__ import annotations

from dataclasses import dataclass

from toolkit import devices
from toolkit.bounds import is_number_within
from toolkit.errors import ConfigError
from toolkit.formats import MODES, check_selection
from toolkit.runners import OPENVINO_HINTS
from toolkit.runners.base import DEFAULT_TIME_LIMIT_S, check_time_limit

DEFAULT_BATCH_SIZES = (1, 8, 64, 256, 1024)
OPTIMIZATION_LEVELS = ("all", "extended", "basic", "none")
# Upper bounds, so a typo cannot ask for a run that never ends or an allocation that cannot succeed.
MAX_BATCH_SIZE = 65_536
LIMITS = {"iterations": 10_000_000, "rounds": 1_000, "warmup": 100_000, "threads": 1_024, "concurrency": 256,
          "verify_images": 10_000}
MAX_SECONDS = 3_600.0
MIN_SECONDS = 0.01  # shorter, a point is one call or none: its p50 and p99 would say nothing


@dataclass(frozen=True)
class BenchConfig:
    artifacts: str = "exported"
    checkpoint: str | None = None  # for the PyTorch eager baseline; default: the manifest's
    data_dir: str = "data"
    providers: tuple[str, ...] = ("cpu",)
    runtimes: tuple[str, ...] = ("all",)  # every installed runtime; a missing one is skipped with a note
    formats: tuple[str, ...] = ()  # artifact formats and/or "pytorch" (the checkpoint); empty: everything
    precisions: tuple[str, ...] = ()
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    warmup: int = 5  # untimed calls before each timed block
    iterations: int | None = None  # timed calls per point; None: run for `seconds` per point
    seconds: float = 0.3  # time budget per point, split over the rounds (a search probe gets a share)
    rounds: int = 3
    threads: int | None = None  # intra-op threads on the CPU; None: each runtime's default
    # The settings each runtime is tried at. By default a short search keeps each one's best (see tuning.py);
    # `sweep` times every combination at every batch size instead.
    optimizations: tuple[str, ...] = ("all", "extended")  # ONNX Runtime graph optimization levels
    # ONNX Runtime CPU: calls in flight at once, each on cores/N threads (one call: the default, and one thread)
    concurrency: tuple[int, ...] = (1, 2)
    cuda_graph: bool = False  # also time ONNX Runtime CUDA with CUDA graphs (device-resident I/O)
    # OpenVINO inference precisions; empty: f32, plus bf16 where the CPU computes bf16 natively (a mode this CPU
    # only emulates is timed only when named)
    modes: tuple[str, ...] = ()
    hints: tuple[str, ...] = OPENVINO_HINTS  # OpenVINO performance hints
    sweep: bool = False  # time the whole cross product of settings x batch sizes, not the search's choices
    verify: bool = True  # check each configuration on the test set first; "fastest" names verified ones only
    # test images that check spans, spread evenly over the set (`toolkit verify` judges every file on all of them)
    verify_images: int = 2_000
    matmul_peak: bool = False  # measure the CPU's float32 and int8 matmul peaks for the efficiency targets
    # seconds one model call may run: a manifest can be forged, so its files may never finish (None: no limit)
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S

    def __post_init__(self) -> None:
        _check_ints("batch sizes", self.batch_sizes, 1, MAX_BATCH_SIZE)
        _check_ints("concurrency", self.concurrency, 1, LIMITS["concurrency"])
        for name in ("rounds", "warmup", "iterations", "threads", "verify_images"):
            value = getattr(self, name)
            if value is not None:
                _check_ints(name.replace("_", " "), (value,), 0 if name == "warmup" else 1, LIMITS[name])
        if not is_number_within(self.seconds, MIN_SECONDS, MAX_SECONDS):
            raise ConfigError(f"seconds per point must be a number from {MIN_SECONDS:g} to {MAX_SECONDS:g}, "
                              f"not {self.seconds}")
        for what, values, allowed in (("optimization level", self.optimizations, OPTIMIZATION_LEVELS),
                                      ("OpenVINO precision", self.modes or MODES[:1], MODES),
                                      ("OpenVINO hint", self.hints, OPENVINO_HINTS)):
            _check_names(what, values, allowed)
        check_selection(self.formats, self.precisions, extra_formats=("pytorch",))  # pytorch: the checkpoint
        for p in self.providers:  # every name, also beside 'all'
            devices.check(p, "all")
        check_time_limit(self.time_limit_s)


def _check_ints(what: str, values: tuple[int, ...], low: int, high: int) -> None:
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high for v in values):
        raise ConfigError(f"{what} must be {'positive ' if low else ''}whole numbers from {low} to {high:,}")


def _check_names(what: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    # an empty list would time nothing at all, so it is refused like an unknown name
    unknown = [v for v in values if v not in allowed] or ([] if values else ["(none)"])
    if unknown:
        raise ConfigError(f"unknown {what} {unknown[0]!r}; use {', '.join(allowed)}")
