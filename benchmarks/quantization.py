"""Which int8 settings to ship: every ONNX Runtime static-quantization variant, its accuracy and its speed.

For each variant (QDQ or QOperator graph, u8 or s8 activations, per-channel or per-tensor weights) this
exports an int8 model beside an fp32 one from the same checkpoint, verifies the int8 model on all 10,000
test images, and benchmarks both in one `toolkit bench` run, so the speed-up is a ratio measured side by side
(best int8 against best fp32 over batch 64/256, graph optimization all/extended, 1 or 2 concurrent calls).
The variants run --repeats times, in alternating order; a variant is ranked by its median speed-up.

    python benchmarks/quantization.py --checkpoint runs/convnet-fast-seed0/checkpoint.pt --data-dir data
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile

from toolkit import fileio, sysinfo
from toolkit.bench import BenchConfig, bench
from toolkit.export import ExportConfig, export
from toolkit.verify import VerifyConfig, verify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/convnet-fast-seed0/checkpoint.pt")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seconds", type=float, default=1.5, help="time budget per benchmark point")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/quantization.json")
    args = parser.parse_args()

    grid = list(itertools.product(("qdq", "qoperator"), ("u8", "s8"), (True, False)))
    order = [v for r in range(args.repeats) for v in (grid if r % 2 == 0 else grid[::-1])]
    measured = []
    for quant_format, activation, per_channel in order:
        with tempfile.TemporaryDirectory() as tmp:
            config = ExportConfig(checkpoint=args.checkpoint, out_dir=tmp, data_dir=args.data_dir,
                                  quant_format=quant_format, quant_activation=activation, per_channel=per_channel)
            export(config, [("onnx", "fp32"), ("onnx", "int8")])
            check = verify(VerifyConfig(artifacts=tmp, data_dir=args.data_dir, precisions=("int8",))).results[0]
            report = bench(BenchConfig(artifacts=tmp, data_dir=args.data_dir, formats=("onnx",),
                                       runtimes=("onnxruntime",),
                                       batch_sizes=(64, 256), concurrency=(1, 2), optimizations=("all", "extended"),
                                       sweep=True, seconds=args.seconds, rounds=4, matmul_peak=False))
        best = {p: max((pt for pt in report.points if pt.precision == p), key=lambda pt: pt.throughput)
                for p in ("fp32", "int8")}
        row = {"quant_format": quant_format, "activations": activation, "weights": "s8",
               "per_channel": per_channel, "accuracy": check.accuracy, "accuracy_delta": check.accuracy_delta,
               "agreement": check.agreement, "passed": check.passed,
               "int8_best_throughput": best["int8"].throughput, "int8_best_at": best["int8"].label,
               "int8_best_batch": best["int8"].batch_size,
               "fp32_best_throughput": best["fp32"].throughput, "fp32_best_at": best["fp32"].label,
               "speedup_vs_fp32": best["int8"].throughput / best["fp32"].throughput,
               "points": [p.__dict__ for p in report.points]}
        measured.append(row)
        print(f"{quant_format:9s} act={activation} per_channel={per_channel!s:5s} accuracy {check.accuracy:.2f} "
              f"({check.accuracy_delta:+.2f}) int8 {row['int8_best_throughput']:,.0f} img/s, "
              f"x{row['speedup_vs_fp32']:.2f} vs fp32", flush=True)

    variants = []
    for quant_format, activation, per_channel in grid:
        runs = [m for m in measured if (m["quant_format"], m["activations"], m["per_channel"])
                == (quant_format, activation, per_channel)]
        variants.append({**{k: runs[0][k] for k in ("quant_format", "activations", "weights", "per_channel",
                                                      "accuracy", "accuracy_delta", "agreement", "passed")},
                         "speedup_vs_fp32": statistics.median(r["speedup_vs_fp32"] for r in runs),
                         "int8_best_throughput": statistics.median(r["int8_best_throughput"] for r in runs),
                         "speedups": [r["speedup_vs_fp32"] for r in runs], "runs": runs})
    holding = [v for v in variants if v["passed"]]
    fastest = max(holding, key=lambda v: v["speedup_vs_fp32"]) if holding else None
    fileio.write_json(args.out, {
        "benchmark": "quantization", "machine": sysinfo.machine(), "versions": sysinfo.versions(),
        "checkpoint": args.checkpoint,
        "fastest_holding_accuracy": {k: fastest[k] for k in ("quant_format", "activations", "per_channel",
                                                             "int8_best_throughput", "speedup_vs_fp32")}
        if fastest else None,
        "variants": variants})
    if fastest:
        print(f"fastest that holds accuracy: {fastest['quant_format']} act={fastest['activations']} "
              f"per_channel={fastest['per_channel']}")


if __name__ == "__main__":
    main()
