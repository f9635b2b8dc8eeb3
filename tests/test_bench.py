import json
import shutil
import time

import numpy as np
import pytest
import torch

from tests.conftest import NO_BF16, assert_one_line_error, fake_cpu_flags, run_cli
from toolkit import sysinfo
from toolkit.bench import GOALS, BenchPoint, BenchReport, targets, tuning
from toolkit.bench.search import Candidate
from toolkit.bench.timing import Series
from toolkit.runners import RunnerOptions


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory, exported, mnist_dir):
    out = tmp_path_factory.mktemp("bench")
    # --sweep: every combination of the settings (here ONNX Runtime's 1 or 2 concurrent calls) at every batch size
    result = run_cli("bench", "--sweep", "--artifacts", exported, "--data-dir", mnist_dir,
                     "--format", "onnx,pytorch,torchscript", "--runtime", "onnxruntime,pytorch,torchscript",
                     "--precision", "fp32,int8", "--batch-sizes", "1,16", "--seconds", "0.3", "--rounds", "2",
                     "--warmup", "1", "--optimization", "all", "--concurrency", "1,2", "--no-matmul-peak",
                     "--json", out / "b.json", "--markdown", out / "b.md", "--plot", out / "b.png")
    assert result.exit_code == 0, result.stderr
    return json.loads((out / "b.json").read_text()), out, result.stdout


def test_json_describes_machine_versions_and_settings(bench_json):
    report, _, _ = bench_json
    assert report["machine"]["cpu"] and report["machine"]["cpu_cores"] >= 1
    assert {"torch", "onnx", "toolkit"} <= set(report["versions"])
    assert "onnxruntime-gpu" in report["versions"] or "onnxruntime" in report["versions"]
    assert report["settings"]["batch_sizes"] == [1, 16] and report["settings"]["providers"] == ["cpu"]
    assert report["model_flops_per_image"] == 4_586_000


def _one_call_threads() -> list:
    """The thread counts bench tries one ONNX Runtime call at, on this machine (the search's own rule, which
    test_one_call_is_also_tried_on_one_thread_and_on_every_hyperthread checks)."""
    from toolkit.bench.config import BenchConfig
    from toolkit.bench.search import _thread_counts

    return _thread_counts(BenchConfig(), 1, True)


def test_every_point_is_sane(bench_json):
    report, _, _ = bench_json
    points = report["points"]
    ort_settings = len(_one_call_threads()) + 1  # one call (default threads, and others on several CPUs), two calls
    assert len(points) == (2 * ort_settings + 2) * 2 and {p["batch_size"] for p in points} == {1, 16}  # all of it
    kinds = {(p["runtime"], p["precision"], p["concurrency"]) for p in points}
    assert kinds == {("onnxruntime", "fp32", 1), ("onnxruntime", "fp32", 2), ("onnxruntime", "int8", 1),
                     ("onnxruntime", "int8", 2), ("pytorch", "fp32", 1), ("torchscript", "fp32", 1)}
    for p in points:
        for key in ("format", "precision", "provider", "batch_size", "p50_ms", "p90_ms", "p99_ms", "throughput"):
            assert key in p
        assert p["provider"] == "cpu" and p["iterations"] >= 3  # at least 3 timed calls, over the rounds
        assert 0 < p["min_ms"] <= p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"]
        assert p["first_call_ms"] > 0
        # throughput counts wall time, so it can only fall short of what the latencies allow, and not by much
        ideal = p["concurrency"] * p["batch_size"] / (p["mean_ms"] / 1e3)
        assert 0.5 * ideal <= p["throughput"] <= 1.05 * ideal, p


def test_batch_one_target_is_computed_from_this_run(bench_json):
    report, _, stdout = bench_json
    target = report["targets"]["ort_fp32_batch1_p50_vs_eager"]
    ort1 = min(p["p50_ms"] for p in report["points"] if p["runtime"] == "onnxruntime" and p["precision"] == "fp32"
               and p["batch_size"] == 1 and p["concurrency"] == 1)
    eager1 = next(p["p50_ms"] for p in report["points"] if p["runtime"] == "pytorch" and p["batch_size"] == 1)
    assert target["value"] == pytest.approx(ort1 / eager1)
    assert "ort_fp32_throughput_vs_matmul_peak" not in report["targets"]  # no peak measured: no claim
    assert "matmul_peak_threads" not in report["settings"]  # nor a record of where it was measured
    # the targets are the project's goals, for benchmarks/: in the JSON, never printed to the user
    assert "ort_fp32_batch1_p50_vs_eager" not in stdout and "missed" not in stdout and "target" not in stdout


def test_markdown_and_plot_are_written(bench_json):
    _, out, _ = bench_json
    md = (out / "b.md").read_text()
    summary, points = md.split("Every point measured:")
    ort_points = 4 * (len(_one_call_threads()) + 1)  # settings x 2 precisions x 2 batch sizes
    assert points.count("\n| onnxruntime") == ort_points and "| pytorch |" in points  # every point, in its own table
    header, _, *rows = [line.split("|")[1:-1] for line in points.splitlines() if line.startswith("| ")]
    settings = [tuple(row[:[c.strip() for c in header].index("batch") + 1]) for row in rows]
    assert len(set(settings)) == len(settings)  # no two points alike: one call's thread counts are told apart
    assert summary.count("\n| onnxruntime") == 2 and "- most throughput: " in summary and "target" not in md
    assert (out / "b.png").read_bytes()[:4] == b"\x89PNG"


def _point(**kw):
    base = dict(runtime="onnxruntime", format="onnx", precision="fp32", provider="cpu", io="host", optimization="all",
                cuda_graph=False, batch_size=64, concurrency=1, iterations=10, threads=None, first_call_ms=1.0,
                p50_ms=1.0, p90_ms=1.0, p99_ms=1.0, mean_ms=1.0, min_ms=1.0, throughput=1000.0)
    return BenchPoint(**{**base, **kw})


def test_targets_compare_best_against_best():
    points = [_point(batch_size=1, p50_ms=0.1, throughput=10_000), _point(batch_size=256, throughput=20_000),
              _point(precision="int8", batch_size=32, throughput=90_000),  # below batch 64: not eligible
              _point(precision="int8", batch_size=256, throughput=31_000),
              _point(runtime="pytorch", format="pytorch", batch_size=1, p50_ms=0.5)]
    report = BenchReport(machine={}, versions={}, settings={}, session_options={}, model_flops_per_image=4_586_000,
                         matmul_peak_gflops=100.0, points=points, load_ms={}, skipped={})
    t = targets(report)
    assert t["ort_fp32_batch1_p50_vs_eager"]["value"] == pytest.approx(0.2) and t["ort_fp32_batch1_p50_vs_eager"]["met"]
    assert t["ort_fp32_throughput_vs_matmul_peak"]["value"] == pytest.approx(20_000 * 4.586e-3 / 100)
    assert t["ort_int8_vs_fp32_throughput"]["value"] == pytest.approx(1.55) and t["ort_int8_vs_fp32_throughput"]["met"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_request_without_cuda_fails_instead_of_timing_the_cpu(exported, mnist_dir):
    result = run_cli("bench", "--provider", "cuda", "--artifacts", exported, "--data-dir", mnist_dir,
                     "--format", "onnx", "--iterations", "2")
    line = assert_one_line_error(result, 2)
    assert "CUDAExecutionProvider" in line or "onnxruntime-gpu" in line


@pytest.mark.parametrize("args, message", [
    (["--batch-sizes", "0"], "batch sizes must be positive"),
    (["--batch-sizes", "one"], "whole numbers"),
    (["--provider", "metal"], "unknown provider"),
    (["--provider", "all,metal"], "unknown provider 'metal'"),
    (["--optimization", "max"], "unknown optimization level"),
    (["--concurrency", "0"], "concurrency must be positive"),
    (["--seconds", "nan"], "seconds per point must be a number from 0.01 to 3600"),
    (["--seconds", "inf"], "seconds per point must be a number from 0.01 to 3600"),
    (["--seconds", "0"], "seconds per point must be a number from 0.01 to 3600"),
    (["--seconds", "1e-300"], "seconds per point must be a number from 0.01 to 3600"),
    (["--batch-sizes", "1,70000"], "batch sizes must be positive whole numbers from 1 to 65,536"),
    (["--rounds", "0"], "rounds must be positive"),
    (["--iterations", "0"], "iterations must be positive"),
    (["--warmup", "-1"], "warmup must be whole numbers from 0"),
    (["--threads", "0"], "threads must be positive"),
    (["--threads", "5000"], "threads must be positive whole numbers from 1 to 1,024"),
    (["--concurrency", "1000"], "concurrency must be positive whole numbers from 1 to 256"),
    (["--verify-images", "0"], "verify images must be positive whole numbers from 1 to 10,000"),
    (["--verify-images", "10001"], "verify images must be positive whole numbers from 1 to 10,000"),
    (["--runtime", "tflite"], "unknown runtime 'tflite'"),
    (["--mode", "fp8"], "unknown OpenVINO precision"),
    (["--hint", "fast"], "unknown OpenVINO hint"),
])
def test_bad_bench_options(exported, mnist_dir, args, message):
    result = run_cli("bench", "--artifacts", exported, "--data-dir", mnist_dir, *args)
    assert message in assert_one_line_error(result, 2)


def test_fixed_iteration_count_is_honoured(exported, mnist_dir, tmp_path):
    result = run_cli("bench", "--artifacts", exported, "--data-dir", mnist_dir, "--format", "onnx",
                     "--precision", "fp32", "--batch-sizes", "4", "--iterations", "9", "--rounds", "3",
                     "--warmup", "0", "--no-matmul-peak", "--runtime", "onnxruntime", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    points = json.loads((tmp_path / "b.json").read_text())["points"]
    # batch 1 for latency, then the ladder; a fixed count holds also for concurrent calls (shared out among them)
    assert [p["batch_size"] for p in points] == [1, 4] and all(p["iterations"] == 9 for p in points)


def test_format_pytorch_narrows_the_run_to_that_runtime(exported, mnist_dir, tmp_path):
    result = run_cli("bench", "--artifacts", exported, "--data-dir", mnist_dir, "--format", "pytorch",
                     "--batch-sizes", "2", "--iterations", "3", "--rounds", "1", "--warmup", "0", "--no-matmul-peak",
                     "--no-verify", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    points = json.loads((tmp_path / "b.json").read_text())["points"]
    assert [(p["runtime"], p["format"], p["batch_size"]) for p in points] == [("pytorch", "pytorch", 1),
                                                                            ("pytorch", "pytorch", 2)]


@pytest.fixture
def other_weights(short_run, mnist_dir, tmp_path):
    """An export of a copy of a run's checkpoint, and a checkpoint of the same model with other weights: (the
    checkpoint found by its SHA-256, the other one, the export folder)."""
    (tmp_path / "run").mkdir()
    found, other, folder = tmp_path / "run" / "checkpoint.pt", tmp_path / "other.pt", tmp_path / "exported"
    shutil.copy(short_run / "checkpoint.pt", found)
    result = run_cli("export", "--checkpoint", found, "--format", "onnx", "--precision", "fp32", "--out", folder,
                     "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    ckpt = torch.load(found, weights_only=True)
    ckpt["state_dict"] = {k: v * 0.5 for k, v in ckpt["state_dict"].items()}  # the same model, other weights
    torch.save(ckpt, other)
    return found, other, folder


def _never_timed(monkeypatch):
    import toolkit.bench.pipeline as pipeline

    def timed(*args, **kwargs):
        raise AssertionError("a configuration was timed")

    monkeypatch.setattr(pipeline, "time_rounds", timed)


@pytest.mark.parametrize("args", [
    ["--format", "pytorch", "--no-verify"],  # the eager baseline of another checkpoint
    ["--format", "onnx", "--runtime", "onnxruntime"],  # the files verified against another checkpoint's outputs
    ["FILE"],  # a toolkit file by path, verified against its export's reference
])
def test_a_checkpoint_other_than_the_artifacts_source_is_refused_before_timing(other_weights, mnist_dir,
                                                                                monkeypatch, args):
    """bench reads the checkpoint once, before timing anything, and refuses one whose SHA-256 is not the one the
    manifest records, as verify fails every file against it: for the eager baseline, and for the reference the
    files are verified against (which was computed from the file named, its hash never compared)."""
    _, other, folder = other_weights
    _never_timed(monkeypatch)
    where = [folder / "model.onnx"] if args == ["FILE"] else ["--artifacts", folder, *args]
    result = run_cli("bench", *where, "--checkpoint", other, "--batch-sizes", "1", "--iterations", "2", "--rounds",
                     "1", "--warmup", "0", "--no-matmul-peak", "--verify-images", "50", "--data-dir", mnist_dir)
    error = assert_one_line_error(result, 2)
    assert f"checkpoint {other} is not the one" in error and "SHA-256 differs from the manifest" in error


def test_the_baseline_reference_and_flops_come_from_the_bytes_checked_before_timing(other_weights, mnist_dir):
    """The checkpoint found by its SHA-256 is read once, before timing: the reference outputs, the eager baseline
    and the FLOPs counted for an export that recorded none are all built from those very bytes, so the file
    replaced after bench read it changes nothing (it was reloaded by path before, and refused or judged on)."""
    from toolkit.bench.config import BenchConfig
    from toolkit.bench.pipeline import _model_flops
    from toolkit.bench.search import plan_manifest

    found, other, folder = other_weights
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["model_flops_per_image"]  # as an older export wrote it: bench counts them on the checkpoint
    (folder / "manifest.json").write_text(json.dumps(manifest))
    config = BenchConfig(artifacts=str(folder), data_dir=str(mnist_dir), formats=("pytorch",), verify_images=50)
    plan = plan_manifest(config)  # finds the checkpoint by its SHA-256, reads it, computes the reference
    assert plan.checkpoint.sha256 == plan.reference.source_sha256 == manifest["artifacts"][0]["source_sha256"]
    shutil.copy(other, found)  # replaced after it was read
    runner = plan.opener(plan.candidates[0])  # verified against the reference on opening
    assert plan.opener.verdict(plan.candidates[0])["passed"] is True
    out = runner.run(plan.reference.pixels)["log_probs"]
    np.testing.assert_allclose(out, plan.reference.log_probs, atol=1e-4)
    assert _model_flops(config, plan.checkpoint) > 0


def test_fastest_names_only_verified_configurations():
    from toolkit.bench import fastest

    points = [_point(batch_size=1, p50_ms=0.05, verified=False), _point(batch_size=1, p50_ms=0.08, verified=True),
              _point(runtime="openvino", batch_size=256, throughput=90_000, verified=False, hint="throughput"),
              _point(runtime="openvino", batch_size=256, throughput=70_000, verified=True, hint="throughput",
                     concurrency=2)]
    best = fastest(points)
    assert best["lowest latency"]["p50_ms"] == 0.08
    assert best["most throughput"]["images_per_s"] == 70_000 and "async x2" in best["most throughput"]["label"]


def test_int8_targets_use_the_best_verified_int8_configuration():
    points = [_point(batch_size=64, throughput=10_000),
              _point(runtime="openvino", precision="int8", mode="f32", batch_size=64, throughput=30_000, verified=True),
              _point(runtime="openvino", precision="int8", mode="f32", batch_size=256, throughput=50_000,
                     verified=False)]
    report = BenchReport(machine={}, versions={}, settings={}, session_options={}, model_flops_per_image=4_586_000,
                         matmul_peak_gflops=None, points=points, load_ms={}, skipped={}, int8_matmul_peak_gops=500.0)
    t = targets(report)
    assert t["best_verified_int8_vs_ort_fp32_throughput"]["value"] == pytest.approx(3.0)
    assert t["best_int8_throughput_vs_int8_matmul_peak"]["value"] == pytest.approx(30_000 * 4.586e-3 / 500)


def test_the_peaks_line_gives_the_ceilings_and_the_share_the_most_throughput_reached(capsys):
    from toolkit import bench
    from toolkit.cli import tables

    points = [_point(batch_size=1, p50_ms=0.1, throughput=10_000, verified=True),
              _point(precision="int8", batch_size=256, throughput=40_000, verified=True)]
    report = BenchReport(machine={"cpu": "a CPU", "cpu_cores": 2}, versions={}, settings={}, session_options={},
                         model_flops_per_image=4_586_000, matmul_peak_gflops=200.0, points=points, load_ms={},
                         skipped={}, int8_matmul_peak_gops=1000.0, summary=bench.summarize(points),
                         fastest=bench.fastest(points))
    line = bench.peaks_line(report)
    assert "float32 200 GFLOP/s, int8 1,000 GOP/s" in line
    assert f"at most {200e9 / 4_586_000:,.0f} and {1000e9 / 4_586_000:,.0f} images/s" in line
    assert line.endswith(f"most throughput: {40_000 * 4.586e-3 / 1000:.2f} of the int8 peak")  # int8 on int8
    assert line in bench.markdown_table(report)
    tables._print_bench(report, bench)
    assert line in " ".join(capsys.readouterr().out.split())  # however the console folds it
    # without a peak, or without the model's FLOPs (a bench FILE), there is no ceiling to state
    for missing in ({"matmul_peak_gflops": None, "int8_matmul_peak_gops": None}, {"model_flops_per_image": None}):
        bare = BenchReport(**{**report.__dict__, **missing})
        assert bench.peaks_line(bare) is None and "matmul peaks" not in bench.markdown_table(bare)
    # a pick in a precision with no peak (bf16) gets the ceilings alone
    report.fastest["most throughput"]["judged_as"] = "bf16"
    assert bench.peaks_line(report).endswith("MFLOP model)")


def test_the_fp32_peak_target_takes_the_best_verified_fp32_configuration_of_any_runtime():
    points = [_point(batch_size=256, throughput=10_000, verified=True),
              _point(runtime="aoti", format="aoti", batch_size=256, throughput=25_000, verified=True),
              _point(runtime="openvino", mode="f32", batch_size=256, throughput=40_000, verified=False),
              _point(runtime="openvino", mode="bf16", batch_size=256, throughput=60_000, verified=True),  # bf16
              _point(runtime="pytorch", format="pytorch", batch_size=256, throughput=30_000, verified=True)]
    report = BenchReport(machine={}, versions={}, settings={}, session_options={}, model_flops_per_image=4_586_000,
                         matmul_peak_gflops=200.0, points=points, load_ms={}, skipped={})
    t = targets(report)["best_verified_fp32_throughput_vs_matmul_peak"]
    assert t["value"] == pytest.approx(25_000 * 4.586e-3 / 200) and not t["met"] and "aoti" in t["detail"]


def test_every_installed_runtime_is_timed_and_verified(exported, mnist_dir, tmp_path):
    result = run_cli("bench", "--sweep", "--mode", "f32,bf16", "--optimization", "all", "--concurrency", "1",
                     "--artifacts", exported, "--data-dir", mnist_dir, "--format", "onnx",
                     "--precision", "fp32,int8", "--batch-sizes", "1,8", "--iterations", "3", "--rounds", "1",
                     "--warmup", "0", "--no-matmul-peak", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    runtimes = {p["runtime"] for p in report["points"]}
    assert runtimes == {"onnxruntime", "openvino", "opencv"}  # opencv opens the fp32 file only
    assert all(p["verified"] is True for p in report["points"])
    assert {"onnxruntime", "openvino", "opencv"} <= set(report["runtimes"])
    assert all(r["version"] and r["settings"] for r in report["runtimes"].values())
    ov = {(p["precision"], p["mode"], p["hint"]) for p in report["points"] if p["runtime"] == "openvino"}
    assert ov == {("fp32", "f32", "latency"), ("fp32", "f32", "throughput"), ("fp32", "bf16", "latency"),
                  ("fp32", "bf16", "throughput"), ("int8", "f32", "latency"), ("int8", "f32", "throughput")}
    assert set(report["fastest"]) == {"lowest latency", "most throughput"} and "most throughput: " in result.stdout


# --- the default run: a short search, a summary, one recommendation per regime -----------------------------

@pytest.fixture(scope="module")
def searched(tmp_path_factory, exported, mnist_dir):
    """`toolkit bench` at its defaults (every runtime, every file, the search) on a CPU without native bf16,
    shortened in time only."""
    out = tmp_path_factory.mktemp("searched")
    with pytest.MonkeyPatch.context() as mp:
        fake_cpu_flags(mp, NO_BF16)
        result = run_cli("bench", "--artifacts", exported, "--data-dir", mnist_dir, "--batch-sizes", "1,64",
                         "--seconds", "0.1", "--rounds", "2", "--warmup", "1", "--json", out / "b.json")
    assert result.exit_code == 0, result.stderr
    return json.loads((out / "b.json").read_text()), result.stdout


def _group(p):
    return f"{p['runtime']} {p['format']}/{p['precision']} {p['provider']} {'f32' if p['mode'] == '-' else p['mode']}"


def test_default_bench_prints_one_screen(searched):
    report, stdout = searched
    lines = stdout.splitlines()
    rows = [line for line in lines if line.startswith("│")]
    files = {(p["runtime"], p["format"], p["precision"]) for p in report["points"]}
    assert len(rows) == len(report["summary"]) == len(files) <= 20  # one row per runtime and file (modes share it)
    runtimes = {r["runtime"] for r in report["summary"]}
    assert runtimes == {p["runtime"] for p in report["points"]} >= {"onnxruntime", "openvino", "opencv", "pytorch"}
    assert len(lines) <= len(rows) + 12  # title, header, rules, notes and two recommendations
    assert not any(name in stdout for name in GOALS) and "missed" not in stdout and "target" not in stdout
    assert report["targets"]  # still computed, for benchmarks/
    assert sum(line.startswith(("lowest latency: ", "most throughput: ")) for line in lines) == 2


def test_bf16_is_skipped_with_a_note_where_the_cpu_only_emulates_it(searched):
    report, stdout = searched
    notes = [line for line in stdout.splitlines() if "bf16" in line]
    assert len(notes) == 1 and notes[0].startswith("skipped openvino bf16: this CPU has no native bf16")
    assert report["settings"]["modes_timed"] == ["f32"] and not report["machine"]["native_bf16"]
    assert all(p["mode"] != "bf16" for p in report["points"])


def test_the_search_keeps_the_best_setting_by_its_rule(searched):
    report, _ = searched
    search = report["search"]
    assert search["probe_batch"] == 64 and search["rules"] == tuning.RULES
    for name, g in search["groups"].items():
        points = [p for p in report["points"] if _group(p) == name]
        assert [p["batch_size"] for p in points] == [1, 64], name  # batch 1, then the ladder
        assert points[0]["setting"] == g["latency"]["setting"] and points[1]["setting"] == g["throughput"]["setting"]
        single = [p for p in g["probes"] if p["batch_size"] == 1]
        wide = [p for p in g["probes"] if p["batch_size"] == 64]
        if name.startswith("onnxruntime"):  # optimization level x calls in flight (x one thread, if several cores)
            one_call = ["calls=1", *(f"calls=1 threads={n}" for n in _one_call_threads()[1:])]
            settings = [f"opt={o} {c}" for o in ("all", "extended") for c in (*one_call, "calls=2")]
            assert g["settings"] == settings and len(wide) == len(settings)
            assert [p["setting"] for p in single] == [s for s in settings if "calls=1" in s]
        elif name.startswith("openvino"):
            assert g["settings"] == ["hint=latency", "hint=throughput"] and not single and len(wide) == 2
            assert g["latency"] == {"setting": "hint=latency", "why": "the only setting to choose from"}
        else:
            assert g["settings"] == ["-"] and not g["probes"]
        if single:
            assert g["latency"]["setting"] == min(single, key=lambda p: p["p50_ms"])["setting"]
        if wide:
            assert g["throughput"]["setting"] == max(wide, key=lambda p: p["images_per_s"])["setting"]
            assert g["throughput"]["why"] == tuning.RULES["throughput"]


def test_recommendations_agree_with_their_own_numbers(searched):
    report, stdout = searched
    fast, slow = report["fastest"]["lowest latency"], report["fastest"]["most throughput"]
    eligible = [p for p in report["points"] if p["verified"]]
    single = min((p for p in eligible if p["batch_size"] == 1 and p["concurrency"] == 1), key=lambda p: p["p50_ms"])
    assert (fast["p50_ms"], fast["setting"]) == (single["p50_ms"], single["setting"])
    # the rate beside a p50 is that p50's rate, and the line says so
    assert fast["images_per_s_from"] == "p50" and fast["images_per_s"] == pytest.approx(1e3 / fast["p50_ms"])
    assert (f"p50 {fast['p50_ms']:.3f} ms" in stdout
            and f"(= {fast['images_per_s']:,.0f} images/s at that p50, one at a time)" in stdout)
    # the throughput pick's rate is the one measured over all its calls, and the line says that
    top = max(eligible, key=lambda p: p["throughput"])
    assert slow["images_per_s_from"] == "measured" and slow["images_per_s"] == top["throughput"]
    assert f"batch {top['batch_size']}" in stdout and f"{top['throughput']:,.0f} images/s measured" in stdout
    row = next(r for r in report["summary"] if r["runtime"] == top["runtime"] and r["format"] == top["format"]
               and r["precision"] == top["precision"])
    assert row["mode"] == top["mode"]
    assert row["best_images_per_s"] == top["throughput"] and row["verified"] is True
    # bench checks every configuration on 2,000 test images spread over the set (verify judges all 10,000)
    assert row["checked_images"] == 2_000 and row["agreement"] >= 0.99 * 2_000


@pytest.mark.parametrize("flags, args, timed", [
    (NO_BF16, ["--mode", "f32,bf16"], True),  # named: timed although emulated
    (NO_BF16 | {"amx_bf16"}, [], True),  # native: timed by default
    (NO_BF16 | {"avx512_bf16"}, [], True),
    (NO_BF16, [], False),
])
def test_bf16_is_timed_when_named_or_native(exported, mnist_dir, tmp_path, monkeypatch, flags, args, timed):
    fake_cpu_flags(monkeypatch, flags)
    result = run_cli("bench", "--artifacts", exported, "--data-dir", mnist_dir, "--runtime", "openvino",
                     "--format", "onnx", "--precision", "fp32", "--hint", "latency", "--batch-sizes", "1",
                     "--iterations", "3", "--rounds", "1", "--warmup", "0", "--no-verify", *args,
                     "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    modes = [p["mode"] for p in json.loads((tmp_path / "b.json").read_text())["points"]]
    assert modes == (["f32", "bf16"] if timed else ["f32"])
    assert ("skipped openvino bf16" in result.stdout) is not timed


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f avx512_vnni\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    flags = sysinfo.cpu_flags(str(cpuinfo))
    assert flags == {"fpu", "avx2", "avx512f", "avx512_vnni"} and not sysinfo.native_bf16(flags)
    assert sysinfo.native_bf16(flags | {"amx_bf16"}) and sysinfo.native_bf16({"avx512_bf16"})
    assert sysinfo.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_the_cpu_family_and_model_tell_apart_cpus_named_alike(tmp_path):
    # a virtual machine names two generations of a CPU alike ('AMD EPYC'): the numbers say which it is
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
                       "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 25\nmodel\t\t: 1\n")
    assert sysinfo.cpu_id(str(cpuinfo)) == "family 26, model 2"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some Arm CPU\nCPU part\t: 0xd0c\n")
    assert sysinfo.cpu_id(str(cpuinfo)) is None and sysinfo.cpu_id(str(tmp_path / "missing")) is None
    cpuinfo.write_text("cpu family\t: ²\nmodel\t\t: 2\n")  # ASCII digits only
    assert sysinfo.cpu_id(str(cpuinfo)) is None


def _series(p50_ms, images_per_s, batch):
    """A probe's series: calls of `p50_ms` each whose wall time gives `images_per_s` at `batch`."""
    calls = 10
    return Series(first_ms=1.0, times=[p50_ms / 1e3] * calls, wall_s=calls * batch / images_per_s)


def test_search_rule_picks_the_lowest_p50_and_the_most_images_per_second():
    opts = [RunnerOptions(optimization=o, threads=t) for o in ("all", "extended") for t in (None, 1)]
    group = [Candidate("onnxruntime", "m.onnx", "onnx", "fp32", o, concurrency=1 if o.threads is None else 2)
             for o in opts]
    grouped = tuning.groups(group)
    assert list(grouped) == ["onnxruntime onnx/fp32 cpu f32"]
    jobs = tuning.probe_jobs(grouped, 256)
    assert [(c.setting, sizes) for c, sizes in jobs] == [
        ("opt=all calls=1", (1, 256)), ("opt=all calls=2", (256,)), ("opt=extended calls=1", (1, 256)),
        ("opt=extended calls=2", (256,))]
    series = {(group[0].key, 1): _series(0.2, 1_000, 1), (group[2].key, 1): _series(0.1, 1_000, 1)}
    for c, rate in zip(group, (10_000, 30_000, 20_000, 25_000)):
        series[(c.key, 256)] = _series(1.0, rate, 256)
    (choice,) = tuning.choose(grouped, series, 256)
    assert (choice.latency.setting, choice.throughput.setting) == ("opt=extended calls=1", "opt=all calls=2")
    final = tuning.final_jobs([choice], (1, 8, 64, 256, 1024))
    assert [(c.setting, sizes) for c, sizes in final] == [("opt=extended calls=1", (1,)),
                                                         ("opt=all calls=2", (8, 64, 256, 1024))]
    assert tuning.probe_batch((1, 8, 64, 256, 1024)) == 256 and tuning.probe_batch((1, 512)) == 512
    assert tuning.probe_batch((1,)) == 1


def test_a_matmul_peak_needs_the_models_flops():
    from toolkit.bench.config import BenchConfig
    from toolkit.bench.pipeline import _peaks_wanted

    skipped = {}
    assert not _peaks_wanted(BenchConfig(matmul_peak=True), ["cpu"], None, skipped)
    assert "FLOPs are unknown" in skipped["matmul peak"]
    assert _peaks_wanted(BenchConfig(matmul_peak=True), ["cpu"], 4_586_000, {})


def test_one_call_is_also_tried_on_one_thread_and_on_every_hyperthread(monkeypatch):
    from toolkit.bench import search
    from toolkit.bench.config import BenchConfig
    from toolkit.bench.search import _thread_counts

    def machine(cpus, cores):
        monkeypatch.setattr(sysinfo, "usable_cores", lambda: cpus)
        monkeypatch.setattr(sysinfo, "physical_cores", lambda: cores)
    monkeypatch.setattr(search, "ort_default_threads", lambda: None)  # every CPU usable: one per core
    machine(4, 4)
    config = BenchConfig()
    assert _thread_counts(config, 1, True) == [None, 1] and _thread_counts(config, 1, False) == [None]
    assert _thread_counts(config, 2, True) == [2]  # concurrent calls share the cores
    assert _thread_counts(BenchConfig(threads=3), 1, True) == [3]  # --threads decides alone
    machine(1, 1)
    assert _thread_counts(config, 1, True) == [None]
    # hyperthreads: the default is one thread per core, so one call also runs on every CPU
    machine(2, 1)
    assert _thread_counts(config, 1, True) == [None, 2]  # the default is one thread already: not timed twice
    machine(4, 2)
    assert _thread_counts(config, 1, True) == [None, 1, 4]
    monkeypatch.setattr(search, "ort_default_threads", lambda: 2)  # taskset to a core's two hyperthreads
    machine(2, 1)
    assert _thread_counts(config, 1, True) == [None, 1]
    one = Candidate("onnxruntime", "m.onnx", "onnx", "fp32", RunnerOptions(threads=1))
    point = one.point(1, 1, [1e-4] * 3, 3e-4, 1.0, None)
    assert one.setting == "opt=all calls=1 threads=1" and one.one_call_at_a_time
    assert point.label.endswith("1 thread") and "1 thread" not in Candidate(
        "onnxruntime", "m.onnx", "onnx", "fp32", RunnerOptions()).point(1, 1, [1e-4], 1e-4, 1.0, None).label
    every = Candidate("onnxruntime", "m.onnx", "onnx", "fp32", RunnerOptions(threads=4))
    assert every.setting == "opt=all calls=1 threads=4" and every.point(1, 1, [1e-4], 1e-4, 1.0, None).label.endswith(
        "4 threads")


def test_physical_cores_count_the_hyperthreads_of_a_core_once(tmp_path):
    import os

    for cpu in os.sched_getaffinity(0):  # pairs of CPUs share a core, as on a hyperthreaded machine
        folder = tmp_path / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "thread_siblings_list").write_text(f"{cpu // 2 * 2}-{cpu // 2 * 2 + 1}\n")
    assert sysinfo.physical_cores(str(tmp_path)) == len({cpu // 2 for cpu in os.sched_getaffinity(0)})
    assert sysinfo.physical_cores(str(tmp_path / "missing")) == sysinfo.usable_cores()  # the kernel does not say
    assert 1 <= sysinfo.physical_cores() <= sysinfo.usable_cores()


def test_the_bench_check_spans_the_whole_test_set_evenly():
    from toolkit.bench.search import sample
    from toolkit.reference import Reference

    n = 10_000
    ref = Reference(pixels=np.arange(n).reshape(n, 1), labels=np.arange(n) % 10,
                    log_probs=np.arange(n * 10, dtype=np.float32).reshape(n, 10))
    cut = sample(ref, 2_000)
    assert len(cut.pixels) == len(cut.labels) == len(cut.log_probs) == 2_000
    assert cut.pixels[0, 0] == 0 and cut.pixels[-1, 0] == n - 5  # every fifth image: first to last
    assert (cut.log_probs[:, 0] == cut.pixels[:, 0] * 10).all()  # inputs and answers stay paired
    assert sample(ref, n) is ref and sample(ref, 20_000) is ref


def test_rounds_warm_up_fully_once_and_with_one_call_after(monkeypatch):
    import contextlib
    from types import SimpleNamespace

    from toolkit.bench import timing

    calls, drains = [], []
    runner = SimpleNamespace(timed=lambda batches, io: SimpleNamespace(call=calls.append, batches_per_call=1,
                                                                       drain=lambda: drains.append(len(calls))))
    candidate = SimpleNamespace(key="k", io="host", concurrency=1, runtime="r", format="f", precision="p",
                                options=SimpleNamespace(device="cpu"))
    monkeypatch.setattr(timing, "run_guard", lambda r: contextlib.nullcontext())
    budget = timing.Budget(rounds=3, seconds=1.0, warmup=5, iterations=6)
    series = timing.time_rounds([(candidate, (1,))], lambda c: runner, np.zeros((16, 28, 28), np.uint8), budget)
    # the first call, timed apart; then per round the warm-up (5, then 1 and 1) and 2 timed calls
    assert len(calls) == 1 + (5 + 2) + (1 + 2) + (1 + 2)
    assert len(series[("k", 1)].times) == 6
    # what a call leaves running is waited for after the first call, and after each warm-up and timed block
    assert drains == [1, 6, 8, 9, 11, 12, 14]


def test_a_timed_block_waits_for_what_its_calls_left_running():
    """A fed queue's last batches finish after the last call returns: the block's wall time covers them."""
    from toolkit.bench import timing

    times, wall = timing._measure(lambda i: None, warmup=0, iterations=3, seconds=1.0, offset=0,
                                  drain=lambda: time.sleep(0.2))
    assert len(times) == 3 and max(times) < 0.1 and wall >= 0.2


def test_a_matmul_kernel_far_from_any_peak_is_timed_once_not_at_every_size(monkeypatch):
    # torch's int8 matmul without VNNI is far from any peak, and slower at each size: one slow call ends it
    from toolkit.bench import peaks

    monkeypatch.setattr(peaks, "SLOW_CALL_S", 0.01)
    sizes = []

    def slow(a, b):
        sizes.append(a)
        time.sleep(0.02)
    assert 0 < peaks._best_rate(slow, lambda n: (n, n)) <= 2 * 1024 ** 3 / 0.02 / 1e9
    assert sizes == [1024]


def test_the_int8_peak_is_not_torchs_slow_kernel_alone(monkeypatch):
    # where torch has no fast int8 kernel (no VNNI), a peak of its rate would put int8 models at many times
    # "their peak"; ONNX Runtime's int8 matmul is measured beside it
    from toolkit.bench import peaks

    monkeypatch.setattr(peaks, "SIZES", (256, 256))
    monkeypatch.setattr(peaks, "_torch_int8_rate", lambda: 2.0)
    assert peaks.int8_matmul_peak_gops() > 10  # GOP/s: MLAS's int8 GEMM on any x86-64 or Arm CPU of this century


def test_the_float32_peak_is_not_torchs_kernel_alone(monkeypatch):
    # torch's float32 matmul can run a kernel narrower than the CPU's units (MKL's AVX2 path on an AMD CPU with
    # full-width AVX-512): ONNX Runtime's MatMul is measured beside it, and the better rate is the peak
    from toolkit.bench import peaks

    monkeypatch.setattr(peaks, "SIZES", (256, 256))
    monkeypatch.setattr(peaks, "_torch_rate", lambda dtype: 2.0)
    assert peaks.matmul_peak_gflops() > 10  # GFLOP/s: MLAS's float32 GEMM on any x86-64 or Arm CPU of this century


def test_the_peaks_are_measured_on_every_cpu_where_the_cores_have_hyperthreads(monkeypatch):
    # torch and ONNX Runtime start one thread per physical core, while bench's concurrent configurations use
    # every CPU: where there are more CPUs than cores, the peak is also measured on all of them, the better kept
    import torch

    from toolkit.bench import peaks

    default = torch.get_num_threads()
    monkeypatch.setattr(peaks.sysinfo, "usable_cores", lambda: default + 1)
    seen = []

    def torch_rate(dtype):
        seen.append(torch.get_num_threads())
        return 10.0 * torch.get_num_threads()
    monkeypatch.setattr(peaks, "_torch_rate", torch_rate)
    monkeypatch.setattr(peaks, "_torch_int8_rate", lambda: 3.0 * torch.get_num_threads())
    monkeypatch.setattr(peaks, "_ort_matmul_rate", lambda kind, threads: 1.0 * threads)
    rates = {}
    assert peaks.matmul_peak_gflops(rates=rates) == 10.0 * (default + 1)
    assert seen == [default, default + 1] and rates == {"torch": 10.0 * (default + 1), "onnxruntime": default + 1}
    assert peaks.int8_matmul_peak_gops() == 3.0 * (default + 1)
    assert torch.get_num_threads() == default  # what runs next gets torch's own count back
    assert peaks.matmul_peak_gflops(threads=1) == 10.0  # --threads: that count alone


def test_bench_judges_a_bf16_run_by_the_precision_it_computed(monkeypatch):
    # OpenVINO computes f32 when asked for bf16 on a CPU with neither bf16 nor AVX-512: bench then holds it to
    # f32's tolerances, as verify does, and says what it computed
    from types import SimpleNamespace

    from toolkit import verify
    from toolkit.bench import search
    from toolkit.runners import RunnerOptions

    used = []
    monkeypatch.setattr(verify, "check_runner", lambda runner, ref, tolerance, k: used.append(tolerance) or
                        {"passed": True, "agreement": 10, "n": 10, "max_abs_diff": 0.0, "failures": []})
    key = ("openvino", "onnx", "fp32", RunnerOptions(mode="bf16"))
    for computed, judged in (("f32", "fp32"), ("bf16", "bf16")):
        verdict = search._verdict_of(key, SimpleNamespace(computed_mode=computed),
                                     ref=SimpleNamespace(labels=None), artifact=None, total=10)
        assert used.pop() == verify.DEFAULT_TOLERANCES[judged] and verdict["judged_as"] == judged
        assert verdict.get("computed_mode") == ("f32" if computed == "f32" else None)
