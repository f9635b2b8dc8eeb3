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
    assert report.summary  # derived from the points, whatever the report held
    rows = _rows(_render(*tables._summary_table(report, bench)))
    # one row per runtime and file, whatever was swept (its OpenVINO bf16 points share the fp32 files' rows)
    assert len(rows) == len(report.summary) == len({(p.runtime, p.format, p.precision) for p in report.points}) <= 20
    expected = [(r["runtime"], r["file"], bench.summary_cells(r)["precision"].replace(" ", ""))
                for r in report.summary]
    assert [(r[0], r[1], r[2].replace(" ", "")) for r in rows] == expected
    assert all(e[2].startswith(r["precision"]) for e, r in zip(expected, report.summary))
    assert len({e[:2] for e in expected}) == len(expected)
    assert [r[4] for r in rows] == [f"{r['best_images_per_s']:,.0f} ({r['best_batch_size']})" for r in report.summary]
    best = {(r["runtime"], r["file"]): r["best_images_per_s"] for r in report.summary}
    for p in report.points:  # each row's best is the most images/s of any of its points, in any mode
        assert p.throughput <= best[(p.runtime, bench.file_name(p.format, p.precision))]
    wide = _render(*tables._summary_table(report, bench), width=200)
    assert "agreement" in wide and "(batch 1 / best)" in wide and "agreement" not in _render(
        *tables._summary_table(report, bench))
    title = tables._summary_table(report, bench)[0].title  # where it ran, and how it was checked, in plain words
    assert f"on {report.machine['cpu']}, {report.machine['cpu_cores']} cores" in title and ") (" not in title


def test_verify_table_at_80_columns_keeps_names_and_verdicts():
    def row(artifact, runtime, mode="f32", passed=True, computed=""):
        return SimpleNamespace(artifact=artifact, runtime=runtime, mode=mode, precision="fp32", judged_as="fp32",
                               computed_mode=computed,
                               max_abs_diff=1e-6, mean_abs_diff=1e-7, agreement=10000, n=10000, accuracy=99.1,
                               accuracy_delta=0.0, batch1_max_diff=1e-7, batch1_n=2000, passed=passed,
                               failures=[] if passed else ["agreement 9,000/10,000 < 100.00%"])
    results = [row("model.onnx", "onnxruntime"), row("model.onnx", "openvino"), row("model.onnx", "openvino", "bf16"),
               row("model.onnx", "openvino", "bf16", computed="f32"),
               row("a-much-longer-artifact-name.fp16.onnx", "opencv", passed=False), row("model.ts.pt", "torchscript")]
    report = SimpleNamespace(n=10000, reference_accuracy=99.1, provider="cpu",
                             reference="golden.npy sha256=0123456789ab", results=results,
                             reference_note="the checkpoint runs/a-long-run-name/checkpoint.pt is not there")
    text = _render(*tables._verify_table(report))
    assert "checkpoint not used: the checkpoint runs/a-long-run-name/checkpoint.pt is not there" in " ".join(
        text.split())  # the note under the title, wrapped at 80 columns
    rows = _rows(text)
    expected = [(r.artifact, r.runtime + ("" if r.mode == "f32" else r.mode)
                 + (f"(computed{r.computed_mode})" if r.computed_mode else "")) for r in results]
    assert [(r[0], r[1].replace(" ", "")) for r in rows] == expected
    assert "FAIL:agreement9,000/10,000<100.00%" in rows[4][-1].replace(" ", "") and rows[0][-1] == "pass"
    assert "…" not in text


def test_predictions_title_stays_on_one_line_at_80_columns():
    from pathlib import Path

    rows = [SimpleNamespace(file="d.png", digit=7, probability=0.99)]
    long = "/" + "a-long-folder/" * 6 + "exported/model.app.onnx"  # 108 characters: its leading folders go
    for model, shown in (("exported/model.app.onnx", "exported/model.app.onnx"),
                         (long, "…/" + "a-long-folder/" * 2 + "exported/model.app.onnx")):
        lines = _render(tables._predictions_table(rows, Path(model), width=80), ()).splitlines()
        assert lines[0].strip() == f"predictions by {shown}" and lines[1].startswith("┏")


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
    runtimes = {p.runtime for p in report.points}
    assert {t.get_text() for t in legend.get_texts()} >= runtimes  # every runtime drawn has its colour named
    from matplotlib.colors import to_hex

    from toolkit.plots import RUNTIME_COLORS

    drawn = {to_hex(line.get_color()) for ax in axes[:4] for line in ax.get_lines()}
    assert drawn <= {to_hex(RUNTIME_COLORS[r]) for r in runtimes}  # no runtime left in the unnamed grey
    for ax in axes:  # plain numbers on every axis, not powers of ten run together
        labels = [t.get_text() for t in ax.get_xticklabels(which="both") + ax.get_yticklabels(which="both")]
        assert not [t for t in labels if "times" in t or "$" in t], labels


def test_an_async_queue_draws_no_spread_from_its_call_times():
    """A call to OpenVINO's async queue only starts requests, so one that finds free requests returns at once:
    its call times say nothing of a batch's latency, and no band is drawn from them."""
    from toolkit.bench.render import _throughput_series

    report = BenchReport.from_json(json.loads((REPO / "benchmarks/results/inference_cpu.json").read_text()))
    queued = [p for p in report.points if p.hint == "throughput"]
    called = [p for p in report.points if p.runtime == "onnxruntime"]
    assert queued and min(p.min_ms / p.p50_ms for p in queued) < 0.1  # the call times that made bands absurd
    for lines in _throughput_series(queued).values():
        assert all(low == images == high for line in lines.values() for _, images, low, high in line)
    for lines in _throughput_series(called).values():
        assert all(low <= images <= high for line in lines.values() for _, images, low, high in line)
        assert any(low < high for line in lines.values() for _, _, low, high in line)


def _make_main_points(bf16: bool, bf16_fails: bool = False):
    """Synthetic points for what `make main` exports (every format at every precision) and the PyTorch checkpoint,
    in every runtime that opens them: batch 1 and a batch of 256 each, OpenVINO's fp32 files also as bf16 when
    `bf16`. bf16 wins the throughput and f32 the batch-1 latency; with `bf16_fails`, bf16 failed verify on
    model.app.onnx."""
    from toolkit import runners
    from toolkit.artifacts import Artifact
    from toolkit.bench import BenchPoint
    from toolkit.formats import FORMATS

    artifacts = [Artifact(file=f.file_name(p), format=name, precision=p, size_bytes=1, sha256="0", inputs=[],
                          outputs=[], source_checkpoint="checkpoint.pt", source_sha256="0", test_accuracy=None)
                 for name, f in FORMATS.items() for p in f.precisions]
    todo, _ = runners.runs(artifacts, list(runners.RUNTIMES), "cpu", checkpoint="checkpoint.pt")
    points = []
    for run in todo:
        if run.mode == "bf16" and not bf16:
            continue
        ov = run.runtime == "openvino"
        faster = 1.5 if run.mode == "bf16" else 1.0
        for batch, p50 in ((1, 0.24 if run.mode == "bf16" else 0.2), (256, 10.0)):
            failed = bf16_fails and run.mode == "bf16" and run.format == "onnx-app"
            points.append(BenchPoint(
                runtime=run.runtime, format=run.format, precision=run.precision, provider="cpu", io="host",
                optimization="all" if run.runtime == "onnxruntime" else "-", cuda_graph=False, batch_size=batch,
                concurrency=1, iterations=10, threads=None, first_call_ms=1.0, p50_ms=p50, p90_ms=p50, p99_ms=p50,
                mean_ms=p50, min_ms=p50, throughput=faster * batch / p50 * 1e3, mode=run.mode if ov else "-",
                hint="latency" if ov else "-", verified=not failed, agreement=9_990, checked_images=10_000,
                setting="hint=latency" if ov else "-"))
    return points


def test_bench_summary_of_everything_make_main_exports_fits_one_screen_with_or_without_bf16():
    from toolkit import bench

    for bf16, fails in ((False, False), (True, False), (True, True)):
        points = _make_main_points(bf16, fails)
        report = BenchReport(machine={"cpu": "a CPU", "cpu_cores": 2}, versions={}, settings={}, session_options={},
                             model_flops_per_image=None, matmul_peak_gflops=None, points=points, load_ms={},
                             skipped={}, summary=bench.summarize(points), fastest=bench.fastest(points))
        text = _render(*tables._summary_table(report, bench))
        rows = _rows(text)
        files = {(p.runtime, p.format, p.precision) for p in points}
        assert len(rows) == len(report.summary) == len(files) == 20, (bf16, len(rows))  # a row per runtime and file
        if not fails:  # a line per row: title, header and rules aside
            assert len(text.splitlines()) <= len(rows) + 7, text
        md = bench.markdown_table(report)
        assert md.split("Every point measured:")[1].count("\n| ") - 1 == len(points)  # every point, header aside
        cells = {(r[0], r[1]): r for r in rows}
        onnx, app = cells[("openvino", "model.onnx")], cells[("openvino", "model.app.onnx")]
        if not bf16:
            assert onnx[2] == "fp32" and app[2] == "fp32" and "FAILED" not in text
            continue
        # the mode with the most images/s, both regimes in it, and the precision names it
        assert onnx[2].replace(" ", "") == "fp32asbf16"
        row = next(r for r in report.summary if (r["runtime"], r["file"]) == ("openvino", "model.onnx"))
        assert (row["mode"], row["modes"], row["judged_as"]) == ("bf16", ["f32", "bf16"], "bf16")
        assert row["batch1_p50_ms"] == 0.24 and row["best_images_per_s"] == 1.5 * 256 / 10.0 * 1e3
        if fails:  # a mode that failed verify is not shown as the row's best, and the verdict says it failed
            assert app[2] == "fp32" and "bf16FAILED" in "".join(app[3:]).replace(" ", "")
