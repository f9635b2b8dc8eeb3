"""How bench keeps OpenVINO's throughput-hint queue busy: drained after every call, or kept fed.

Bench's throughput call used to start OPTIMAL_NUMBER_OF_INFER_REQUESTS requests and wait for all of them, so
every call ended with the streams draining one by one. It now keeps a queue of QUEUE_DEPTH times that many
requests fed: a call starts the optimal number and returns (a start waits for a free request), and the block
waits for the last ones at its end, inside its wall time. This times, on each OpenVINO file of an export folder
(the IRs and the .onnx files OpenVINO reads; f32 precision) at two batch sizes, the old way, the fed queue 1, 2
and 3 times the optimal number deep, and a queue twice as deep whose calls each start all of it, alternated in
rounds on real test images. The result is the median images/s of each and its gain over the old way.

    python benchmarks/openvino_requests.py --artifacts exported --data-dir data \
        --out benchmarks/results/openvino_requests.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from toolkit import data as mnist
from toolkit import fileio, sysinfo
from toolkit.preprocess import MEAN, STD, normalize
from toolkit.runners.base import RunnerOptions
from toolkit.runners.openvino import QUEUE_DEPTH, compile_model, optimal_requests, read_ir, read_onnx, timed_in_flight

FILES = ("model.xml", "model.int8.xml", "model.onnx", "model.int8.onnx")
# name -> (whether each call waits for its requests, requests each call starts and queue depth, both as multiples
# of the optimal number)
WAYS = {"drained after every call, 1x optimal": (True, 1, 1), "fed, 1x optimal queued": (False, 1, 1),
        "fed, 2x optimal queued": (False, 1, 2), "fed, 3x optimal queued": (False, 1, 3),
        "fed, 2x optimal queued, all started by each call": (False, 2, 1)}
OLD = "drained after every call, 1x optimal"
BATCH_SIZES = (64, 256)


def load(folder: Path, name: str):
    path = folder / name
    if name.endswith(".xml"):
        return read_ir(path.read_bytes(), path.with_suffix(".bin").read_bytes(), name)
    return read_onnx(path.read_bytes(), name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", default="exported")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--rounds", type=int, default=5, help="1-50")
    parser.add_argument("--seconds", type=float, default=0.5, help="per block, 0.05-10")
    parser.add_argument("--out", default="benchmarks/results/openvino_requests.json")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 50 or not 0.05 <= args.seconds <= 10:
        parser.error("--rounds must be 1-50 and --seconds 0.05-10")
    folder = Path(args.artifacts)
    images = normalize(mnist.load_split(args.data_dir, "test")[0], MEAN, STD)
    options = RunnerOptions(hint="throughput")
    compiled = {name: compile_model(load(folder, name), options, name) for name in FILES if (folder / name).exists()}
    optimal = {name: optimal_requests(c) for name, c in compiled.items()}
    rates: dict = {name: {bs: {w: [] for w in WAYS} for bs in BATCH_SIZES} for name in compiled}
    load_before = os.getloadavg()
    for rnd in range(args.rounds):
        for name, c in compiled.items():
            for bs in BATCH_SIZES:
                batches = [[np.ascontiguousarray(images[k * bs:(k + 1) * bs])] for k in range(8)]
                for way, (drained, per_call, depth) in WAYS.items():
                    n = per_call * optimal[name]
                    timed = timed_in_flight(c, batches, n, depth)
                    timed.call(0)  # warm
                    timed.drain()
                    calls, t0 = 0, time.perf_counter()
                    while time.perf_counter() - t0 < args.seconds:
                        timed.call(rnd + calls)
                        if drained:
                            timed.drain()
                        calls += 1
                    timed.drain()
                    rates[name][bs][way].append(calls * n * bs / (time.perf_counter() - t0))
    summary = {}
    for name, by_bs in rates.items():
        summary[name] = {"optimal_requests": optimal[name]}
        for bs, by_way in by_bs.items():
            med = {w: statistics.median(v) for w, v in by_way.items()}
            summary[name][f"batch {bs}"] = {w: {"images_per_s": med[w], "gain": med[w] / med[OLD]}
                                            for w in WAYS}
            print(f"{name} batch {bs}: " + ", ".join(f"{w} {med[w]:,.0f}/s (x{med[w] / med[OLD]:.2f})"
                                                      for w in WAYS))
    fileio.write_json(args.out, {
        "benchmark": "openvino_requests", "machine": sysinfo.machine(), "versions": sysinfo.versions("openvino"),
        "precision": "f32", "rounds": args.rounds, "seconds_per_block": args.seconds,
        "load_average_1_5_15_min": {"before": load_before, "after": os.getloadavg()},
        "queue_depth_now": QUEUE_DEPTH, "summary": summary, "images_per_s_each_round": rates})


if __name__ == "__main__":
    main()
