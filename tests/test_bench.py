import json

import pytest
import torch

from tests.conftest import assert_one_line_error, run_cli
from toolkit.bench import BenchPoint, BenchReport, targets


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory, exported, mnist_dir):
    out = tmp_path_factory.mktemp("bench")
    result = run_cli("bench", "--artifacts", exported, "--data-dir", mnist_dir, "--format", "onnx,pytorch,torchscript",
                     "--precision", "fp32,int8", "--batch-sizes", "1,16", "--seconds", "0.3", "--rounds", "2",
                     "--warmup", "1", "--concurrency", "1,2", "--no-matmul-peak",
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


def test_every_point_is_sane(bench_json):
    report, _, _ = bench_json
    points = report["points"]
    kinds = {(p["runtime"], p["precision"], p["concurrency"]) for p in points}
    assert kinds == {("onnxruntime", "fp32", 1), ("onnxruntime", "fp32", 2), ("onnxruntime", "int8", 1),
                     ("onnxruntime", "int8", 2), ("pytorch", "fp32", 1), ("torchscript", "fp32", 1)}
    for p in points:
        for key in ("format", "precision", "provider", "batch_size", "p50_ms", "p90_ms", "p99_ms", "throughput"):
            assert key in p
        assert p["provider"] == "cpu" and p["iterations"] >= 2 * 3  # at least 3 timed calls per round
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
    assert "ort_fp32_batch1_p50_vs_eager" in stdout


def test_markdown_and_plot_are_written(bench_json):
    _, out, _ = bench_json
    md = (out / "b.md").read_text()
    assert md.count("\n| onnxruntime") == 8 and "| pytorch |" in md
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
])
def test_bad_bench_options(exported, mnist_dir, args, message):
    result = run_cli("bench", "--artifacts", exported, "--data-dir", mnist_dir, *args)
    assert message in assert_one_line_error(result, 2)


def test_fixed_iteration_count_is_honoured(exported, mnist_dir, tmp_path):
    result = run_cli("bench", "--artifacts", exported, "--data-dir", mnist_dir, "--format", "onnx", "--precision", "fp32",
                     "--batch-sizes", "4", "--iterations", "9", "--rounds", "3", "--warmup", "0", "--no-matmul-peak",
                     "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    (point,) = json.loads((tmp_path / "b.json").read_text())["points"]
    assert point["iterations"] == 9 and point["batch_size"] == 4
