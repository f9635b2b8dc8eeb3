"""PNG plots: the notebook's train/test error curves, and the bench results as small multiples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit import fileio


def pyplot():
    """matplotlib.pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_errors(history: Sequence[Any], path: str | Path, title: str = "") -> None:
    """Train and test error (%) per epoch, as the notebook asked for, and the validation error of a run that
    held part of the training set out (`--holdout`); written atomically to `path`."""
    plt = pyplot()
    epochs = [row.epoch for row in history]
    curves = {"train error": [row.train_error for row in history], "test error": [row.test_error for row in history]}
    if history and all(row.val_accuracy is not None for row in history):
        curves["validation error (held-out training images)"] = [100.0 - row.val_accuracy for row in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for (label, errors), marker in zip(curves.items(), ("o-", "s-", "^--"), strict=False):
        ax.plot(epochs, errors, marker, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.set_yscale("log")
    _percent_ticks(ax, [e for errors in curves.values() for e in errors])
    ax.set_xticks(epochs)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title or "error per epoch")
    fig.tight_layout()
    save_figure(plt, fig, path)


def _percent_ticks(ax, values: Sequence[float]) -> None:
    """Readable labels on a log axis of percentages: 0.5%, 1%, 2%, 5%, ... within the data's range."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    positive = [v for v in values if v > 0]
    if not positive:
        return
    low, high = min(positive), max(positive)
    steps = [round(m * 10.0 ** e, 6) for e in range(-3, 3) for m in (1, 2, 3, 5, 7)]
    bottom = max([t for t in steps if t <= low] or [low])
    top = min([t for t in steps if t >= high] or [high])
    ax.set_ylim(bottom / 1.15, top * 1.15)
    ax.yaxis.set_major_locator(FixedLocator([t for t in steps if bottom <= t <= top]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def save_figure(plt, fig, path: str | Path) -> None:
    """Write the (laid out) figure as a PNG, atomically, and free it."""
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


RUNTIME_COLORS = {"onnxruntime": "tab:blue", "openvino": "tab:purple", "opencv": "tab:green",
                  "pytorch": "tab:red", "torchscript": "tab:orange", "torch-export": "tab:pink",
                  "aoti": "tab:brown", "executorch": "tab:cyan", "litert": "tab:olive"}


Panels = dict[str, dict[tuple[str, str], list[tuple[int, float, float, float]]]]
Latency = list[tuple[str, str, float, float, float]]


def plot_bench(panels: Panels, latency: Latency, path: str | Path, title: str = "") -> None:
    """Small multiples: one throughput-vs-batch panel per precision, a line per (runtime, file kind) with its
    spread shaded, and a panel of batch-1 latency (p50 bar, min to p90 whisker); written atomically.

    panels: precision -> (runtime, kind) -> [(batch, images/s, low, high)]; kind "app" is dashed.
    latency: [(label, runtime, p50 ms, min ms, p90 ms)].
    """
    plt = pyplot()
    n = len(panels)
    cols = min(n, 2) or 1
    rows = (n + cols - 1) // cols
    fig = plt.figure(figsize=(13, 3.3 * rows + 1.2), dpi=110)
    grid = fig.add_gridspec(rows, cols + 1, width_ratios=[1] * cols + [1.25])
    scale = _Scale.of(panels)
    axes = []
    for i, (precision, lines) in enumerate(panels.items()):
        # one shared y axis, so a panel's height reads the same in every other panel
        ax = fig.add_subplot(grid[i // cols, i % cols], sharey=axes[0] if axes else None)
        axes.append(ax)
        _throughput_panel(ax, precision, lines, scale)
        if i // cols == rows - 1:
            ax.set_xlabel("batch size")
        if i % cols == 0:
            ax.set_ylabel("images/s")
    _latency_panel(fig.add_subplot(grid[:, cols]), latency)
    handles = _legend_handles(plt, panels)
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.965))
    fig.suptitle(title or "throughput and latency", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    save_figure(plt, fig, path)


@dataclass(frozen=True)
class _Scale:
    """What every throughput panel shares: the batch sizes on x and the range of images/s on y."""

    batches: list[int]
    low: float
    top: float

    @classmethod
    def of(cls, panels: Panels) -> _Scale:
        pts = [pt for lines in panels.values() for line in lines.values() for pt in line]
        return cls(sorted({b for b, *_ in pts}), min((lo for _, _, lo, _ in pts), default=1),
                   max((hi for *_, hi in pts), default=1))


def _throughput_panel(ax: Any, precision: str, lines: dict[tuple[str, str], list[tuple[int, float, float, float]]],
                      scale: _Scale) -> None:
    """One precision's lines of images/s against batch size (log-log), each with its spread shaded."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    for (runtime, kind), pts in sorted(lines.items()):
        pts = sorted(pts)
        xs = [p[0] for p in pts]
        color = RUNTIME_COLORS.get(runtime, "tab:gray")
        ax.plot(xs, [p[1] for p in pts], marker="o", ms=3, color=color, linestyle="--" if kind == "app" else "-")
        ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], color=color, alpha=0.15, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(scale.batches))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(scale.low / 1.3, scale.top * 1.3)
    _plain_log_ticks(ax.yaxis, "{:,.0f}")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title({"bf16": "bf16 (OpenVINO bf16 mode on fp32 files)"}.get(precision, f"{precision} files"),
                 fontsize=10)


def _latency_panel(bars: Any, latency: Latency) -> None:
    """Batch-1 latency per configuration, slowest on top: p50 bars with min-to-p90 whiskers."""
    latency = sorted(latency, key=lambda r: r[2], reverse=True)
    ys = range(len(latency))
    bars.barh(ys, [r[2] for r in latency], color=[RUNTIME_COLORS.get(r[1], "tab:gray") for r in latency], alpha=0.8)
    bars.errorbar([r[2] for r in latency], ys, xerr=[[r[2] - r[3] for r in latency], [r[4] - r[2] for r in latency]],
                  fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    bars.set_yticks(list(ys), [r[0] for r in latency], fontsize=7)
    bars.set_xscale("log")
    _plain_log_ticks(bars.xaxis, "{:g}")
    bars.set_xlabel("ms per call (bar p50, whisker min to p90)")
    bars.set_title("batch 1, one call at a time", fontsize=10)
    bars.grid(True, axis="x", which="both", alpha=0.3)


def _plain_log_ticks(axis: Any, fmt: str) -> None:
    """A log axis labelled at 1, 2 and 5 of each decade in plain numbers (`fmt`), its other ticks unlabelled:
    over less than two decades matplotlib labels those too, as powers of ten that run into each other."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt.format(v)))
    axis.set_minor_formatter(NullFormatter())


def _legend_handles(plt: Any, panels: Panels) -> list[Any]:
    """A colour per runtime drawn, then the two line styles' meanings."""
    from matplotlib.lines import Line2D

    drawn = {runtime for lines in panels.values() for runtime, _ in lines}
    handles = [Line2D([], [], color=c, marker="o", ms=4, label=r) for r, c in RUNTIME_COLORS.items() if r in drawn]
    return handles + [Line2D([], [], color="gray", linestyle="--", label="app model (uint8 in)"),
                      plt.Rectangle((0, 0), 1, 1, color="gray", alpha=0.15,
                                    label="spread (p90 to min call time; none for async queues)")]
