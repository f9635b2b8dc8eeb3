"""Inference latency and throughput: ONNX Runtime (CPU, CUDA, TensorRT) against PyTorch eager and TorchScript.

Built for shared, noisy machines: every runtime and batch size is measured in several interleaved rounds
(so drift hits all of them alike), after warm-up, on real MNIST test images rotated among several batches;
the very first call is reported apart; results are percentiles of all timed calls.
"""

from __future__ import annotations

import copy
import io
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import data as mnist
from toolkit import sysinfo
from toolkit.artifacts import Artifact, find_checkpoint, read_manifest, read_verified, select
from toolkit.errors import ArtifactError, ConfigError, ProviderUnavailable
from toolkit.runtime import PROVIDERS, check_provider, create_session, describe, normalize

DEFAULT_BATCH_SIZES = (1, 8, 64, 256, 1024)
OPTIMIZATION_LEVELS = ("all", "extended", "basic", "none")
BASELINES = ("pytorch", "torchscript")  # pytorch = eager from the checkpoint
ROTATE = 8  # distinct input batches cycled through, so no cache holds one batch's answers
IO_MODES = ("host", "device")  # host: inputs from numpy and outputs back (copies timed); device: resident


@dataclass(frozen=True)
class BenchConfig:
    artifacts: str = "exported"
    checkpoint: str | None = None  # for the PyTorch eager baseline; default: the manifest's
    data_dir: str = "data"
    providers: tuple[str, ...] = ("cpu",)
    formats: tuple[str, ...] = ()  # artifact formats and/or baselines; empty: everything
    precisions: tuple[str, ...] = ()
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    warmup: int = 5  # untimed calls before each timed block
    iterations: int | None = None  # timed calls per point; None: run for `seconds` per point
    seconds: float = 1.0  # time budget per point, split over the rounds
    rounds: int = 3
    threads: int | None = None  # intra-op threads for ONNX Runtime and torch on the CPU; None: their default
    optimizations: tuple[str, ...] = ("all",)  # ONNX Runtime graph optimization levels to compare
    concurrency: tuple[int, ...] = (1,)  # ONNX Runtime CPU: calls in flight at once, each on cores/N threads
    cuda_graph: bool = False  # also time ONNX Runtime CUDA with CUDA graphs (device-resident I/O)
    matmul_peak: bool = True  # measure the CPU's float32 matmul peak for the efficiency target


@dataclass
class BenchPoint:
    runtime: str  # onnxruntime, pytorch, torchscript
    format: str  # onnx, onnx-app, torchscript, pytorch
    precision: str
    provider: str  # cpu, cuda, tensorrt
    io: str  # host or device
    optimization: str  # ORT graph optimization level; "-" for torch
    cuda_graph: bool
    batch_size: int
    concurrency: int  # calls in flight at once (one session shared by that many caller threads)
    iterations: int
    threads: int | None
    first_call_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput: float  # images per second: images of all timed calls / wall time of the timed blocks

    def _settings(self) -> list[str]:
        """The non-default settings, as label words."""
        parts = []
        if self.optimization not in ("-", "all"):
            parts.append(f"opt={self.optimization}")
        if self.concurrency > 1:
            parts.append(f"x{self.concurrency} concurrent")
        if self.cuda_graph:
            parts.append("cuda-graph")
        return parts

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
    model_flops_per_image: int
    matmul_peak_gflops: float | None
    points: list[BenchPoint]
    load_ms: dict[str, float]
    skipped: dict[str, str]
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for p, point in zip(d["points"], self.points):
            p["label"] = point.label
        return d


@dataclass
class _Candidate:
    """One runtime configuration: it prepares a callable per batch size; the callable runs batch i."""

    runtime: str
    format: str
    precision: str
    provider: str
    io: str
    optimization: str
    cuda_graph: bool
    prepare: Callable[[list[np.ndarray]], Callable[[int], Any]]
    threads: int | None
    concurrency: int = 1

    @property
    def key(self) -> str:
        return f"{self.runtime} {self.format}/{self.precision} {self.provider} {self.io} {self.optimization}" \
               f" c{self.concurrency}{' cuda-graph' if self.cuda_graph else ''}"


def _ort_candidates(artifact: Artifact, provider: str, config: BenchConfig, load_ms: dict) -> list[_Candidate]:
    import onnxruntime as ort

    out = []
    modes = ["host"] if provider == "cpu" else list(IO_MODES)
    variants = [(level, c) for level in config.optimizations for c in config.concurrency] \
        if provider == "cpu" else [("all", 1)]
    for level, concurrency in variants:
        threads = config.threads or (max(1, sysinfo.usable_cores() // concurrency) if concurrency > 1 else None)
        t0 = time.perf_counter()
        session = create_session(read_verified(artifact), provider, threads=threads, optimization=level,
                                 label=artifact.file)
        load_ms[f"onnxruntime {artifact.label} {provider} opt={level} x{concurrency}"] = (time.perf_counter() - t0) * 1e3
        info = describe(session, artifact.file)
        convert = (lambda b: b) if info.kind == "app" else (lambda b: normalize(b, mnist.MEAN, mnist.STD))
        device = "cuda" if provider in ("cuda", "tensorrt") else "cpu"

        for io in modes:
            def prepare(batches: list[np.ndarray], session=session, io=io, convert=convert, info=info):
                inputs = [convert(b) for b in batches]
                if provider == "cpu":
                    return lambda i: session.run(None, {info.input_name: inputs[i % len(inputs)]})
                binding = session.io_binding()
                if io == "host":  # copies in and out are part of every timed call
                    def run_host(i: int):
                        binding.bind_cpu_input(info.input_name, inputs[i % len(inputs)])
                        for name in info.output_names:
                            binding.bind_output(name, "cpu")
                        session.run_with_iobinding(binding)
                        return binding.copy_outputs_to_cpu()
                    return run_host
                resident = [ort.OrtValue.ortvalue_from_numpy(x, device, 0) for x in inputs]
                for name in info.output_names:
                    binding.bind_output(name, device)

                def run_device(i: int):
                    binding.bind_ortvalue_input(info.input_name, resident[i % len(resident)])
                    session.run_with_iobinding(binding)
                    binding.synchronize_outputs()
                return run_device
            out.append(_Candidate("onnxruntime", artifact.format, artifact.precision, provider, io, level, False,
                                  prepare, threads, concurrency))

        if config.cuda_graph and provider == "cuda":
            def prepare_graph(batches: list[np.ndarray], convert=convert, info=info):
                # A CUDA graph replays fixed device addresses: one session per batch size, inputs copied into
                # the same buffer (the graph cannot rotate pointers), outputs left on the device.
                session = create_session(read_verified(artifact), "cuda", cuda_graph=True, label=artifact.file)
                batch = convert(batches[0])
                buffer = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)
                binding = session.io_binding()
                binding.bind_ortvalue_input(info.input_name, buffer)
                for output in session.get_outputs():  # the graph needs outputs at fixed addresses too
                    shape = [len(batch) if not isinstance(d, int) else d for d in output.shape]
                    dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64}[output.type]
                    binding.bind_ortvalue_output(output.name, ort.OrtValue.ortvalue_from_shape_and_type(
                        shape, dtype, "cuda", 0))

                def run_graph(i: int):
                    session.run_with_iobinding(binding)
                    binding.synchronize_outputs()
                return run_graph
            out.append(_Candidate("onnxruntime", artifact.format, artifact.precision, "cuda", "device", "all",
                                  True, prepare_graph, None))
    return out


def _torch_candidates(kind: str, module, provider: str, threads: int | None) -> list[_Candidate]:
    import torch

    device = "cpu" if provider == "cpu" else "cuda"
    if device != "cpu":
        module = copy.deepcopy(module).to(device)  # .to() moves in place; the CPU candidates keep theirs
    modes = ["host"] if device == "cpu" else list(IO_MODES)
    out = []
    for io in modes:
        def prepare(batches: list[np.ndarray], io=io):
            host = [torch.from_numpy(normalize(b, mnist.MEAN, mnist.STD)) for b in batches]
            if device == "cpu":
                def run_cpu(i: int):
                    with torch.inference_mode():
                        return module(host[i % len(host)])
                return run_cpu
            if io == "host":
                def run_host(i: int):
                    with torch.inference_mode():
                        return module(host[i % len(host)].to(device)).cpu()
                return run_host
            resident = [x.to(device) for x in host]

            def run_device(i: int):
                with torch.inference_mode():
                    y = module(resident[i % len(resident)])
                torch.cuda.synchronize()
                return y
            return run_device
        out.append(_Candidate(kind, kind, "fp32", provider if device == "cpu" else "cuda", io, "-", False,
                              prepare, threads))
    return out


def _measure(run: Callable[[int], Any], warmup: int, iterations: int | None, seconds: float,
             offset: int, concurrency: int = 1) -> tuple[list[float], float]:
    """Time calls of `run` after `warmup` untimed ones; returns (per-call seconds, wall seconds).

    With concurrency N, N threads call `run` at once (ONNX Runtime releases the GIL while it computes), each
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


def matmul_peak_gflops() -> float:
    """Best float32 matrix-multiply rate of this CPU through torch (MKL/oneDNN), in GFLOP/s, on torch's
    current thread count (bench sets it from --threads)."""
    import torch

    best = 0.0
    for n in (1024, 2048, 2048, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        reps = 3 if n < 4096 else 2
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def _batches(pixels: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """ROTATE batches of real test images; past the 10,000 images they wrap around."""
    n = len(pixels)
    return [np.take(pixels, np.arange(k * batch_size, (k + 1) * batch_size) % n, axis=0) for k in range(ROTATE)]


def _stats(c: _Candidate, batch_size: int, times: list[float], wall_s: float, first_ms: float) -> BenchPoint:
    ms = np.asarray(times) * 1e3
    return BenchPoint(
        runtime=c.runtime, format=c.format, precision=c.precision, provider=c.provider, io=c.io,
        optimization=c.optimization, cuda_graph=c.cuda_graph, batch_size=batch_size, concurrency=c.concurrency,
        iterations=len(ms), threads=c.threads, first_call_ms=first_ms, p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)), p99_ms=float(np.percentile(ms, 99)), mean_ms=float(ms.mean()),
        min_ms=float(ms.min()), throughput=batch_size * len(ms) / wall_s)


def _resolve_providers(requested: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """Expand 'all' to the providers that really load here; an explicit provider that cannot load is an error."""
    import onnxruntime as ort

    for p in requested:  # every name, also beside 'all'
        check_provider(p, "all")
    if "all" in requested:
        usable, skipped = [], {}
        for p in PROVIDERS:
            if PROVIDERS[p] not in ort.get_available_providers():
                skipped[p] = f"{PROVIDERS[p]} is not in this onnxruntime build"
                continue
            if p != "cpu":
                try:
                    import torch

                    if not torch.cuda.is_available():
                        skipped[p] = "no CUDA device visible"
                        continue
                except ImportError:
                    pass
            usable.append(p)
        return usable, skipped
    return list(requested), {}


def bench(config: BenchConfig, on_progress: Callable[[int, int, str], None] | None = None) -> BenchReport:
    """Measure every selected runtime at every batch size; see the module docstring for the method."""
    t_start = time.perf_counter()
    if not config.batch_sizes or min(config.batch_sizes) <= 0:
        raise ConfigError("batch sizes must be positive integers")
    if config.rounds <= 0 or config.warmup < 0 or (config.iterations is not None and config.iterations <= 0):
        raise ConfigError("rounds and iterations must be positive, warm-up not negative")
    if config.seconds <= 0:
        raise ConfigError("seconds per point must be positive")
    for level in config.optimizations:
        if level not in OPTIMIZATION_LEVELS:
            raise ConfigError(f"unknown optimization level {level!r}; use {', '.join(OPTIMIZATION_LEVELS)}")
    if config.threads is not None and config.threads <= 0:
        raise ConfigError("threads must be a positive number")
    if not config.concurrency or min(config.concurrency) <= 0:
        raise ConfigError("concurrency must be positive integers")

    import torch

    from toolkit.checkpoint import load_checkpoint, model_from_checkpoint
    from toolkit.model import forward_flops

    if config.threads:
        torch.set_num_threads(config.threads)
    providers, skipped = _resolve_providers(config.providers)
    artifact_formats = [f for f in config.formats if f not in BASELINES]
    want_baseline = {b: (not config.formats or b in config.formats) for b in BASELINES}
    manifest = read_manifest(config.artifacts)
    artifacts = select(manifest, artifact_formats, list(config.precisions))
    if config.formats and artifact_formats and not artifacts:
        raise ArtifactError(f"no artifact in {config.artifacts}/ matches formats {', '.join(artifact_formats)}")
    checkpoint = find_checkpoint(config.artifacts, manifest, config.checkpoint)
    eager = model_from_checkpoint(load_checkpoint(checkpoint))
    ts_artifact = next((a for a in manifest if a.format == "torchscript"), None)

    load_ms: dict[str, float] = {}
    candidates: list[_Candidate] = []
    for provider in providers:
        for artifact in artifacts:
            if artifact.format in ("onnx", "onnx-app"):
                candidates += _ort_candidates(artifact, provider, config, load_ms)
        if provider == "tensorrt":
            continue  # the torch baselines for the GPU run under provider cuda
        if provider == "cuda" and not torch.cuda.is_available() and (want_baseline["pytorch"] or want_baseline["torchscript"]):
            raise ProviderUnavailable("torch sees no CUDA device for the PyTorch/TorchScript baselines on "
                                      "--provider cuda; pass --format onnx to time ONNX Runtime alone")
        if want_baseline["pytorch"]:
            candidates += _torch_candidates("pytorch", eager, provider, config.threads)
        if want_baseline["torchscript"] and ts_artifact is not None and (not config.precisions or "fp32" in config.precisions):
            import warnings

            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                scripted = torch.jit.load(io.BytesIO(read_verified(ts_artifact)),
                                          map_location="cpu" if provider == "cpu" else "cuda")
            load_ms[f"torchscript {provider}"] = (time.perf_counter() - t0) * 1e3
            candidates += _torch_candidates("torchscript", scripted, provider, config.threads)
    if not candidates:
        raise ArtifactError("nothing to benchmark: no artifact or baseline matches the selection")

    pixels, _ = mnist.load_split(config.data_dir, "test")
    runs: dict[tuple[str, int], Callable[[int], Any]] = {}
    first_ms: dict[tuple[str, int], float] = {}
    times: dict[tuple[str, int], list[float]] = {}
    wall: dict[tuple[str, int], float] = {}
    total = len(candidates) * len(config.batch_sizes) * config.rounds
    done = 0
    per_round = None if config.iterations is None else max(1, config.iterations // config.rounds)
    for rnd in range(config.rounds):
        for c in candidates:
            for bs in config.batch_sizes:
                key = (c.key, bs)
                if key not in runs:
                    runs[key] = c.prepare(_batches(pixels, bs))
                    t0 = time.perf_counter()
                    runs[key](0)
                    first_ms[key] = (time.perf_counter() - t0) * 1e3
                block, block_wall = _measure(runs[key], config.warmup, per_round, config.seconds / config.rounds,
                                             offset=rnd, concurrency=c.concurrency)
                times.setdefault(key, []).extend(block)
                wall[key] = wall.get(key, 0.0) + block_wall
                done += 1
                if on_progress:
                    on_progress(done, total, f"{c.runtime} {c.format}/{c.precision} {c.provider} batch {bs}")

    points = [_stats(c, bs, times[(c.key, bs)], wall[(c.key, bs)], first_ms[(c.key, bs)])
              for c in candidates for bs in config.batch_sizes]
    peak = matmul_peak_gflops() if config.matmul_peak and "cpu" in providers else None
    flops = forward_flops(eager)
    report = BenchReport(
        machine=sysinfo.machine(), versions=sysinfo.versions(), settings=_settings(config, providers),
        session_options=_session_options(config), model_flops_per_image=flops, matmul_peak_gflops=peak,
        points=points, load_ms=load_ms, skipped=skipped)
    report.targets = targets(report)
    report.seconds = time.perf_counter() - t_start
    return report


def _settings(config: BenchConfig, providers: list[str]) -> dict[str, Any]:
    import torch

    s = asdict(config)
    s["providers"] = providers
    s["rotate_batches"] = ROTATE
    s["torch_threads"] = torch.get_num_threads()
    return s


def _session_options(config: BenchConfig) -> dict[str, Any]:
    return {
        "intra_op_num_threads": config.threads or "onnxruntime default (one per physical core); "
                                                  "cores / N with N concurrent calls",
        "graph_optimization_levels": list(config.optimizations),
        "execution_mode": "sequential",
        "cpu_affinity_cores": sysinfo.usable_cores(),
    }


def targets(report: BenchReport) -> dict[str, dict[str, Any]]:
    """The CPU targets, each as a ratio of two numbers measured in this same run."""
    cpu = [p for p in report.points if p.provider == "cpu"]
    ort32 = [p for p in cpu if p.runtime == "onnxruntime" and p.format == "onnx" and p.precision == "fp32"]
    ort8 = [p for p in cpu if p.runtime == "onnxruntime" and p.format == "onnx" and p.precision == "int8"]
    eager = [p for p in cpu if p.runtime == "pytorch"]
    out: dict[str, dict[str, Any]] = {}

    def best(points: list[BenchPoint], min_batch: int = 1) -> BenchPoint | None:
        eligible = [p for p in points if p.batch_size >= min_batch]
        return max(eligible, key=lambda p: p.throughput) if eligible else None

    b1_ort = [p for p in ort32 if p.batch_size == 1 and p.concurrency == 1]
    b1_eager = [p for p in eager if p.batch_size == 1 and p.concurrency == 1]
    if b1_ort and b1_eager:
        fastest = min(b1_ort, key=lambda p: p.p50_ms)
        ratio = fastest.p50_ms / b1_eager[0].p50_ms
        out["ort_fp32_batch1_p50_vs_eager"] = {
            "value": ratio, "target": 0.3, "met": bool(ratio <= 0.3),
            "detail": f"{fastest.p50_ms:.3f} ms ({fastest.label}) / {b1_eager[0].p50_ms:.3f} ms (PyTorch eager)"}
    top32 = best(ort32)
    if top32 and report.matmul_peak_gflops:
        achieved = top32.throughput * report.model_flops_per_image / 1e9
        ratio = achieved / report.matmul_peak_gflops
        out["ort_fp32_throughput_vs_matmul_peak"] = {
            "value": ratio, "target": 0.6, "met": bool(ratio >= 0.6),
            "detail": f"{top32.throughput:.0f} img/s x {report.model_flops_per_image / 1e6:.2f} MFLOP = "
                      f"{achieved:.1f} GFLOP/s of {report.matmul_peak_gflops:.1f} GFLOP/s "
                      f"({top32.label}, batch {top32.batch_size})"}
    b32, b8 = best(ort32, 64), best(ort8, 64)
    if b32 and b8:
        ratio = b8.throughput / b32.throughput
        out["ort_int8_vs_fp32_throughput"] = {
            "value": ratio, "target": 1.5, "met": bool(ratio >= 1.5),
            "detail": f"{b8.throughput:.0f} img/s ({b8.label}, batch {b8.batch_size}) / {b32.throughput:.0f} "
                      f"img/s ({b32.label}, batch {b32.batch_size}); best at batch >= 64"}
    return out


def target_goal(name: str, target: float) -> str:
    """How a target reads: '<= x' for the latency ratio against eager (lower is better), '>= x' otherwise."""
    return f"<= {target}" if name.endswith("vs_eager") else f">= {target}"


def markdown_table(report: BenchReport) -> str:
    """A README-ready table of every point."""
    gpu = report.machine.get("gpu")
    where = f"{report.machine['cpu']} ({report.machine['cpu_cores']} cores)" + (f", {gpu['name']}" if gpu else "")
    lines = [f"Measured on {where}; onnxruntime {report.versions.get('onnxruntime-gpu') or report.versions.get('onnxruntime')}, "
             f"torch {report.versions.get('torch')}.", "",
             "| runtime | format/precision | provider | I/O | opt | concurrent | batch | p50 ms | p90 ms | p99 ms "
             "| first call ms | images/s |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in report.points:
        lines.append(f"| {p.runtime}{' (CUDA graph)' if p.cuda_graph else ''} | {p.format}/{p.precision} | {p.provider} "
                     f"| {p.io} | {p.optimization} | {p.concurrency} | {p.batch_size} | {p.p50_ms:.3f} | {p.p90_ms:.3f} "
                     f"| {p.p99_ms:.3f} | {p.first_call_ms:.2f} | {p.throughput:,.0f} |")
    if report.targets:
        lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
        for name, t in report.targets.items():
            lines.append(f"| {name} ({t['detail']}) | {t['value']:.2f} | {target_goal(name, t['target'])} "
                         f"| {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(report: BenchReport, path: str | Path) -> None:
    from toolkit.plots import plot_throughput

    series: dict[str, list[tuple[int, float]]] = {}
    for p in report.points:
        series.setdefault(p.label, []).append((p.batch_size, p.throughput))
    gpu = report.machine.get("gpu")
    plot_throughput(series, path, title=f"MNIST ConvNet inference, {gpu['name'] if gpu else report.machine['cpu']}")
