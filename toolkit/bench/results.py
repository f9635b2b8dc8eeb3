"""What a bench run found: its points, its report, the fastest verified configurations and the targets.

Every target is a ratio of two numbers measured in the same run (never an absolute figure from a noisy,
shared machine), and only configurations that passed verify may set one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.formats import FORMATS, PRECISION_ORDER, judged_precision


@dataclass
class BenchPoint:
    runtime: str  # a runtime name, as the runner layer spells it
    format: str  # onnx, onnx-app, torchscript, pytorch (or the file name, for bench FILE)
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
    agreement: int | None = None  # test images whose digit matched the reference's, when verified
    checked_images: int | None = None  # test images verified on
    setting: str = "-"  # the settings a search chooses between (opt=, calls=, threads=, hint=, io=), as words

    def _settings(self) -> list[str]:
        """The non-default settings, as label words."""
        parts = [] if self.mode in ("-", "f32") else [self.mode]
        if self.optimization not in ("-", "all"):
            parts.append(f"opt={self.optimization}")
        if self.hint == "throughput":
            parts.append(f"async x{self.concurrency}")
        elif self.concurrency > 1:
            parts.append(f"x{self.concurrency} concurrent")
        else:  # a single call's thread count where the search set one, not the runtime's default
            threads = [w.removeprefix("threads=") for w in self.setting.split() if w.startswith("threads=")]
            parts += [f"{threads[0]} thread{'s' * (threads[0] != '1')}"] if threads else []
        if self.cuda_graph:
            parts.append("cuda-graph")
        return parts

    @property
    def judged_as(self) -> str:
        """The precision this point is judged at; a bench FILE's input type stands as it is."""
        return judged_precision(self.precision, self.mode) if self.precision in PRECISION_ORDER else self.precision

    @property
    def name(self) -> str:
        """Runtime, format/precision and non-default settings; provider and I/O left to their own columns."""
        return " ".join([self.runtime, f"{self.format}/{self.precision}", *self._settings()])

    @property
    def label(self) -> str:
        """Everything that tells this point's runtime configuration apart."""
        io = [f"io={self.io}"] if self.provider != "cpu" else []
        return " ".join([self.runtime, f"{self.format}/{self.precision}", self.provider, *io, *self._settings()])

    @property
    def one_at_a_time(self) -> bool:
        """Batch 1 with one call in flight: the latency a single request sees."""
        return self.batch_size == 1 and self.concurrency == 1


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
    summary: list[dict[str, Any]] = field(default_factory=list)  # one row per runtime and file: see summarize
    search: dict[str, Any] = field(default_factory=dict)  # what the short search tried and kept, and why
    peak_rates: dict[str, dict[str, float]] = field(default_factory=dict)  # float32/int8 -> each library's rate

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
        report = cls(**{**{k: v for k, v in d.items() if k in cls.__dataclass_fields__}, "points": points})
        report.summary = summarize(points)  # derived again: an older report's summary may have been laid out otherwise
        return report


# --- the summary and the recommendations ----------------------------------------------------------------

REGIMES = {"lowest latency": "lowest batch-1 p50, one call at a time",
           "most throughput": "most images/s measured, any batch"}


def file_name(fmt: str, precision: str) -> str:
    """The file a point ran: the artifact's name, the checkpoint for PyTorch eager, or bench FILE's own name."""
    if fmt in FORMATS:
        return FORMATS[fmt].file_name(precision)
    return "checkpoint.pt" if fmt == "pytorch" else fmt


def _eligible(points: list[BenchPoint]) -> list[BenchPoint]:
    """Points that may be named fastest: verified in this run (or not checked at all), on the CPU."""
    return [p for p in points if p.verified is not False and p.provider == "cpu"]


def _batch1(points: list[BenchPoint]) -> BenchPoint | None:
    """The lowest batch-1 p50: one call at a time where any was timed, else any call at batch 1."""
    single = [p for p in points if p.one_at_a_time] or [p for p in points if p.batch_size == 1]
    return min(single, key=lambda p: p.p50_ms) if single else None


def _verdict(points: list[BenchPoint]) -> bool | None:
    """False if any configuration failed verify, True if all passed, None if none was checked."""
    verdicts = {p.verified for p in points}
    return False if False in verdicts else (True if verdicts == {True} else None)


def summarize(points: list[BenchPoint]) -> list[dict[str, Any]]:
    """One row per runtime, file and device: its lowest batch-1 latency and its most images/s, each with the setting
    that gave it, and the verdict of the configurations shown. A runtime's compute modes (OpenVINO's f32 and bf16)
    share the row: it shows the mode that gave the most images/s, both regimes in that mode, and `modes` names
    every mode timed. A configuration that failed verify is shown only where all of the row's did; the modes of
    those left out are named in `failed_modes`."""
    groups: dict[tuple, list[BenchPoint]] = {}
    for p in points:
        groups.setdefault((p.runtime, p.format, p.precision, p.provider), []).append(p)
    return [_summary_row(pts) for pts in groups.values()]


def _summary_row(points: list[BenchPoint]) -> dict[str, Any]:
    pool = [p for p in points if p.verified is not False] or points
    best = max(pool, key=lambda p: p.throughput)
    b1 = _batch1([p for p in pool if p.mode == best.mode])
    shown = [p for p in (b1, best) if p is not None]
    return {
        "runtime": best.runtime, "file": file_name(best.format, best.precision), "format": best.format,
        "precision": best.precision, "mode": best.mode, "modes": list(dict.fromkeys(p.mode for p in points)),
        "judged_as": best.judged_as, "provider": best.provider, **_batch1_columns(b1),
        "best_images_per_s": best.throughput, "best_batch_size": best.batch_size, "best_setting": best.setting,
        **_checked(shown), "failed_modes": list(dict.fromkeys(p.mode for p in points if p not in pool))}


def _batch1_columns(b1: BenchPoint | None) -> dict[str, Any]:
    values = (b1.p50_ms, b1.p99_ms, b1.setting, b1.concurrency) if b1 else (None,) * 4
    return dict(zip(("batch1_p50_ms", "batch1_p99_ms", "batch1_setting", "batch1_calls_in_flight"), values))


def _checked(shown: list[BenchPoint]) -> dict[str, Any]:
    """What verify found of the configurations a row shows: the lowest agreement, on how many images, the verdict."""
    agreements = [p.agreement for p in shown if p.agreement is not None]
    return {"agreement": min(agreements) if agreements else None,
            "checked_images": next((p.checked_images for p in shown if p.checked_images), None),
            "verified": _verdict(shown)}


def _recommendation(p: BenchPoint, images_per_s: float, basis: str) -> dict[str, Any]:
    return {"label": p.label, "runtime": p.runtime, "file": file_name(p.format, p.precision), "judged_as": p.judged_as,
            "mode": p.mode, "setting": p.setting, "batch_size": p.batch_size, "calls_in_flight": p.concurrency,
            "p50_ms": p.p50_ms, "p99_ms": p.p99_ms, "images_per_s": images_per_s, "images_per_s_from": basis,
            "verified": p.verified}


def fastest(points: list[BenchPoint]) -> dict[str, dict[str, Any]]:
    """The configuration to deploy per regime, among those that pass verify on the CPU: the lowest batch-1 p50
    (its rate is that p50's: one image per p50) and the most images/s measured (over all its timed calls)."""
    pool = _eligible(points)
    single = [p for p in pool if p.one_at_a_time]
    out = {}
    if single:
        p = min(single, key=lambda p: p.p50_ms)
        out["lowest latency"] = _recommendation(p, 1e3 / p.p50_ms, "p50")
    if pool:
        p = max(pool, key=lambda p: p.throughput)
        out["most throughput"] = _recommendation(p, p.throughput, "measured")
    return out


# --- the targets ----------------------------------------------------------------------------------------

def _pools(points: list[BenchPoint]) -> dict[str, list[BenchPoint]]:
    """The groups of CPU points the targets compare, by name."""
    cpu = [p for p in points if p.provider == "cpu"]
    verified = _eligible(cpu)
    ort32, ort8 = _ort(cpu, "fp32"), _ort(cpu, "int8")
    return {
        "onnxruntime fp32": ort32,
        "onnxruntime int8": ort8,
        "onnxruntime fp32 batch 1": _one_at_a_time(ort32),
        "eager batch 1": _one_at_a_time([p for p in cpu if p.runtime == "pytorch"]),
        "verified batch 1": _one_at_a_time([p for p in verified if p.runtime != "pytorch"]),
        "verified fp32": [p for p in verified if p.judged_as == "fp32" and p.runtime != "pytorch"],
        "verified int8": [p for p in verified if p.judged_as == "int8"],
    }


def _ort(points: list[BenchPoint], precision: str) -> list[BenchPoint]:
    """ONNX Runtime on the plain .onnx of one precision: the baseline every other runtime is held against."""
    return [p for p in points if p.runtime == "onnxruntime" and p.format == "onnx" and p.precision == precision]


def _one_at_a_time(points: list[BenchPoint]) -> list[BenchPoint]:
    return [p for p in points if p.one_at_a_time]


def _best(points: list[BenchPoint], min_batch: int = 1) -> BenchPoint | None:
    eligible = [p for p in points if p.batch_size >= min_batch]
    return max(eligible, key=lambda p: p.throughput) if eligible else None


# A goal's measure: (value, detail) from the pools and the report, or None when a side was not measured here.
Measure = Callable[[dict[str, list[BenchPoint]], BenchReport], tuple[float, str] | None]


def _latency_vs_eager(pool: str) -> Measure:
    """The lowest batch-1 p50 latency in `pool`, over PyTorch eager's."""
    def measure(pools: dict[str, list[BenchPoint]], report: BenchReport) -> tuple[float, str] | None:
        if not pools[pool] or not pools["eager batch 1"]:
            return None
        fast, eager = min(pools[pool], key=lambda p: p.p50_ms), pools["eager batch 1"][0]
        return fast.p50_ms / eager.p50_ms, (f"{fast.p50_ms:.3f} ms ({fast.label}) / {eager.p50_ms:.3f} ms "
                                            "(PyTorch eager)")
    return measure


def _throughput_ratio(top: str, base: str, note: str) -> Measure:
    """The best throughput at batch >= 64 in `top`, over the best in `base` (small batches measure overhead)."""
    def measure(pools: dict[str, list[BenchPoint]], report: BenchReport) -> tuple[float, str] | None:
        a, b = _best(pools[top], 64), _best(pools[base], 64)
        if not a or not b:
            return None
        return a.throughput / b.throughput, (f"{a.throughput:.0f} img/s ({a.label}, batch {a.batch_size}) / "
                                             f"{b.throughput:.0f} img/s ({b.label}, batch {b.batch_size}); {note}")
    return measure


def _share_of_peak(pool: str, peak_field: str, unit: str, peak_kind: str = "") -> Measure:
    """The operations per second the best point in `pool` achieves, over the CPU's matmul peak (`peak_field`)."""
    def measure(pools: dict[str, list[BenchPoint]], report: BenchReport) -> tuple[float, str] | None:
        top, peak, flops = _best(pools[pool]), getattr(report, peak_field), report.model_flops_per_image
        if not top or not peak:
            return None
        achieved = top.throughput * flops / 1e9
        return achieved / peak, (f"{top.throughput:.0f} img/s x {flops / 1e6:.2f} M{unit} = {achieved:.1f} G{unit}/s "
                                 f"of {peak:.1f} G{unit}/s{peak_kind} ({top.label}, batch {top.batch_size})")
    return measure


@dataclass(frozen=True)
class Goal:
    """One target: its name, the ratio it must reach, which way is better, and how the ratio is measured."""

    name: str
    target: float
    lower_is_better: bool
    measure: Measure


GOALS: dict[str, Goal] = {g.name: g for g in (
    Goal("ort_fp32_batch1_p50_vs_eager", 0.3, True, _latency_vs_eager("onnxruntime fp32 batch 1")),
    Goal("fastest_verified_batch1_p50_vs_eager", 0.2, True, _latency_vs_eager("verified batch 1")),
    Goal("ort_fp32_throughput_vs_matmul_peak", 0.6, False,
         _share_of_peak("onnxruntime fp32", "matmul_peak_gflops", "FLOP")),
    Goal("best_verified_fp32_throughput_vs_matmul_peak", 0.6, False,
         _share_of_peak("verified fp32", "matmul_peak_gflops", "FLOP")),
    Goal("ort_int8_vs_fp32_throughput", 1.5, False,
         _throughput_ratio("onnxruntime int8", "onnxruntime fp32", "best at batch >= 64")),
    Goal("best_verified_int8_vs_ort_fp32_throughput", 2.0, False,
         _throughput_ratio("verified int8", "onnxruntime fp32", "batch >= 64")),
    Goal("best_int8_throughput_vs_int8_matmul_peak", 0.4, False,
         _share_of_peak("verified int8", "int8_matmul_peak_gops", "OP", " int8")),
)}


def targets(report: BenchReport) -> dict[str, dict[str, Any]]:
    """The CPU targets, each as a ratio of two numbers measured in this same run; a goal whose sides were not
    both measured here is left out rather than guessed."""
    pools = _pools(report.points)
    out: dict[str, dict[str, Any]] = {}
    for goal in GOALS.values():
        measured = goal.measure(pools, report)
        if measured is None:
            continue
        value, detail = measured
        met = value <= goal.target if goal.lower_is_better else value >= goal.target
        out[goal.name] = {"value": value, "target": goal.target, "met": bool(met), "detail": detail}
    return out


def target_goal(name: str, target: float) -> str:
    """How a target reads: '<= x' where lower is better (the latency ratios against eager), '>= x' otherwise."""
    lower = name in GOALS and GOALS[name].lower_is_better
    return f"<= {target}" if lower else f">= {target}"
