import json

import pytest
import torch

from tests.conftest import assert_one_line_error, run_cli
from toolkit.bench import BenchPoint, BenchReport, targets


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory, exported, mnist_dir):
    out = tmp_path_factory.mktemp("bench")
    result = run_cli("bench", "--artifacts", exported, "--data-dir", mnist_dir, "--format", "onnx,pytorch,torchscript",
                     "--runtime", "onnxruntime,pytorch,torchscript",
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
    assert md.count("\n| onnxruntime") == 8 and "| pytorch |" in md and "Fastest here (throughput)" in md
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
    (["--seconds", "nan"], "seconds per point must be a finite number"),
    (["--seconds", "inf"], "seconds per point must be a finite number"),
    (["--seconds", "0"], "seconds per point must be a finite number"),
    (["--batch-sizes", "1,70000"], "batch sizes must be positive whole numbers from 1 to 65,536"),
    (["--rounds", "0"], "rounds must be positive"),
    (["--iterations", "0"], "iterations must be positive"),
    (["--warmup", "-1"], "warmup must be whole numbers from 0"),
    (["--threads", "0"], "threads must be positive"),
    (["--threads", "5000"], "threads must be positive whole numbers from 1 to 1,024"),
    (["--concurrency", "1000"], "concurrency must be positive whole numbers from 1 to 256"),
    (["--runtime", "tflite"], "unknown runtime 'tflite'"),
    (["--mode", "fp8"], "unknown OpenVINO precision"),
    (["--hint", "fast"], "unknown OpenVINO hint"),
])
def test_bad_bench_options(exported, mnist_dir, args, message):
    result = run_cli("bench", "--artifacts", exported, "--data-dir", mnist_dir, *args)
    assert message in assert_one_line_error(result, 2)


def test_fixed_iteration_count_is_honoured(exported, mnist_dir, tmp_path):
    result = run_cli("bench", "--artifacts", exported, "--data-dir", mnist_dir, "--format", "onnx",
                     "--precision", "fp32",
                     "--batch-sizes", "4", "--iterations", "9", "--rounds", "3", "--warmup", "0", "--no-matmul-peak",
                     "--runtime", "onnxruntime",
                     "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    (point,) = json.loads((tmp_path / "b.json").read_text())["points"]
    assert point["iterations"] == 9 and point["batch_size"] == 4


def test_format_pytorch_narrows_the_run_to_that_runtime(exported, mnist_dir, tmp_path):
    result = run_cli("bench", "--artifacts", exported, "--data-dir", mnist_dir, "--format", "pytorch",
                     "--batch-sizes", "2", "--iterations", "3", "--rounds", "1", "--warmup", "0", "--no-matmul-peak",
                     "--no-verify", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    points = json.loads((tmp_path / "b.json").read_text())["points"]
    assert [(p["runtime"], p["format"]) for p in points] == [("pytorch", "pytorch")]


def test_fastest_names_only_verified_configurations():
    from toolkit.bench import fastest

    points = [_point(batch_size=1, p50_ms=0.05, verified=False), _point(batch_size=1, p50_ms=0.08, verified=True),
              _point(runtime="openvino", batch_size=256, throughput=90_000, verified=False, hint="throughput"),
              _point(runtime="openvino", batch_size=256, throughput=70_000, verified=True, hint="throughput",
                     concurrency=2)]
    best = fastest(points)
    assert best["batch 1"]["p50_ms"] == 0.08
    assert best["throughput"]["throughput"] == 70_000 and "async x2" in best["throughput"]["label"]


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


def test_every_installed_runtime_is_timed_and_verified(exported, mnist_dir, tmp_path):
    result = run_cli("bench", "--artifacts", exported, "--data-dir", mnist_dir, "--format", "onnx",
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
    assert set(report["fastest"]) == {"batch 1", "throughput"} and "fastest here (throughput)" in result.stdout
