"""Every table the commands print: rich renders the library's result values here (progress is in progress.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from toolkit.cli.common import _printable, out
from toolkit.runners import RUNTIMES


def _styled(text: str, style: str) -> Text:
    return Text(text, style=style)


def _table(title: str, columns: list[str], names: tuple[str, ...] = (), left: tuple[str, ...] = ()) -> Table:
    """A table whose `names` columns (what tells rows apart) fold instead of being cut with an ellipsis."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col in names or col in left else "right",
                         overflow="fold" if col in names or col in left else "ellipsis",
                         no_wrap=col not in names and col not in left)
    table.names = names  # type: ignore[attr-defined]  # read by _print_table
    return table


def _print_table(table: Table, optional: tuple[str, ...] = (), console: Console | None = None) -> None:
    """Print `table`, first dropping `optional` columns (in that order) while it is wider than the console."""
    console = console or out

    def natural_width() -> int:  # measured without the console's own limit
        return console.measure(table, options=console.options.update(max_width=100_000)).maximum

    for name in optional:
        if natural_width() <= console.width:
            break
        table.columns = [c for c in table.columns if c.header != name]
    names = [c for c in table.columns if c.header in getattr(table, "names", ())]
    for cap in range(30, 6, -1):  # names stay whole as far as the width allows; other text columns fold first
        for c in names:
            c.min_width = min(cap, max((len(str(cell)) for cell in c._cells), default=0))
        if console.measure(table, options=console.options.update(max_width=100_000)).minimum <= console.width:
            break
    if natural_width() > console.width:
        table.show_lines = True  # names will fold onto several lines: rule the rows apart
    console.print(table)


def _mnist_table(report: Any, data_dir: Path) -> Table:
    table = Table(title=f"MNIST in {data_dir}")
    for col in ("file", "md5", "status"):
        table.add_column(col)
    for name, path in report.paths.items():
        table.add_row(Path(path).name, report.md5[name], "verified")
    return table


def _artifacts_table(result: Any, checkpoint: str) -> tuple[Table, tuple[str, ...]]:
    """The export table and the columns it may drop, least important first."""
    table = _table(f"artifacts from {checkpoint}",
                   ["file", "format", "precision", "size KiB", "sha256", "input", "outputs"],
                   names=("file", "format", "precision"), left=("sha256", "input", "outputs"))

    def io(specs: list[dict]) -> str:
        return ", ".join(f"{s['name']} {s['dtype']}[{','.join(map(str, s['shape']))}]" for s in specs)

    for a in result.artifacts:
        name = a.file + "".join(f" + {p.file}" for p in a.parts)  # an IR's .bin is listed with its .xml
        table.add_row(name, a.format, a.precision, f"{a.total_bytes / 1024:.0f}", a.sha256[:12], io(a.inputs),
                      io(a.outputs))
    return table, ("outputs", "sha256", "input")


def _known(value: float | None, spec: str) -> str:
    """`value` formatted, or "-" where it is not known (an accuracy without labels is NaN in the report)."""
    return "-" if value is None or math.isnan(value) else format(value, spec)


def _verify_table(report: Any) -> tuple[Table, tuple[str, ...]]:
    """The verify table and the columns it may drop, least important first."""
    known = not (report.reference_accuracy is None or math.isnan(report.reference_accuracy))
    inputs = (f"{report.n:,} MNIST test images (PyTorch accuracy {report.reference_accuracy:.2f}%" if known
              else f"{report.n:,} reference inputs (no labels: accuracy unknown")
    note = f"\ncheckpoint not used: {report.reference_note}" if report.reference_note else ""
    table = _table(f"parity with PyTorch ({report.reference}) on {inputs}, device {report.provider}){note}",
                   ["artifact", "runtime", "precision", "max |diff|", "mean |diff|", "agreement", "accuracy %",
                    "Δ acc", "batch-1 |diff|", "result"], names=("artifact", "runtime", "precision"), left=("result",))
    for r in report.results:
        computed = f" (computed {r.computed_mode})" if r.computed_mode else ""
        table.add_row(r.artifact, r.runtime + ("" if r.mode == "f32" else f" {r.mode}") + computed,
                      r.precision if r.judged_as in ("", r.precision) else f"{r.precision} (as {r.judged_as})",
                      f"{r.max_abs_diff:.2e}", f"{r.mean_abs_diff:.2e}", f"{r.agreement:,}/{r.n:,}",
                      _known(r.accuracy, ".2f"), _known(r.accuracy_delta, "+.2f"),
                      f"{r.batch1_max_diff:.1e} (n={r.batch1_n})",
                      _result(r.passed, r.failures))
    return table, ("batch-1 |diff|", "mean |diff|", "Δ acc", "accuracy %")


def _result(passed: bool, failures: list[str]) -> Text:
    """A verdict cell: pass, or FAIL with the reasons."""
    return _styled("pass", "green") if passed else _styled(f"FAIL: {'; '.join(failures)}", "red")


def _side_cells(side: Any) -> list[str]:
    """One compared file's cells: file, runtime, its outputs (and whether options said how to feed it), accuracy."""
    return [side.file, side.runtime, side.outputs + ("" if side.toolkit_model else " (input by options)"),
            _known(side.accuracy, ".2f")]


def _compare_table(report: Any) -> Any:
    table = Table(title=f"B against A on {report.n:,} {report.inputs}")
    for col in ("", "file", "runtime", "outputs", "accuracy %"):
        table.add_column(col, justify="right" if col == "accuracy %" else "left", overflow="fold")
    for tag, side in (("A", report.a), ("B", report.b)):
        table.add_row(tag, *_side_cells(side))
    t = report.tolerance
    summary = Table(show_header=True, title=f"compared as {report.compared}")
    for col in ("max |diff|", "mean |diff|", "agreement", "Δ acc", "result"):
        summary.add_column(col, justify="left" if col == "result" else "right", overflow="fold")
    limit = f" (≤ {t['max_abs_diff']:g})" if t["max_abs_diff"] is not None else ""
    summary.add_row(f"{report.max_abs_diff:.2e}" + limit, f"{report.mean_abs_diff:.2e}",
                    f"{report.agreement:,}/{report.n:,}",
                    _known(report.accuracy_delta, "+.2f"), _result(report.passed, report.failures))
    from rich.console import Group

    return Group(table, summary)


def _compare_many_table(reports: list[Any]) -> Table:
    """compare with more than two files: A once, then a row per file judged against it."""
    from toolkit.compare import label

    first = reports[0]
    table = Table(title=f"each file against A ({first.a.file}) on {first.n:,} {first.inputs}")
    for col in ("", "file", "runtime", "outputs", "accuracy %", "max |diff|", "agreement", "Δ acc", "result"):
        table.add_column(col, justify="left" if col in ("", "file", "runtime", "outputs", "result") else "right",
                         overflow="fold")
    table.add_row("A", *_side_cells(first.a), "-", "-", "-", "reference")
    for k, r in enumerate(reports):
        table.add_row(label(k + 1), *_side_cells(r.b), f"{r.max_abs_diff:.2e}",
                      f"{r.agreement:,}/{r.n:,}", _known(r.accuracy_delta, "+.2f"), _result(r.passed, r.failures))
    return table


def _where(report: Any) -> str:
    gpu = report.machine.get("gpu")
    return f"{report.machine['cpu']}, {report.machine['cpu_cores']} cores" + (f" + {gpu['name']}" if gpu else "")


def _points_table(report: Any) -> tuple[Table, tuple[str, ...]]:
    """Every point (bench --sweep) and the columns it may drop: the tail percentiles first, then provider and
    I/O when every row shares them (they then tell no rows apart)."""
    table = _table(f"every point measured on {_where(report)}",
                   ["runtime", "provider", "I/O", "batch", "first ms", "p50 ms", "p90 ms", "p99 ms", "images/s",
                    "verified"], names=("runtime", "provider", "I/O"), left=("verified",))
    for p in report.points:
        table.add_row(p.name, p.provider, p.io, str(p.batch_size), f"{p.first_call_ms:.2f}", f"{p.p50_ms:.3f}",
                      f"{p.p90_ms:.3f}", f"{p.p99_ms:.3f}", f"{p.throughput:,.0f}",
                      {True: "yes", False: _styled("FAILED", "red"), None: "-"}[p.verified])
    constant = tuple(col for col, attr in (("I/O", "io"), ("provider", "provider"))
                     if len({getattr(p, attr) for p in report.points}) <= 1)
    return table, ("p99 ms", "p90 ms", "first ms", *constant)


# the summary's columns as their headers read: two lines where that keeps the table narrow, and the best rate
# with its batch in one cell
_SUMMARY_HEADERS = {"runtime": "runtime", "file": "file", "precision": "precision", "batch-1 p50 ms": "batch-1\np50 ms",
                    "batch-1 p99 ms": "batch-1\np99 ms", "best images/s": "best images/s\n(at batch)",
                    "setting": "setting\n(batch 1 / best)", "agreement": "agreement", "verified": "verified"}


def _verified_on(report: Any) -> str:
    """'; each verified on N test images' where every row was verified on the same inputs, else '': bench FILE may
    mix an --input-shape export's files (its reference inputs) with MNIST ones, each verified on its own set."""
    fed = {str(f.get("inputs")) for f in report.settings.get("files") or []} or {str(report.settings.get("inputs"))}
    seen = {"reference inputs" if "reference inputs" in inputs else "test images" for inputs in fed}
    counts = {row["checked_images"] for row in report.summary}
    every = {row["verified"] for row in report.summary} == {True}
    if not every or len(seen) != 1 or len(counts) != 1 or not report.summary[0]["checked_images"]:
        return ""
    return f"; each verified on {report.summary[0]['checked_images']:,} {seen.pop()}"


def _summary_table(report: Any, bench_lib: Any) -> tuple[Table, tuple[str, ...]]:
    """One row per runtime and file at its best settings (a runtime's compute modes share the row, the precision
    naming the mode shown), and the columns it may drop when narrow."""
    headers = _SUMMARY_HEADERS
    table = _table(f"best setting per runtime and file, on {_where(report)}{_verified_on(report)}",
                   list(headers.values()),
                   names=(headers["runtime"], headers["file"], headers["precision"]),
                   left=(headers["setting"], headers["verified"]))
    for row in report.summary:
        cells = bench_lib.summary_cells(row)
        cells["best images/s"] += f" ({cells['at batch']})"
        verdict = _styled(cells["verified"], "red") if "FAILED" in cells["verified"] else cells["verified"]
        table.add_row(*[cells[c] for c in headers if c != "verified"], verdict)
    # the verdict column may go last when every row has the same one (it then tells no rows apart)
    same = len({bench_lib.summary_cells(row)["verified"] for row in report.summary}) <= 1
    return table, (headers["setting"], headers["agreement"], headers["batch-1 p99 ms"],
                   *((headers["verified"],) if same else ()))


def _print_skipped(skipped: dict[str, str], unverified: dict[str, list[str]] | None = None) -> None:
    """One line per reason for what was left out: runtimes that one extra would install share theirs, followed by
    the files (`unverified`, by name) that went unverified for want of them."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        label = ", ".join(names)
        runtimes = [n.removeprefix("runtime ") for n in names]  # bench names them "runtime X", verify "X"
        if len(names) > 1 and all(r in RUNTIMES for r in runtimes):
            label = "runtimes " + ", ".join(runtimes)
        files = [f for n in names for f in (unverified or {}).get(n, [])]
        note = f"; not verified: {', '.join(files)}" if files else ""
        out.print(f"skipped {label}: {reason}{note}", highlight=False)


def _print_not_verified(report: Any) -> None:
    """verify: one line per reason for the selected files left unverified that no `skipped` line names already."""
    named = tuple(f for files in report.unverified.values() for f in files)
    for why, files in report.not_verified_by_reason(leave_out=named).items():
        out.print(f"not verified: {', '.join(files)}: {why}", highlight=False)


def _print_judged_on(name: str, n: int, total: int, also_calibrating: int = 0, held_out: int | None = None,
                     least: int | None = None) -> None:
    """A line saying which of `total` reference inputs judged the int8 file `name` (toolkit.calibration), where not
    simply all of them: `held_out` (default `n`) held out from its calibration, or all of them, `also_calibrating`
    of which calibrated it too (at least `least` of them, where the count is a range); n, those judged, may be the
    first of them only."""
    held = n if held_out is None else held_out
    first = f"the first {n:,} of " if n < held else ""
    if 0 < held < total:
        line = f"judged on {first}the {held:,} of the {total:,} reference inputs held out from its int8 calibration"
    elif also_calibrating:
        line = f"judged on {first or 'all '}{total:,} reference inputs, {_of_which(least, also_calibrating, total)}"
    else:
        return
    out.print(f"{name}: {line}", highlight=False)


def _of_which(least: int | None, most: int, total: int) -> str:
    """How many of the rows judging an int8 file also calibrated it: exact (`least` None or `most`), or the range
    the export's record leaves open for some of its `total` reference inputs (it records how many, not which)."""
    if least is None or least == most:
        return f"{most:,} of which also calibrated it (--calibration-inputs shares them with --inputs)"
    count = f"up to {most:,}" if not least else f"{least:,} to {most:,}"
    return (f"{count} of which also calibrated it (--calibration-inputs shares some of the {total:,} with --inputs; "
            "the export records how many, not which)")


def _print_compared_on(reports: list[Any]) -> None:
    """compare on an export's reference inputs: a line, as verify prints it, for each int8 file of it judged on some
    of them only, or on its calibration rows too (every file is compared on the rows that judge each one; of the
    first --limit of them, how many calibrated it may be a range)."""
    first = reports[0]
    total = first.reference_inputs
    for side in {side.file: side for r in reports for side in (r.a, r.b)}.values() if total else ():
        least, most = side.also_calibrating_range or [side.also_calibrating] * 2
        _print_judged_on(side.file, first.n, total, most, side.held_out or total, least)


def _print_bench_judged_on(verification: dict[str, dict[str, Any]]) -> None:
    """bench: a line, as verify prints it, for each int8 file verified on the reference inputs its calibration left
    out, or on some that calibrated it too (those bench checked may be a sample: then the count may be a range)."""
    judged = {(f"{v['runtime']} {v['artifact']}", v["n"], v.get("held_out_of") or 0, v.get("reference_inputs") or 0,
               *(v.get("also_calibrating_range") or [v.get("also_calibrating") or 0] * 2))
              for v in verification.values() if v.get("held_out_of") or v.get("reference_inputs")}
    for name, n, held_out_of, total, least, most in sorted(judged):
        if held_out_of or n == total:
            _print_judged_on(name, n, held_out_of or total, most)
        else:
            out.print(f"{name}: judged on {n:,} of the {total:,} reference inputs, {_of_which(least, most, total)}",
                      highlight=False)


def _print_bench(report: Any, bench_lib: Any, sweep: bool = False) -> None:
    """The summary table, what was left out and why, and one recommendation per regime; with `sweep`, every
    point first. The targets are not printed: they are the project's goals, rendered by benchmarks/report.py."""
    if sweep:
        _print_table(*_points_table(report))
    _print_table(*_summary_table(report, bench_lib))
    for f in report.settings.get("files", []):  # bench FILE...: what each file was fed, and where it ran
        why = f" ({f['why_random']})" if f["why_random"] else ""
        checked = f"; verified against {f['reference']}" if f.get("reference") else ""
        out.print(f"{f['name']}: {f['inputs']}{why}; ran in {', '.join(f['runtimes'])}{checked}", highlight=False)
    _print_skipped(report.skipped)
    unchecked = {f"{v['runtime']} {v['artifact']}: {v['failures'][0]}" for v in report.verification.values()
                 if v.get("passed") is None and v.get("failures")}  # a verdict that could not be computed: why
    for line in sorted(unchecked):
        out.print(f"not verified: {line}", highlight=False)
    _print_bench_judged_on(report.verification)
    for regime, f in report.fastest.items():
        out.print(bench_lib.fastest_line(f, regime), highlight=False)
    peaks = bench_lib.peaks_line(report)
    if peaks:
        out.print(peaks, highlight=False)


def _predictions_table(predictions: list[Any], model: Path, width: int | None = None) -> Table:
    """The digit and its probability per image, under a title on one line: the table at least as wide as the title,
    which names the model by its path, its leading folders left out ('…/') where the whole does not fit `width`."""
    width = width or out.width
    tails = [str(model)] + [str(Path("…", *model.parts[k:])) for k in range(1, len(model.parts))]
    title = next((t for t in (f"predictions by {t}" for t in tails) if len(t) <= width), f"predictions by {model.name}")
    table = Table(title=title, min_width=min(len(title), width))
    for col in ("file", "digit", "probability"):
        table.add_column(col)
    for p in predictions:
        table.add_row(_printable(p.file), str(p.digit), f"{p.probability:.4f}")
    return table
