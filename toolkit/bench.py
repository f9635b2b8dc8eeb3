"""Inference latency and throughput of every runtime the toolkit knows, on every artifact it opens.

Built for shared, noisy machines: every configuration and batch size is measured in several interleaved
rounds (so drift hits all of them alike), after warm-up, on real MNIST test images rotated among several
batches; the very first call is reported apart; results are percentiles of all timed calls. Each
configuration is first verified on all 10,000 test images, so "fastest" only ever names one that passes.

bench.bench is three steps: validate (BenchConfig itself), build the candidates, time them in rounds.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import data as mnist
from toolkit import devices, formats, runners, sysinfo
from toolkit.artifacts import Artifact, find_checkpoint, read_manifest, read_model_file, read_model_flops
from toolkit.errors import ArtifactError, CheckpointError, ConfigError
from toolkit.formats import MODES
from toolkit.runners import IO_MODES, RUNTIMES, Runner, RunnerOptions, Timed

DEFAULT_BATCH_SIZES = (1, 8, 64, 256, 1024)
OPTIMIZATION_LEVELS = ("all", "extended", "basic", "none")
ROTATE = 8  # distinct input batches cycled through, so no cache holds one batch's answers
VERIFY_BATCH1_IMAGES = 100  # bench's own parity check runs this many images one at a time too
# Upper bounds, so a typo cannot ask for a run that never ends or an allocation that cannot succeed.
MAX_BATCH_SIZE = 65_536
LIMITS = {"iterations": 10_000_000, "rounds": 1_000, "warmup": 100_000, "threads": 1_024, "concurrency": 256}
MAX_SECONDS = 3_600.0
_APP_FORMATS = tuple(name for name, row in formats.FORMATS.items() if row.kind == formats.APP)  # plotted apart


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
    seconds: float = 1.0  # time budget per point, split over the rounds
    rounds: int = 3
    threads: int | None = None  # intra-op threads on the CPU; None: each runtime's default
    optimizations: tuple[str, ...] = ("all",)  # ONNX Runtime graph optimization levels to compare
    concurrency: tuple[int, ...] = (1,)  # ONNX Runtime CPU: calls in flight at once, each on cores/N threads
    cuda_graph: bool = False  # also time ONNX Runtime CUDA with CUDA graphs (device-resident I/O)
    modes: tuple[str, ...] = MODES  # OpenVINO inference precisions (extra ones on fp32 files)
    hints: tuple[str, ...] = runners.OPENVINO_HINTS  # OpenVINO performance hints
    verify: bool = True  # check each configuration on the test set first; "fastest" names verified ones only
    matmul_peak: bool = True  # measure the CPU's float32 and int8 matmul peaks for the efficiency targets

    def __post_init__(self) -> None:
        _check_ints("batch sizes", self.batch_sizes, 1, MAX_BATCH_SIZE)
        _check_ints("concurrency", self.concurrency, 1, LIMITS["concurrency"])
        for name in ("rounds", "warmup", "iterations", "threads"):
            value = getattr(self, name)
            if value is not None:
                _check_ints(name, (value,), 0 if name == "warmup" else 1, LIMITS[name])
        if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds)
                and 0 < self.seconds <= MAX_SECONDS):
            raise ConfigError(f"seconds per point must be a finite number in (0, {MAX_SECONDS:g}], not {self.seconds}")
        for what, values, allowed in (("optimization level", self.optimizations, OPTIMIZATION_LEVELS),
                                      ("OpenVINO precision", self.modes, formats.MODES),
                                      ("OpenVINO hint", self.hints, runners.OPENVINO_HINTS)):
            unknown = [v for v in values if v not in allowed] or ([] if values else ["(none)"])
            if unknown:
                raise ConfigError(f"unknown {what} {unknown[0]!r}; use {', '.join(allowed)}")
        for p in self.providers:  # every name, also beside 'all'
            devices.check(p, "all")


def _check_ints(what: str, values: tuple[int, ...], low: int, high: int) -> None:
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high for v in values):
        raise ConfigError(f"{what} must be {'positive ' if low else ''}whole numbers from {low} to {high:,}")


@dataclass
class BenchPoint:
    runtime: str  # a key of runners.RUNTIMES
    format: str  # onnx, onnx-app, torchscript, pytorch
    precision: str
    provider: str  # cpu, cuda, tensorrt
    io: str  # host or device
    optimization: str  # ORT graph optimization level; "-" for the others
    cuda_graph: bool
    batch_size: int
    concurrency: int  # calls in flight at once (caller threads, or OpenVINO's async requests)
    iterations: int
    threads: int | None
    first_call_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput: float  # images per second: images of all timed calls / wall time of the timed blocks
    mode: str = "-"  # OpenVINO inference precision (f32, bf16); "-" elsewhere
    hint: str = "-"  # OpenVINO performance hint; "-" elsewhere
    verified: bool | None = None  # passed verify's tolerances in this run; None: not checked

    def _settings(self) -> list[str]:
        """The non-default settings, as label words."""
        parts = [] if self.mode in ("-", "f32") else [self.mode]
        if self.optimization not in ("-", "all"):
            parts.append(f"opt={self.optimization}")
        if self.hint == "throughput":
            parts.append(f"async x{self.concurrency}")
        elif self.concurrency > 1:
            parts.append(f"x{self.concurrency} concurrent")
        if self.cuda_graph:
            parts.append("cuda-graph")
        return parts

    @property
    def judged_as(self) -> str:
        return formats.judged_precision(self.precision, self.mode)

    @property
    def name(self) -> str:
        """Runtime, format/precision and non-default settings; provider and I/O left to their own columns."""
        return " ".join([self.runtime, f"{self.format}/{self.precision}", *self._settings()])

    @property
    def label(self) -> str:
        """Everything that tells this point's runtime configuration apart."""
        io = [f"io={self.io}"] if self.provider != "cpu" else []
        return " ".join([self.runtime, f"{self.format}/{self.precision}", self.provider, *io, *self._settings()])


@dataclass
class BenchReport:
    machine: dict[str, Any]
    versions: dict[str, str]
    settings: dict[str, Any]
    session_options: dict[str, Any]
    model_flops_per_image: int | None  # None: unknown here (no torch or checkpoint, and none in the manifest)
    matmul_peak_gflops: float | None
    points: list[BenchPoint]
    load_ms: dict[str, float]
    skipped: dict[str, str]
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    int8_matmul_peak_gops: float | None = None
    runtimes: dict[str, dict[str, Any]] = field(default_factory=dict)  # runtime -> version and settings
    verification: dict[str, dict[str, Any]] = field(default_factory=dict)  # configuration -> verify's verdict
    fastest: dict[str, dict[str, Any]] = field(default_factory=dict)  # regime -> the fastest verified point

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for p, point in zip(d["points"], self.points):
            p["label"] = point.label
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BenchReport:
        """A report read back from `to_json`'s dict (to redraw its plot or tables)."""
        point_fields = set(BenchPoint.__dataclass_fields__)
        points = [BenchPoint(**{k: v for k, v in p.items() if k in point_fields}) for p in d["points"]]
        return cls(**{**{k: v for k, v in d.items() if k in cls.__dataclass_fields__}, "points": points})


@dataclass(frozen=True)
class _Candidate:
    """One runtime configuration to time: a source opened in a runtime with options, and how it is called."""

    runtime: str
    source: Artifact | str  # an artifact, or the checkpoint path for the PyTorch eager baseline
    format: str
    precision: str
    options: RunnerOptions
    io: str = "host"
    concurrency: int = 1  # caller threads sharing the runner

    @property
    def key(self) -> str:
        o = self.options
        return (f"{self.runtime} {self.format}/{self.precision} {o.device} {self.io} {o.optimization} {o.mode} "
                f"{o.hint} c{self.concurrency} t{o.threads}{' cuda-graph' if o.cuda_graph else ''}")

    @property
    def runner_key(self) -> tuple[str, str, str, RunnerOptions]:
        return self.runtime, self.format, self.precision, self.options

    def point(self, batch_size: int, batches_per_call: int, times: list[float], wall_s: float, first_ms: float,
              verified: bool | None) -> BenchPoint:
        tunes = RUNTIMES[self.runtime].tunes
        ms = np.asarray(times) * 1e3
        in_flight = self.concurrency * batches_per_call
        return BenchPoint(
            runtime=self.runtime, format=self.format, precision=self.precision, provider=self.options.device,
            io=self.io, optimization=self.options.optimization if "optimization" in tunes else "-",
            cuda_graph=self.options.cuda_graph, batch_size=batch_size, concurrency=in_flight, iterations=len(ms),
            threads=self.options.threads, first_call_ms=first_ms, p50_ms=float(np.percentile(ms, 50)),
            p90_ms=float(np.percentile(ms, 90)), p99_ms=float(np.percentile(ms, 99)), mean_ms=float(ms.mean()),
            min_ms=float(ms.min()), throughput=batch_size * batches_per_call * len(ms) / wall_s,
            mode=self.options.mode if "mode" in tunes else "-",
            hint=self.options.hint if "hint" in tunes else "-", verified=verified)


# --- building the candidates ----------------------------------------------------------------------------

def _axes(config: BenchConfig, spec: runners.Runtime, device: str, precision: str) -> dict[str, list[dict]]:
    """Each bench setting's values as option dicts; a runtime takes the product over its `tunes`."""
    cpu = device == "cpu"
    return {
        "optimization": [{"optimization": level} for level in config.optimizations] if cpu else [{}],
        "concurrency": [{"concurrency": c} for c in config.concurrency] if cpu else [{}],
        "io": [{}] if cpu else [{"io": m} for m in IO_MODES],
        "cuda_graph": [{}],
        "mode": [{}],  # each run's mode comes with it (runners.runs)
        "hint": [{"hint": h} for h in config.hints],
    }


def _variants(config: BenchConfig, spec: runners.Runtime, device: str, precision: str) -> list[dict[str, Any]]:
    axes = _axes(config, spec, device, precision)
    combos: list[dict[str, Any]] = [{}]
    for axis in spec.tunes:
        combos = [{**c, **v} for c in combos for v in axes[axis]]
    if "cuda_graph" in spec.tunes and config.cuda_graph and device == "cuda":
        combos.append({"cuda_graph": True, "io": "device"})
    return combos


def build_candidates(config: BenchConfig, runtimes: list[str], devices: list[str], manifest: list[Artifact],
                     checkpoint: str) -> list[_Candidate]:
    """Every configuration to time: runtime x device x source x the settings that runtime takes."""
    out = []
    for device in devices:
        # the torch baselines for the GPU run under provider cuda; CPU-only runtimes on cpu
        todo, _ = runners.runs(manifest, runtimes, device, list(config.formats), list(config.precisions), checkpoint)
        for run in todo:
            if run.mode not in config.modes:
                continue
            spec = RUNTIMES[run.runtime]
            for v in _variants(config, spec, device, run.precision):
                concurrency = v.pop("concurrency", 1)
                io = v.pop("io", "host")
                threads = config.threads or (max(1, sysinfo.usable_cores() // concurrency) if concurrency > 1
                                             else None)
                options = RunnerOptions(device=device, threads=threads, mode=run.mode, **v)
                out.append(_Candidate(run.runtime, run.source, run.format, run.precision, options, io, concurrency))
    return out


def _options_words(o: RunnerOptions) -> str:
    return f"opt={o.optimization} threads={o.threads} precision={o.mode} hint={o.hint}"


def _verdict_of(key: tuple, runner: Runner, ref: Any) -> dict[str, Any]:
    """verify's judgement of one runner, on all test images, with the default tolerances of its precision."""
    from toolkit import verify

    runtime, fmt, precision, options = key
    judged = formats.judged_precision(precision, options.mode)
    try:
        fields = verify.check_runner(runner, ref, verify.DEFAULT_TOLERANCES[judged], VERIFY_BATCH1_IMAGES)
    except ArtifactError as e:
        fields = {"passed": False, "failures": [str(e)]}
    return {"runtime": runtime, "artifact": f"{fmt}/{precision}", "judged_as": judged,
            **{k: fields.get(k) for k in ("passed", "agreement", "max_abs_diff", "failures")}}


class _Opener:
    """Opens a candidate's runner for each round (so only one runner's memory is held at a time), recording
    the first opening's time and, when asked, verify's verdict on it."""

    def __init__(self, verify_with: Any = None) -> None:
        self.ref = verify_with
        self.load_ms: dict[str, float] = {}
        self.verdicts: dict[tuple, dict[str, Any]] = {}
        self.settings: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, c: _Candidate) -> Runner:
        runner, ms = runners.open_timed(c.runtime, c.source, c.options)
        self.load_ms.setdefault(f"{c.runtime} {c.format}/{c.precision} {c.options.device} "
                                f"{_options_words(c.options)}", ms)
        if self.ref is not None and c.runner_key not in self.verdicts:
            self.verdicts[c.runner_key] = _verdict_of(c.runner_key, runner, self.ref)
        known = self.settings.setdefault(c.runtime, [])
        if runner.settings() not in known:
            known.append(runner.settings())
        return runner

    def verified(self, c: _Candidate) -> bool | None:
        return self.verdicts[c.runner_key]["passed"] if c.runner_key in self.verdicts else None


# --- timing ---------------------------------------------------------------------------------------------

def _measure(run: Callable[[int], Any], warmup: int, iterations: int | None, seconds: float,
             offset: int, concurrency: int = 1) -> tuple[list[float], float]:
    """Time calls of `run` after `warmup` untimed ones; returns (per-call seconds, wall seconds).

    With concurrency N, N threads call `run` at once (the runtimes release the GIL while they compute), each
    for the same budget; the wall time then covers all of them.
    """
    for i in range(warmup):
        run(offset + i)

    def loop(start_index: int, budget_calls: int | None) -> list[float]:
        times = []
        start = time.perf_counter()
        i = start_index
        while True:
            t0 = time.perf_counter()
            run(i)
            times.append(time.perf_counter() - t0)
            i += concurrency
            if budget_calls is not None:
                if len(times) >= budget_calls:
                    return times
            elif time.perf_counter() - start >= seconds and len(times) >= 3:
                return times

    calls = None if iterations is None else max(1, iterations // concurrency)
    if concurrency == 1:
        wall0 = time.perf_counter()
        times = loop(offset + warmup, calls)
        return times, time.perf_counter() - wall0

    # threads are started before the clock and released together, so their start-up is not timed
    start = threading.Barrier(concurrency + 1)
    parts: list[list[float]] = [[] for _ in range(concurrency)]

    def worker(k: int) -> None:
        start.wait()
        parts[k] = loop(offset + warmup + k, calls)

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for w in workers:
        w.start()
    start.wait()
    wall0 = time.perf_counter()
    for w in workers:
        w.join()
    return [t for part in parts for t in part], time.perf_counter() - wall0


def _best_rate(op: Callable[[Any, Any], Any], make: Callable[[int], tuple[Any, Any]]) -> float:
    """Best rate of `op(a, b)` on n x n operands, in 1e9 multiply-adds x 2 per second."""
    best = 0.0
    for n in (1024, 2048, 2048, 4096):
        a, b = make(n)
        op(a, b)  # warm-up
        for _ in range(3 if n < 4096 else 2):
            t0 = time.perf_counter()
            op(a, b)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def matmul_peak_gflops(dtype: Any = None) -> float:
    """Best matrix-multiply rate of this CPU through torch (MKL/oneDNN), in GFLOP/s, on torch's current thread
    count (bench sets it from --threads); float32 unless `dtype` (a torch dtype, e.g. torch.bfloat16) says."""
    import torch

    dtype = dtype or torch.float32
    return _best_rate(lambda a, b: a @ b, lambda n: (torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)))


def int8_matmul_peak_gops() -> float | None:
    """The same measurement for int8 x int8 -> int32 (torch._int_mm: oneDNN, VNNI where the CPU has it), in
    GOP/s; None where this torch has no CPU int8 matmul."""
    import torch

    if not hasattr(torch, "_int_mm"):
        return None

    def make(n: int) -> tuple[Any, Any]:
        return (torch.randint(-128, 128, (n, n), dtype=torch.int8), torch.randint(-128, 128, (n, n), dtype=torch.int8))
    try:
        return _best_rate(torch._int_mm, make)
    except RuntimeError:  # no CPU kernel in this build
        return None


def _batches(pixels: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """ROTATE batches of real test images; past the 10,000 images they wrap around."""
    n = len(pixels)
    try:
        return [np.take(pixels, np.arange(k * batch_size, (k + 1) * batch_size) % n, axis=0) for k in range(ROTATE)]
    except MemoryError:
        raise ConfigError(f"not enough memory for {ROTATE} batches of {batch_size:,} images; "
                          "use smaller batch sizes") from None


@dataclass
class _Series:
    """What the rounds gather for one candidate at one batch size."""

    first_ms: float
    batches_per_call: int = 1
    times: list[float] = field(default_factory=list)
    wall_s: float = 0.0


def time_rounds(config: BenchConfig, candidates: list[_Candidate], open_runner: Callable[[_Candidate], Runner],
                pixels: np.ndarray, on_progress: Callable[[int, int, str], None] | None = None
                ) -> dict[tuple[str, int], _Series]:
    """Interleaved rounds over every candidate and batch size; the first call of each is timed apart.

    Each round opens each candidate's runner afresh and lets it go afterwards: one runner's memory at a time.
    """
    series: dict[tuple[str, int], _Series] = {}
    total, done = len(candidates) * len(config.batch_sizes) * config.rounds, 0
    per_round = None if config.iterations is None else max(1, config.iterations // config.rounds)
    for rnd in range(config.rounds):
        for c in candidates:
            runner = open_runner(c)
            for bs in config.batch_sizes:
                with runners.run_guard(runner):
                    timed = runner.timed(_batches(pixels, bs), c.io)
                    s = series.get((c.key, bs)) or _first_call(timed)
                    series[(c.key, bs)] = s
                    block, wall = _measure(timed.call, config.warmup, per_round, config.seconds / config.rounds,
                                           offset=rnd, concurrency=c.concurrency)
                s.times.extend(block)
                s.wall_s += wall
                done += 1
                if on_progress:
                    on_progress(done, total, f"{c.runtime} {c.format}/{c.precision} {c.options.device} batch {bs}")
            del runner, timed
    return series


def _first_call(timed: Timed) -> _Series:
    t0 = time.perf_counter()
    timed.call(0)
    return _Series((time.perf_counter() - t0) * 1e3, timed.batches_per_call)


# --- the whole run --------------------------------------------------------------------------------------

def _has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def _find_checkpoint(config: BenchConfig, manifest: list[Artifact], selection: runners.Selection,
                     skipped: dict[str, str]) -> str | None:
    """The checkpoint, for the PyTorch eager baseline and the model's FLOPs; None when it is not needed or, unless
    the baseline was asked for by name, not found (then the baseline is skipped with the reason)."""
    if not _has_torch():
        return None
    try:
        return str(find_checkpoint(config.artifacts, manifest, config.checkpoint))
    except CheckpointError as e:
        if "pytorch" in config.runtimes or "pytorch" in config.formats:
            raise
        if "pytorch" in selection.runtimes:
            selection.runtimes.remove("pytorch")
            if not config.formats and (not config.precisions or "fp32" in config.precisions):
                skipped["runtime pytorch"] = str(e)
        return None


def _model_flops(config: BenchConfig, checkpoint: str | None) -> int | None:
    """FLOPs of one image's forward pass: as export recorded them in the manifest, else counted on the
    checkpoint's model (an older export) where torch and the checkpoint are here; None when neither is known."""
    recorded = read_model_flops(config.artifacts)
    if recorded is not None or checkpoint is None:
        return recorded
    from toolkit.checkpoint import load_checkpoint, model_from_checkpoint
    from toolkit.model import forward_flops

    return forward_flops(model_from_checkpoint(load_checkpoint(checkpoint)))


def bench(config: BenchConfig, on_progress: Callable[[int, int, str], None] | None = None) -> BenchReport:
    """Measure every selected configuration at every batch size; see the module docstring for the method.

    torch is imported only for what needs it (the PyTorch and TorchScript runtimes, the matmul peaks): an
    ONNX-only run needs neither torch nor the checkpoint, and verifies against the golden outputs then.
    """
    t_start = time.perf_counter()
    if config.threads and _has_torch():
        import torch

        torch.set_num_threads(config.threads)
    selection = runners.select_runtimes(config.runtimes)
    devices_used, skipped = devices.expand(config.providers)
    manifest = read_manifest(config.artifacts)
    checkpoint = _find_checkpoint(config, manifest, selection, skipped)
    candidates = build_candidates(config, selection.runtimes, devices_used, manifest, checkpoint or "")
    if not candidates:
        raise ArtifactError("nothing to benchmark: no runtime opens an artifact (or the checkpoint) in the selection")
    from toolkit.verify import resolve_reference

    ref = (resolve_reference(config.artifacts, manifest, checkpoint, "auto", config.data_dir)
           if config.verify else None)
    opener = _Opener(ref)
    pixels, _ = mnist.load_split(config.data_dir, "test")
    series = time_rounds(config, candidates, opener, pixels, on_progress)

    points = [c.point(bs, s.batches_per_call, s.times, s.wall_s, s.first_ms, opener.verified(c))
              for c in candidates for bs in config.batch_sizes for s in [series[(c.key, bs)]]]
    flops = _model_flops(config, checkpoint)
    cpu = config.matmul_peak and "cpu" in devices_used
    if cpu and not _has_torch():
        cpu, skipped["matmul peak"] = False, "measured with torch, which is not installed (--no-matmul-peak)"
    elif cpu and flops is None:
        cpu, skipped["matmul peak"] = False, ("the model's FLOPs are unknown here (no checkpoint, none in the "
                                              "manifest): the efficiency targets need them")
    versions = runners.runtime_versions(list(opener.settings))
    report = BenchReport(
        machine=sysinfo.machine(), versions=sysinfo.versions(), settings=_settings(config, devices_used),
        session_options=_session_options(config), model_flops_per_image=flops,
        matmul_peak_gflops=matmul_peak_gflops() if cpu else None, points=points, load_ms=opener.load_ms,
        skipped={**skipped, **{f"runtime {k}": v for k, v in selection.skipped.items()}},
        int8_matmul_peak_gops=int8_matmul_peak_gops() if cpu else None,
        runtimes={name: {"version": versions[name], "settings": opener.settings[name]} for name in opener.settings},
        verification={f"{k[0]} {k[1]}/{k[2]} {_options_words(k[3])}": v for k, v in opener.verdicts.items()})
    if ref is not None:
        report.settings["reference"] = ref.name
    report.fastest = fastest(report.points)
    report.targets = targets(report)
    report.seconds = time.perf_counter() - t_start
    return report


def _settings(config: BenchConfig, providers: list[str]) -> dict[str, Any]:
    s = asdict(config)
    s["providers"] = providers
    s["rotate_batches"] = ROTATE
    torch = sys.modules.get("torch")  # only where this run imported it
    s["torch_threads"] = torch.get_num_threads() if torch is not None else None
    return s


def _session_options(config: BenchConfig) -> dict[str, Any]:
    return {
        "intra_op_num_threads": config.threads or "onnxruntime default (one per physical core); "
                                                  "cores / N with N concurrent calls",
        "graph_optimization_levels": list(config.optimizations),
        "execution_mode": "sequential",
        "cpu_affinity_cores": sysinfo.usable_cores(),
    }


# --- what the numbers say -------------------------------------------------------------------------------

REGIMES = {"batch 1": "lowest batch-1 p50 latency, one call at a time", "throughput": "highest images/s, any batch"}


def _eligible(points: list[BenchPoint]) -> list[BenchPoint]:
    """Points that may be named fastest: verified in this run (or not checked at all), on the CPU."""
    return [p for p in points if p.verified is not False and p.provider == "cpu"]


def fastest(points: list[BenchPoint]) -> dict[str, dict[str, Any]]:
    """The fastest configuration that passes verify, per regime, across every runtime and precision measured."""
    pool = _eligible(points)
    single = [p for p in pool if p.batch_size == 1 and p.concurrency == 1]
    out = {}
    if single:
        p = min(single, key=lambda p: p.p50_ms)
        out["batch 1"] = {"label": p.label, "p50_ms": p.p50_ms, "throughput": p.throughput, "batch_size": 1,
                          "verified": p.verified}
    if pool:
        p = max(pool, key=lambda p: p.throughput)
        out["throughput"] = {"label": p.label, "p50_ms": p.p50_ms, "throughput": p.throughput,
                             "batch_size": p.batch_size, "verified": p.verified}
    return out


def _best(points: list[BenchPoint], min_batch: int = 1) -> BenchPoint | None:
    eligible = [p for p in points if p.batch_size >= min_batch]
    return max(eligible, key=lambda p: p.throughput) if eligible else None


def _target(value: float, target: float, detail: str, lower_is_better: bool = False) -> dict[str, Any]:
    return {"value": value, "target": target, "met": bool(value <= target if lower_is_better else value >= target),
            "detail": detail}


def targets(report: BenchReport) -> dict[str, dict[str, Any]]:
    """The CPU targets, each as a ratio of two numbers measured in this same run."""
    cpu = [p for p in report.points if p.provider == "cpu"]
    ort32 = [p for p in cpu if p.runtime == "onnxruntime" and p.format == "onnx" and p.precision == "fp32"]
    ort8 = [p for p in cpu if p.runtime == "onnxruntime" and p.format == "onnx" and p.precision == "int8"]
    eager1 = [p for p in cpu if p.runtime == "pytorch" and p.batch_size == 1 and p.concurrency == 1]
    int8 = [p for p in _eligible(cpu) if p.judged_as == "int8"]
    out: dict[str, dict[str, Any]] = {}
    flops = report.model_flops_per_image

    b1_ort = [p for p in ort32 if p.batch_size == 1 and p.concurrency == 1]
    if b1_ort and eager1:
        fast = min(b1_ort, key=lambda p: p.p50_ms)
        out["ort_fp32_batch1_p50_vs_eager"] = _target(
            fast.p50_ms / eager1[0].p50_ms, 0.3, f"{fast.p50_ms:.3f} ms ({fast.label}) / {eager1[0].p50_ms:.3f} ms "
            "(PyTorch eager)", lower_is_better=True)
    b1_all = [p for p in _eligible(cpu) if p.batch_size == 1 and p.concurrency == 1 and p.runtime != "pytorch"]
    if b1_all and eager1:
        fast = min(b1_all, key=lambda p: p.p50_ms)
        out["fastest_verified_batch1_p50_vs_eager"] = _target(
            fast.p50_ms / eager1[0].p50_ms, 0.2, f"{fast.p50_ms:.3f} ms ({fast.label}) / {eager1[0].p50_ms:.3f} ms "
            "(PyTorch eager)", lower_is_better=True)
    top32 = _best(ort32)
    if top32 and report.matmul_peak_gflops:
        achieved = top32.throughput * flops / 1e9
        out["ort_fp32_throughput_vs_matmul_peak"] = _target(
            achieved / report.matmul_peak_gflops, 0.6, f"{top32.throughput:.0f} img/s x {flops / 1e6:.2f} MFLOP = "
            f"{achieved:.1f} GFLOP/s of {report.matmul_peak_gflops:.1f} GFLOP/s ({top32.label}, batch {top32.batch_size})")
    b32, b8 = _best(ort32, 64), _best(ort8, 64)
    if b32 and b8:
        out["ort_int8_vs_fp32_throughput"] = _target(
            b8.throughput / b32.throughput, 1.5, f"{b8.throughput:.0f} img/s ({b8.label}, batch {b8.batch_size}) / "
            f"{b32.throughput:.0f} img/s ({b32.label}, batch {b32.batch_size}); best at batch >= 64")
    top8 = _best(int8, 64)
    if top8 and b32:
        out["best_verified_int8_vs_ort_fp32_throughput"] = _target(
            top8.throughput / b32.throughput, 2.0, f"{top8.throughput:.0f} img/s ({top8.label}, batch "
            f"{top8.batch_size}) / {b32.throughput:.0f} img/s ({b32.label}, batch {b32.batch_size}); batch >= 64")
    top8_any = _best(int8)
    if top8_any and report.int8_matmul_peak_gops:
        achieved = top8_any.throughput * flops / 1e9
        out["best_int8_throughput_vs_int8_matmul_peak"] = _target(
            achieved / report.int8_matmul_peak_gops, 0.5, f"{top8_any.throughput:.0f} img/s x {flops / 1e6:.2f} MOP = "
            f"{achieved:.1f} GOP/s of {report.int8_matmul_peak_gops:.1f} GOP/s int8 ({top8_any.label}, "
            f"batch {top8_any.batch_size})")
    return out


def target_goal(name: str, target: float) -> str:
    """How a target reads: '<= x' for the latency ratio against eager (lower is better), '>= x' otherwise."""
    return f"<= {target}" if name.endswith("vs_eager") else f">= {target}"


def markdown_table(report: BenchReport) -> str:
    """A README-ready table of every point, the fastest verified configurations and the targets."""
    gpu = report.machine.get("gpu")
    where = f"{report.machine['cpu']} ({report.machine['cpu_cores']} cores)" + (f", {gpu['name']}" if gpu else "")
    versions = ", ".join(f"{name} {r['version']}" for name, r in report.runtimes.items()) or "-"
    lines = [f"Measured on {where}; {versions}.", "",
             "| runtime | format/precision | provider | I/O | opt | mode | concurrent | batch | p50 ms | p90 ms "
             "| p99 ms | first call ms | images/s | verified |",
             "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for p in report.points:
        mode = " ".join(x for x in (p.mode, p.hint) if x != "-") or "-"
        lines.append(f"| {p.runtime}{' (CUDA graph)' if p.cuda_graph else ''} | {p.format}/{p.precision} | "
                     f"{p.provider} | {p.io} | {p.optimization} | {mode} | {p.concurrency} | {p.batch_size} | "
                     f"{p.p50_ms:.3f} | {p.p90_ms:.3f} | {p.p99_ms:.3f} | {p.first_call_ms:.2f} | "
                     f"{p.throughput:,.0f} | {_verdict(p.verified)} |")
    if report.fastest:
        lines += [""] + [f"Fastest here ({regime}): {fastest_line(f)}" for regime, f in report.fastest.items()]
    if report.targets:
        lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
        for name, t in report.targets.items():
            lines.append(f"| {name} ({t['detail']}) | {t['value']:.2f} | {target_goal(name, t['target'])} "
                         f"| {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _verdict(verified: bool | None) -> str:
    return {True: "yes", False: "FAILED", None: "-"}[verified]


def fastest_line(f: dict[str, Any]) -> str:
    """One fastest-configuration entry as text, for the CLI and the markdown."""
    return (f"{f['label']}, batch {f['batch_size']}: {f['p50_ms']:.3f} ms p50, {f['throughput']:,.0f} images/s"
            f"{'' if f['verified'] else ' (not verified in this run)'}")


def plot(report: BenchReport, path: str | Path) -> None:
    """Small multiples: throughput against batch size, one panel per precision (as judged: the file's, or the
    lower compute precision of an OpenVINO bf16 mode), a line per runtime and file kind drawing its best
    configuration at each batch size, with the spread of call times shaded; beside them, batch-1 latency."""
    from toolkit.plots import plot_bench

    panels: dict[str, dict[tuple[str, str], dict[int, tuple[float, float, float]]]] = {}
    for p in report.points:
        if p.provider != "cpu" and p.io != "host":
            continue
        kind = "app" if p.format in _APP_FORMATS else "model"
        # the throughput this point would have at its slowest (p90) and fastest (min) call times
        spread = (p.throughput * p.p50_ms / p.p90_ms, p.throughput, p.throughput * p.p50_ms / p.min_ms)
        line = panels.setdefault(p.judged_as if p.precision in formats.PRECISION_ORDER else p.precision, {})
        best = line.setdefault((p.runtime, kind), {})
        if p.batch_size not in best or p.throughput > best[p.batch_size][1]:
            best[p.batch_size] = spread
    order = [*formats.PRECISION_ORDER, *sorted(set(panels) - set(formats.PRECISION_ORDER))]
    series = {precision: {key: [(b, t, lo, hi) for b, (lo, t, hi) in pts.items()] for key, pts in panels[precision].items()}
              for precision in order if precision in panels}
    single: dict[str, BenchPoint] = {}
    for p in report.points:
        if p.batch_size == 1 and p.concurrency == 1:
            key = f"{p.runtime} {p.format}/{p.precision}" + (f" {p.mode}" if p.mode not in ("-", "f32") else "")
            if key not in single or p.p50_ms < single[key].p50_ms:
                single[key] = p
    latency = [(key, p.runtime, p.p50_ms, p.min_ms, p.p90_ms) for key, p in single.items()]
    gpu = report.machine.get("gpu")
    plot_bench(series, latency, path, title=f"MNIST ConvNet inference, {gpu['name'] if gpu else report.machine['cpu']}"
               f" ({report.machine['cpu_cores']} cores): each line the best configuration per batch size")


# --- one model file, toolkit-made or not ----------------------------------------------------------------

def bench_file(config: BenchConfig, path: str, prep: Any = None, shapes: dict[str, tuple[int, ...]] | None = None,
               on_progress: Callable[[int, int, str], None] | None = None) -> BenchReport:
    """Time one .onnx alone in ONNX Runtime on the CPU: MNIST test images when its input fits an MNIST
    layout (see runners/foreign.py), else random data of its declared shapes and types. Nothing is verified (there is
    no reference), so no targets are computed."""
    from toolkit.runners import foreign

    t_start = time.perf_counter()
    prep = prep or foreign.Preprocessing()
    if set(config.providers) - {"cpu"}:
        raise ConfigError("bench FILE times the file on the CPU only; drop --provider")
    wanted = set(config.runtimes) - {"all"}
    if wanted - {"onnxruntime"}:
        raise ConfigError(f"bench FILE times the file in onnxruntime only, not {', '.join(sorted(wanted))}")
    first = foreign.open_file(path, RunnerOptions(), prep, shapes)  # fails early on a file it cannot feed
    if foreign.is_torchscript(read_model_file(path)):
        raise ConfigError(f"{path} is TorchScript; bench FILE times .onnx files (use toolkit compare for it)")
    takes_images = getattr(first, "takes_images", True)
    dtype = next((i.type for i in first.session.get_inputs()), "")
    del first
    spec = RUNTIMES["onnxruntime"]
    candidates = []
    for v in _variants(config, spec, "cpu", "fp32"):
        concurrency = v.pop("concurrency", 1)
        v.pop("io", None)
        threads = config.threads or (max(1, sysinfo.usable_cores() // concurrency) if concurrency > 1 else None)
        candidates.append(_Candidate("onnxruntime", str(path), Path(path).name, dtype.removeprefix("tensor(")
                                     .rstrip(")"), RunnerOptions(device="cpu", threads=threads, **v), "host",
                                     concurrency))
    opener = _FileOpener(prep, shapes)
    # the batch count comes from the pixels; a model that takes no MNIST image gets random data instead
    pixels = mnist.load_split(config.data_dir, "test")[0] if takes_images else np.zeros((10_000, 28, 28), np.uint8)
    if not takes_images:
        pixels[:, 0, :10] = np.arange(10_000)[:, None] % 251  # distinct per batch: the random data's seed
    series = time_rounds(config, candidates, opener, pixels, on_progress)
    points = [c.point(bs, s.batches_per_call, s.times, s.wall_s, s.first_ms, None)
              for c in candidates for bs in config.batch_sizes for s in [series[(c.key, bs)]]]
    settings = {**_settings(config, ["cpu"]), "file": str(path), "inputs": opener.inputs}
    report = BenchReport(
        machine=sysinfo.machine(), versions=sysinfo.versions(), settings=settings,
        session_options=_session_options(config), model_flops_per_image=0,
        matmul_peak_gflops=matmul_peak_gflops() if config.matmul_peak else None, points=points,
        load_ms=opener.load_ms, skipped={},
        runtimes={"onnxruntime": {"version": spec.version() or "unknown", "settings": opener.settings}})
    report.fastest = fastest(report.points)
    report.seconds = time.perf_counter() - t_start
    return report


class _FileOpener:
    """Opens the file's runner for each round, recording the first opening's time."""

    def __init__(self, prep: Any, shapes: dict[str, tuple[int, ...]] | None) -> None:
        self.prep, self.shapes = prep, shapes
        self.load_ms: dict[str, float] = {}
        self.settings: list[dict[str, Any]] = []
        self.inputs = ""

    def __call__(self, c: _Candidate) -> Runner:
        from toolkit.runners import foreign

        t0 = time.perf_counter()
        runner = foreign.open_file(c.source, c.options, self.prep, self.shapes)
        self.load_ms.setdefault(f"{c.format} {_options_words(c.options)}", (time.perf_counter() - t0) * 1e3)
        if runner.settings() not in self.settings:
            self.settings.append(runner.settings())
        self.inputs = runner.settings().get("input", "MNIST test images")
        return runner
