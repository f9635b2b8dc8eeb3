"""A report as text and pictures: the README-ready markdown tables, the recommendation lines, the PNG plot.

Library code renders to strings and files only; the CLI decides what to print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.bench.results import BenchPoint, BenchReport
from toolkit.formats import APP, FORMATS, PRECISION_ORDER

_POINTS_HEADER = ["| runtime | format/precision | provider | I/O | opt | mode | concurrent | threads | batch | p50 ms "
                  "| p90 ms | p99 ms | first call ms | images/s | verified |",
                  "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]


def _where(machine: dict[str, Any]) -> str:
    gpu = machine.get("gpu")
    return f"{machine['cpu']} ({machine['cpu_cores']} cores)" + (f", {gpu['name']}" if gpu else "")


def _point_row(p: BenchPoint) -> str:
    mode = " ".join(x for x in (p.mode, p.hint) if x != "-") or "-"
    return (f"| {p.runtime}{' (CUDA graph)' if p.cuda_graph else ''} | {p.format}/{p.precision} | "
            f"{p.provider} | {p.io} | {p.optimization} | {mode} | {p.concurrency} | {p.threads or 'default'} | "
            f"{p.batch_size} | {p.p50_ms:.3f} | {p.p90_ms:.3f} | {p.p99_ms:.3f} | {p.first_call_ms:.2f} | "
            f"{p.throughput:,.0f} | {_verdict(p.verified)} |")


SUMMARY_COLUMNS = ("runtime", "file", "precision", "batch-1 p50 ms", "batch-1 p99 ms", "best images/s", "at batch",
                   "setting", "agreement", "verified")


def summary_cells(row: dict[str, Any]) -> dict[str, str]:
    """One summary row as text, by SUMMARY_COLUMNS: the setting reads 'batch-1 one / best one' where they differ;
    the precision names the compute mode shown, the verdict the modes left out because they failed verify."""
    b1 = row["batch1_p50_ms"] is not None
    setting = row["best_setting"] if row["batch1_setting"] in (None, row["best_setting"]) \
        else f"{row['batch1_setting']} / {row['best_setting']}"
    agreement = f"{row['agreement']:,}/{row['checked_images']:,}" if row["agreement"] is not None else "-"
    runtime = row["runtime"] + ("" if row["provider"] == "cpu" else f" ({row['provider']})")
    values = (runtime, row["file"], _precision(row["precision"], row["mode"]),
              f"{row['batch1_p50_ms']:.3f}" if b1 else "-", f"{row['batch1_p99_ms']:.3f}" if b1 else "-",
              f"{row['best_images_per_s']:,.0f}", str(row["best_batch_size"]), setting, agreement,
              _verdict(row["verified"]) + "".join(f"; {m} FAILED" for m in row.get("failed_modes", ())))
    return dict(zip(SUMMARY_COLUMNS, values))


def _precision(precision: str, mode: str) -> str:
    """The file's precision, and the runtime's compute mode where it lowers it (an fp32 file run as bf16)."""
    return precision if mode in ("-", "f32") else f"{precision} as {mode}"


def _summary_rows(report: BenchReport) -> list[str]:
    rows = [summary_cells(r) for r in report.summary]
    return [f"| {' | '.join(SUMMARY_COLUMNS)} |", "|---|---|---|---:|---:|---:|---:|---|---:|---|",
            *(f"| {' | '.join(r.values())} |" for r in rows)]


def markdown_table(report: BenchReport) -> str:
    """README-ready tables: the summary (a row per runtime and file), the recommendation per regime, and every
    point measured. The targets are left to benchmarks/report.py, which renders them from the JSON."""
    versions = ", ".join(f"{name} {r['version']}" for name, r in report.runtimes.items()) or "-"
    lines = [f"Measured on {_where(report.machine)}; {versions}.", "", *_summary_rows(report)]
    if report.fastest:
        lines += [""] + [f"- {fastest_line(f, regime)}" for regime, f in report.fastest.items()]
    peaks = peaks_line(report)
    if peaks:
        lines += ["", f"{peaks}."]
    lines += ["", "Every point measured:", "", *_POINTS_HEADER, *(_point_row(p) for p in report.points)]
    return "\n".join(lines) + "\n"


_PEAKS = (("fp32", "float32", "GFLOP/s", "matmul_peak_gflops"), ("int8", "int8", "GOP/s", "int8_matmul_peak_gops"))


def peaks_line(report: BenchReport) -> str | None:
    """The ceilings this CPU's matmul peaks put on the model, where bench measured them (--matmul-peak) and
    knows its FLOPs, and the share of its peak the most-throughput pick reached; None otherwise."""
    flops = report.model_flops_per_image
    peaks = [(judged, name, unit, getattr(report, field)) for judged, name, unit, field in _PEAKS
             if getattr(report, field)]
    if not flops or not peaks:
        return None
    rates = ", ".join(f"{name} {peak:,.0f} {unit}" for _, name, unit, peak in peaks)
    ceilings = " and ".join(f"{peak * 1e9 / flops:,.0f}" for *_, peak in peaks)
    line = f"matmul peaks here: {rates} (at most {ceilings} images/s of this {flops / 1e6:.2f} MFLOP model)"
    best = report.fastest.get("most throughput")
    for judged, name, _, peak in peaks:
        if best and best.get("judged_as") == judged:
            line += f"; most throughput: {best['images_per_s'] * flops / 1e9 / peak:.2f} of the {name} peak"
    return line


def _verdict(verified: bool | None) -> str:
    return {True: "yes", False: "FAILED", None: "-"}[verified]


def fastest_line(f: dict[str, Any], regime: str = "") -> str:
    """One recommendation as a line: the rate beside a p50 is that p50's (one image per call), the rate of the
    throughput pick is the one measured over all its calls; each says which."""
    head = f"{regime}: " if regime else ""
    if "images_per_s_from" not in f:  # a report from before recommendations said where their rate came from
        return (f"{head}{f['label']}, batch {f['batch_size']}: {f['p50_ms']:.3f} ms p50, "
                f"{f['throughput']:,.0f} images/s measured")
    what = f"{f['runtime']} {f['file']}" + ("" if f["mode"] in ("-", "f32") else f" as {f['mode']}") \
        + ("" if f["setting"] == "-" else f" ({f['setting']})")
    unverified = "" if f["verified"] else " (not verified in this run)"
    if f["images_per_s_from"] == "p50":
        return (f"{head}{what}, batch 1: p50 {f['p50_ms']:.3f} ms, p99 {f['p99_ms']:.3f} ms "
                f"(= {f['images_per_s']:,.0f} images/s at that p50, one at a time){unverified}")
    in_flight = f" x {f['calls_in_flight']} in flight" if f["calls_in_flight"] > 1 else ""
    return (f"{head}{what}, batch {f['batch_size']}{in_flight}: {f['images_per_s']:,.0f} images/s measured "
            f"(p50 {f['p50_ms']:.2f} ms a call){unverified}")


# --- the plot -------------------------------------------------------------------------------------------

Series = dict[str, dict[tuple[str, str], list[tuple[int, float, float, float]]]]


def _file_kind(fmt: str) -> str:
    """'app' for a file that takes raw pixels (drawn dashed), 'model' otherwise (also a bench FILE's name)."""
    return "app" if fmt in FORMATS and FORMATS[fmt].kind == APP else "model"


def _throughput_series(points: list[BenchPoint]) -> Series:
    """precision panel -> (runtime, file kind) -> [(batch, images/s, low, high)]: each line's best configuration
    at each batch size. A panel is the precision as judged (an OpenVINO bf16 mode on an fp32 file is bf16)."""
    panels: dict[str, dict[tuple[str, str], dict[int, tuple[float, float, float]]]] = {}
    for p in points:
        if p.provider != "cpu" and p.io != "host":
            continue  # device-resident GPU runs are not comparable with the host-fed lines
        # the throughput this point would have at its slowest (p90) and fastest (min) call times; none for an
        # async queue, whose calls only start requests (one that finds free requests returns at once)
        spread = (p.throughput, p.throughput, p.throughput) if p.hint == "throughput" else \
            (p.throughput * p.p50_ms / p.p90_ms, p.throughput, p.throughput * p.p50_ms / p.min_ms)
        line = panels.setdefault(p.judged_as if p.precision in PRECISION_ORDER else p.precision, {})
        best = line.setdefault((p.runtime, _file_kind(p.format)), {})
        if p.batch_size not in best or p.throughput > best[p.batch_size][1]:
            best[p.batch_size] = spread
    order = [*PRECISION_ORDER, *sorted(set(panels) - set(PRECISION_ORDER))]
    return {precision: {key: [(b, t, lo, hi) for b, (lo, t, hi) in pts.items()]
                        for key, pts in panels[precision].items()}
            for precision in order if precision in panels}


def _batch1_latency(points: list[BenchPoint]) -> list[tuple[str, str, float, float, float]]:
    """[(label, runtime, p50 ms, min ms, p90 ms)]: the lowest-p50 batch-1 point per runtime, file and mode."""
    single: dict[str, BenchPoint] = {}
    for p in points:
        if p.one_at_a_time:
            key = f"{p.runtime} {p.format}/{p.precision}" + (f" {p.mode}" if p.mode not in ("-", "f32") else "")
            if key not in single or p.p50_ms < single[key].p50_ms:
                single[key] = p
    return [(key, p.runtime, p.p50_ms, p.min_ms, p.p90_ms) for key, p in single.items()]


BUILT_IN_WORDS = {"convnet": "MNIST ConvNet", "mlp": "MNIST MLP"}


def model_words(report: BenchReport) -> str:
    """What the model timed is called in the plot: a built-in one by its name, a class of one's own by the name its
    manifest recorded when it was timed (a plain identifier only: it comes from a file), files given by path as
    such, and a report that recorded no name (older ones) as a model."""
    if report.settings.get("files"):
        return "model file"
    name = report.settings.get("model")
    if not isinstance(name, str):
        return "model"
    if name in BUILT_IN_WORDS:
        return BUILT_IN_WORDS[name]
    return name if name.isidentifier() and name.isascii() and len(name) <= 64 else "model"


def plot(report: BenchReport, path: str | Path) -> None:
    """Small multiples: throughput against batch size, one panel per precision (as judged: the file's, or the
    lower compute precision of an OpenVINO bf16 mode), a line per runtime and file kind drawing its best
    configuration at each batch size, with the spread of call times shaded; beside them, batch-1 latency."""
    from toolkit.plots import plot_bench

    gpu = report.machine.get("gpu")
    plot_bench(_throughput_series(report.points), _batch1_latency(report.points), path,
               title=f"{model_words(report)} inference, {gpu['name'] if gpu else report.machine['cpu']}"
               f" ({report.machine['cpu_cores']} cores): each line the best configuration per batch size")
