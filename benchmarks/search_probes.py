"""How steady the default bench's short search is, at more than one probe length.

`toolkit bench` without --sweep probes each group's settings briefly (toolkit/bench/tuning.py) and times the batch
ladder with the setting that won. On a shared machine a probe that is too short is won by noise, and the
figure the user reads (best images/s, the int8 / fp32 ratio) swings with it. This script runs the default bench
(every runtime installed, no verify, no matmul peak) `--repeats` times per probe share, the shares alternating
run by run so that drift in the machine's load falls on each alike, and records per run the setting each group
kept for throughput, ONNX Runtime's int8 probes, and the int8 / fp32 best images/s of ONNX Runtime (batch >= 64).

    python benchmarks/search_probes.py --artifacts exported --data-dir data --shares 0.25,0.5 --repeats 4 \
        --out benchmarks/results/search_probes.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter
from pathlib import Path

from toolkit import fileio, sysinfo
from toolkit.bench import BenchConfig, bench, tuning

INT8_GROUP = "onnxruntime onnx/int8 cpu f32"


def one_run(args: argparse.Namespace, share: float) -> dict:
    tuning.PROBE_SHARE = share  # the one knob under test; everything else is the default bench
    t0 = time.perf_counter()
    report = bench(BenchConfig(artifacts=args.artifacts, data_dir=args.data_dir, verify=False, matmul_peak=False))
    groups = report.search["groups"]
    best = {precision: max((p.throughput for p in report.points if p.runtime == "onnxruntime"
                            and p.format == "onnx" and p.precision == precision and p.batch_size >= 64), default=0.0)
            for precision in ("fp32", "int8")}
    return {"probe_share": share, "seconds": time.perf_counter() - t0,
            "throughput_choices": {name: g["throughput"]["setting"] for name, g in groups.items()},
            "ort_int8_probes": [p for p in groups.get(INT8_GROUP, {}).get("probes", []) if p["batch_size"] != 1],
            "ort_int8_over_fp32": best["int8"] / best["fp32"] if best["fp32"] else None}


def summary(runs: list[dict]) -> dict:
    """Per probe share: how often each group kept its most frequent setting, and the ratio's spread."""
    out = {}
    for share in sorted({r["probe_share"] for r in runs}):
        mine = [r for r in runs if r["probe_share"] == share]
        names = sorted({name for r in mine for name in r["throughput_choices"]})
        steady = {}
        for name in names:
            picks = Counter(r["throughput_choices"].get(name) for r in mine)
            steady[name] = picks.most_common(1)[0][1] / len(mine)
        ratios = [r["ort_int8_over_fp32"] for r in mine if r["ort_int8_over_fp32"]]
        out[str(share)] = {"runs": len(mine), "median_seconds": statistics.median(r["seconds"] for r in mine),
                           "groups_always_same_choice": sum(v == 1.0 for v in steady.values()),
                           "groups": len(steady), "same_choice_share_by_group": steady,
                           "ort_int8_choices": dict(Counter(r["throughput_choices"].get(INT8_GROUP) for r in mine)),
                           "ort_int8_over_fp32": {"min": min(ratios), "median": statistics.median(ratios),
                                                  "max": max(ratios)}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", default="exported")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--shares", default="0.25,0.5", help="probe shares of a point's time budget to compare")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/search_probes.json")
    args = parser.parse_args()
    shares = [float(s) for s in args.shares.split(",")]
    if not all(0 < s <= 1 for s in shares) or not 1 <= args.repeats <= 50:
        parser.error("shares must be in (0, 1] and repeats from 1 to 50")
    load_before = os.getloadavg()
    runs = []
    for i in range(args.repeats):
        for share in shares:
            runs.append(one_run(args, share))
            r = runs[-1]
            print(f"run {i + 1} share {share}: ort int8 kept {r['throughput_choices'].get(INT8_GROUP)}, "
                  f"int8/fp32 x{r['ort_int8_over_fp32']:.2f} ({r['seconds']:.0f} s)", flush=True)
    fileio.write_json(Path(args.out), {
        "benchmark": "search_probes", "machine": sysinfo.machine(),
        "versions": sysinfo.versions("onnxruntime-gpu", "onnxruntime", "openvino", "torch"),
        "load_average_1_5_15_min": {"before": load_before, "after": os.getloadavg()},
        "settings": {"bench": "defaults, verify off, matmul peak off", "shares": shares, "repeats": args.repeats,
                     "probe_rounds": tuning.PROBE_ROUNDS},
        "summary": summary(runs), "runs": runs})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
