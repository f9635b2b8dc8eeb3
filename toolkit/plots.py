"""PNG plots: the notebook's train/validation error curve, and throughput against batch size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolkit import fileio


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_errors(history: Sequence[Any], path: str | Path, title: str = "") -> None:
    """Train and evaluation error (%) per epoch, as the notebook asked for, written atomically to `path`."""
    plt = _pyplot()
    epochs = [row.epoch for row in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(epochs, [row.train_error for row in history], "o-", label="train error")
    ax.plot(epochs, [row.test_error for row in history], "s-", label="validation error (MNIST test set)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.set_yscale("log")
    _percent_ticks(ax, [row.train_error for row in history] + [row.test_error for row in history])
    ax.set_xticks(epochs)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title or "error per epoch")
    _save(plt, fig, path)


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


def plot_throughput(series: dict[str, list[tuple[int, float]]], path: str | Path, title: str = "") -> None:
    """Images/s against batch size, one line per runtime label, log-log, written atomically to `path`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 5), dpi=120)
    colors = plt.get_cmap("tab20").colors
    for i, (label, points) in enumerate(sorted(series.items())):
        points = sorted(points)
        ax.plot([b for b, _ in points], [t for _, t in points], marker="os^D"[i // 10 % 4],
                linestyle="-" if i < 10 else "--", color=colors[i % len(colors)], label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (images/s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(title or "throughput")
    _save(plt, fig, path)


def _save(plt, fig, path: str | Path) -> None:
    """Lay out, write the PNG atomically, and free the figure."""
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
