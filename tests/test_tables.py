"""Tables stay readable at 80 columns: every row's identifying text is printed in full."""

import io
import json
from types import SimpleNamespace

from rich.console import Console

from tests.conftest import REPO
from toolkit.bench import BenchReport
from toolkit.cli import tables


def _render(table, optional, width=80):
    console = Console(width=width, file=io.StringIO(), markup=False, color_system=None)
    tables._print_table(table, optional, console=console)
    text = console.file.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width
    return text


def _rows(text):
    """The table's body rows, cells joined across folded lines."""
    ruled = any(line.startswith("├") for line in text.splitlines())
    rows, current = [], None
    for line in text.splitlines():
        if line[:1] in ("├", "└", "┡"):
            if current:
                rows.append(current)
            current = None if line.startswith("└") else []
            continue
        if current is not None and line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            if not ruled:  # one line per row
                rows.append(cells)
                continue
            current = cells if not current else [a + b for a, b in zip(current, cells)]
    return rows


def test_bench_points_table_at_80_columns_tells_every_row_apart():  # bench --sweep
    report = BenchReport.from_json(json.loads((REPO / "benchmarks/results/inference_cpu.json").read_text()))
    table, optional = tables._points_table(report)
    rows = _rows(_render(table, optional))
    assert len(rows) == len(report.points)
    expected = [(p.name.replace(" ", ""), str(p.batch_size)) for p in report.points]
    assert [(r[0].replace(" ", ""), r[1]) for r in rows] == expected
    assert len({(r[0], r[1]) for r in rows}) == len(rows)  # no two rows look alike
    wide = _render(*tables._points_table(report), width=200)
    assert "p99 ms" in wide and "p99 ms" not in _render(*tables._points_table(report))


def test_bench_summary_at_80_columns_names_every_runtime_and_file():
    from toolkit import bench

    report = BenchReport.from_json(json.loads((REPO / "benchmarks/results/inference_cpu.json").read_text()))
    assert report.summary  # a report from before the summary existed gets one derived from its points
    rows = _rows(_render(*tables._summary_table(report, bench)))
    assert len(rows) == len(report.summary) <= 20  # one row per runtime and file, whatever was swept
    expected = [(r["runtime"], r["file"], r["precision"] + ("" if r["mode"] in ("-", "f32") else f"as{r['mode']}"))
                for r in report.summary]
    assert [(r[0], r[1], r[2].replace(" ", "")) for r in rows] == expected
    assert len(set(expected)) == len(expected)
    assert [r[4] for r in rows] == [f"{r['best_images_per_s']:,.0f} ({r['best_batch_size']})" for r in report.summary]
    best = {(r["runtime"], r["file"], r["precision"], r["mode"]): r["best_images_per_s"] for r in report.summary}
    for p in report.points:  # each row's best is the most images/s of any of its points
        assert p.throughput <= best[(p.runtime, bench.file_name(p.format, p.precision), p.precision, p.mode)]
    wide = _render(*tables._summary_table(report, bench), width=200)
    assert "agreement" in wide and "(batch 1 / best)" in wide and "agreement" not in _render(
        *tables._summary_table(report, bench))


def test_verify_table_at_80_columns_keeps_names_and_verdicts():
    def row(artifact, runtime, mode="f32", passed=True):
        return SimpleNamespace(artifact=artifact, runtime=runtime, mode=mode, precision="fp32", judged_as="fp32",
                               max_abs_diff=1e-6, mean_abs_diff=1e-7, agreement=10000, n=10000, accuracy=99.1,
                               accuracy_delta=0.0, batch1_max_diff=1e-7, batch1_n=2000, passed=passed,
                               failures=[] if passed else ["agreement 9000/10000 < 100.00%"])
    results = [row("model.onnx", "onnxruntime"), row("model.onnx", "openvino"), row("model.onnx", "openvino", "bf16"),
               row("a-much-longer-artifact-name.fp16.onnx", "opencv", passed=False), row("model.ts.pt", "torchscript")]
    report = SimpleNamespace(n=10000, reference_accuracy=99.1, provider="cpu",
                             reference="golden.npy sha256=0123456789ab",
                             results=results)
    text = _render(*tables._verify_table(report))
    rows = _rows(text)
    expected = [(r.artifact, r.runtime + ("" if r.mode == "f32" else r.mode)) for r in results]
    assert [(r[0], r[1].replace(" ", "")) for r in rows] == expected
    assert "FAIL:agreement9000/10000<100.00%" in rows[3][-1].replace(" ", "") and rows[0][-1] == "pass"
    assert "…" not in text


def test_bench_plot_is_small_multiples_from_the_committed_results(tmp_path, monkeypatch):
    import matplotlib.figure

    report = BenchReport.from_json(json.loads((REPO / "benchmarks/results/inference_cpu.json").read_text()))
    figures = []
    original = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: (figures.append(self),
                                                                                     original(self, *a, **k)))
    from toolkit.bench import plot

    plot(report, tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = figures[0].axes
    titles = [ax.get_title() for ax in axes]
    assert len(axes) == 5 and "fp32 files" in titles and "int8 files" in titles
    assert "batch 1, one call at a time" in titles
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["1", "8", "64", "256", "1024"]
    legend = figures[0].legends[0]
    assert {t.get_text() for t in legend.get_texts()} >= {"onnxruntime", "openvino", "pytorch"}
