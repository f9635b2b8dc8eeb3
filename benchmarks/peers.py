"""The toolkit's exports on the engines users deploy them to, side by side in one run on this CPU.

ONNX Runtime, OpenVINO (f32 and bf16 inference precision, latency and throughput hints) and OpenCV DNN run
the same exported .onnx files (fp32 and the toolkit's int8 QDQ file) in one `toolkit bench` run: interleaved
rounds, warm-up, percentiles. Each configuration is first checked by verify's rules on all 10,000 test
images; the table gives its agreement with PyTorch beside its speed, and every ratio is against ONNX
Runtime fp32 measured in the same run.

    python benchmarks/peers.py --artifacts exported --data-dir data --out benchmarks/results/peers.json
"""

from __future__ import annotations

import argparse
from typing import Any

from toolkit import fileio
from toolkit.bench import BenchConfig, BenchPoint, bench

THROUGHPUT_BATCHES = (64, 256)  # "best throughput" means the best of these, for every engine alike


def rows(points: list[BenchPoint], verification: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per engine configuration (runtime, file, precision mode): batch-1 p50 and best throughput."""
    groups: dict[str, list[BenchPoint]] = {}
    for p in points:
        groups.setdefault(" ".join([p.runtime, f"{p.format}/{p.precision}", *([p.mode] if p.mode != "-" else [])]),
                          []).append(p)
    out = []
    for name, group in groups.items():
        single = [p for p in group if p.batch_size == 1 and p.concurrency == 1]
        best = max((p for p in group if p.batch_size in THROUGHPUT_BATCHES), key=lambda p: p.throughput)
        b1 = min(single, key=lambda p: p.p50_ms) if single else None
        verdict = next((v for v in verification.values() if v["runtime"] == best.runtime
                        and v["artifact"] == f"{best.format}/{best.precision}"
                        and v["judged_as"] == best.judged_as), {})
        out.append({"configuration": name, "batch1_p50_ms": b1.p50_ms if b1 else None,
                    "batch1_label": b1.label if b1 else None, "best_throughput": best.throughput,
                    "best_label": best.label, "best_batch": best.batch_size, "verified": best.verified,
                    "judged_as": best.judged_as, "agreement": verdict.get("agreement"),
                    "max_abs_diff": verdict.get("max_abs_diff")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", default="exported")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per benchmark point")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/peers.json")
    args = parser.parse_args()

    report = bench(BenchConfig(
        artifacts=args.artifacts, data_dir=args.data_dir, runtimes=("onnxruntime", "openvino", "opencv"),
        formats=("onnx",), precisions=("fp32", "int8"), batch_sizes=(1, *THROUGHPUT_BATCHES),
        concurrency=(1, 2), optimizations=("all", "extended"), seconds=args.seconds, rounds=args.rounds,
        matmul_peak=True))
    table = rows(report.points, report.verification)
    base = next(r for r in table if r["configuration"] == "onnxruntime onnx/fp32")
    for r in table:
        r["batch1_p50_vs_ort_fp32"] = r["batch1_p50_ms"] / base["batch1_p50_ms"] if r["batch1_p50_ms"] else None
        r["throughput_vs_ort_fp32"] = r["best_throughput"] / base["best_throughput"]
    result = {"benchmark": "peers", "rows": table, "fastest": report.fastest, "targets": report.targets,
              "bench_report": report.to_json()}
    fileio.write_json(args.out, result)
    for r in table:
        print(f"{r['configuration']:32s} batch-1 p50 {r['batch1_p50_ms'] or float('nan'):.3f} ms, best "
              f"{r['best_throughput']:,.0f} img/s (x{r['throughput_vs_ort_fp32']:.2f}), verified {r['verified']}")


if __name__ == "__main__":
    main()
