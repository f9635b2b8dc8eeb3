"""The toolkit's exports on every engine installed here, side by side in one run on this CPU.

ONNX Runtime, OpenVINO (f32 and bf16 inference precision, latency and throughput hints), OpenCV DNN, PyTorch
eager, TorchScript, torch.export (.pt2), AOTInductor (.aoti.pt2), ExecuTorch with XNNPACK (.pte) and LiteRT
(.tflite) run the fp32 and int8 files of one export in one `toolkit bench` run: interleaved rounds, warm-up,
percentiles, each runtime at the settings its short search finds best. Each configuration is first checked by
verify's rules on test images; the table gives its agreement with PyTorch beside its speed. Every ratio is to a
figure measured in the same run: ONNX Runtime fp32, and the CPU's float32 and int8 matrix-multiply peaks (the
model's FLOPs per image times images/s, over the peak).

    python benchmarks/peers.py --artifacts exported --data-dir data --out benchmarks/results/peers.json
"""

from __future__ import annotations

import argparse
from typing import Any

from toolkit import fileio
from toolkit.bench import BenchConfig, BenchPoint, BenchReport, bench

THROUGHPUT_BATCHES = (64, 256)  # "best throughput" means the best of these, for every engine alike


def _group_name(p: BenchPoint) -> str:
    return " ".join([p.runtime, f"{p.format}/{p.precision}", *([p.mode] if p.mode != "-" else [])])


def _peak_share(p: BenchPoint, report: BenchReport) -> float | None:
    """Operations per second at `p`'s throughput over the peak of its arithmetic (int8 files: the int8 peak)."""
    peak = report.int8_matmul_peak_gops if p.judged_as == "int8" else report.matmul_peak_gflops
    if not peak or not report.model_flops_per_image or p.judged_as not in ("fp32", "int8"):
        return None
    return p.throughput * report.model_flops_per_image / 1e9 / peak


def rows(report: BenchReport) -> list[dict[str, Any]]:
    """One row per engine configuration (runtime, file, precision mode): batch-1 p50 and best throughput."""
    groups: dict[str, list[BenchPoint]] = {}
    for p in report.points:
        groups.setdefault(_group_name(p), []).append(p)
    out = []
    for name, group in groups.items():
        single = [p for p in group if p.batch_size == 1 and p.one_at_a_time]
        best = max((p for p in group if p.batch_size in THROUGHPUT_BATCHES), key=lambda p: p.throughput)
        b1 = min(single, key=lambda p: p.p50_ms) if single else None
        out.append({"configuration": name, "runtime": best.runtime, "batch1_p50_ms": b1.p50_ms if b1 else None,
                    "batch1_label": b1.label if b1 else None, "best_throughput": best.throughput,
                    "best_label": best.label, "best_batch": best.batch_size, "verified": best.verified,
                    "judged_as": best.judged_as, "agreement": best.agreement, "checked_images": best.checked_images,
                    "share_of_peak": _peak_share(best, report)})
    return out


def fastest_per_regime(table: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The fastest verified row for latency (batch-1 p50) and for throughput, for fp32 and for int8 files."""
    out = {}
    for judged in ("fp32", "int8"):
        pool = [r for r in table if r["verified"] and r["judged_as"] == judged and r["runtime"] != "pytorch"]
        timed_alone = [r for r in pool if r["batch1_p50_ms"]]
        if timed_alone:
            out[f"{judged} lowest latency"] = min(timed_alone, key=lambda r: r["batch1_p50_ms"])
        if pool:
            out[f"{judged} most throughput"] = max(pool, key=lambda r: r["best_throughput"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", default="exported")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per benchmark point")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/peers.json")
    args = parser.parse_args()

    report = bench(BenchConfig(
        artifacts=args.artifacts, data_dir=args.data_dir, precisions=("fp32", "int8"),
        batch_sizes=THROUGHPUT_BATCHES, seconds=args.seconds, rounds=args.rounds, matmul_peak=True,
        verify_images=10_000))
    table = rows(report)
    base = next(r for r in table if r["configuration"] == "onnxruntime onnx/fp32")
    for r in table:
        r["batch1_p50_vs_ort_fp32"] = r["batch1_p50_ms"] / base["batch1_p50_ms"] if r["batch1_p50_ms"] else None
        r["throughput_vs_ort_fp32"] = r["best_throughput"] / base["best_throughput"]
    result = {"benchmark": "peers", "machine": report.machine, "matmul_peak_gflops": report.matmul_peak_gflops,
              "int8_matmul_peak_gops": report.int8_matmul_peak_gops,
              "model_flops_per_image": report.model_flops_per_image, "rows": table,
              "fastest": fastest_per_regime(table), "targets": report.targets, "bench_report": report.to_json()}
    fileio.write_json(args.out, result)
    for r in table:
        share = f", {r['share_of_peak']:.2f} of its peak" if r["share_of_peak"] is not None else ""
        print(f"{r['configuration']:36s} batch-1 p50 {r['batch1_p50_ms'] or float('nan'):.3f} ms, best "
              f"{r['best_throughput']:,.0f} img/s (x{r['throughput_vs_ort_fp32']:.2f}{share}), "
              f"verified {r['verified']}")
    for regime, r in result["fastest"].items():
        print(f"fastest verified, {regime}: {r['configuration']}")


if __name__ == "__main__":
    main()
