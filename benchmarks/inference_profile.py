"""Where inference time goes, per operator and per layer: ONNX Runtime's profiler (at its default optimization
level, all, at its default threads and on one thread, and at extended, which leaves out the NCHWc layout rewrite
and which bench's search may pick instead) and OpenVINO's performance counters on the fp32 and int8 .onnx files,
and OpenVINO's on its int8 IR, at batch 1, 64 and 256, on real test images.

The one-thread rows are the regime of bench's most-throughput configurations on a CPU: several calls in flight,
each on its own slice of the CPUs (one thread on two CPUs). On more threads a call's time also holds the threads
waiting on each other, which weighs most on the shortest operators (layout reorders, transposes).

    python benchmarks/inference_profile.py --artifacts exported --data-dir data \
        --out benchmarks/results/inference_profile.json

Each (engine, file, batch) runs `--calls` timed calls after a warm-up; the JSON keeps, per operator type (and the
kernel that ran it) and per layer (graph node), its time per call and share, with the machine it ran on.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from toolkit import fileio, sysinfo
from toolkit.data import load_split
from toolkit.model import MODELS, layer_flops
from toolkit.preprocess import MEAN, STD, normalize

# (precision, file, the engines that profile it); ONNX Runtime does not read OpenVINO IR
BOTH = ("onnxruntime", "openvino")
FILES = [("fp32", "model.onnx", BOTH), ("int8", "model.int8.onnx", BOTH), ("int8", "model.int8.xml", ("openvino",))]
LAYERS = 6  # the slowest layers kept per run


def _shares(totals: dict[str, float], calls: int) -> list[dict]:
    whole = sum(totals.values()) or 1.0
    return [{"op": op, "us_per_call": round(us / calls, 2), "share": round(us / whole, 4)}
            for op, us in sorted(totals.items(), key=lambda kv: -kv[1])]


def profile_ort(path: Path, x: np.ndarray, calls: int, warmup: int, level: str = "all",
                threads: int | None = None) -> dict:
    """ONNX Runtime's own profile of `calls` runs at optimization `level` (all or extended) on `threads` intra-op
    threads (None: its default): microseconds per operator type (and execution provider)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level.upper()}")
        if threads:
            options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(warmup):
            session.run(None, {name: x})
        t0 = time.perf_counter()
        for _ in range(calls):
            session.run(None, {name: x})
        wall = time.perf_counter() - t0
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    layers: dict[str, float] = defaultdict(float)
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    for e in nodes[-calls * len({n["name"] for n in nodes}):]:  # the timed calls only, not the warm-up
        totals[e["args"]["op_name"]] += e["dur"]
        layers[f"{e['name'].removesuffix('_kernel_time')} ({e['args']['op_name']})"] += e["dur"]
    return {"wall_ms_per_call": round(1000 * wall / calls, 4), "ops": _shares(totals, calls),
            "layers": _shares(layers, calls)[:LAYERS]}


def profile_openvino(path: Path, x: np.ndarray, calls: int, warmup: int) -> dict:
    """OpenVINO's performance counters summed over `calls` runs: microseconds per layer type and kernel."""
    import openvino as ov

    core = ov.Core()
    # f32 as the toolkit's f32 mode sets it: OpenVINO's own default on a CPU with bf16 is bf16
    compiled = core.compile_model(str(path), "CPU", {"PERF_COUNT": "YES", "PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    for _ in range(warmup):
        request.infer({0: x})
    totals: dict[str, float] = defaultdict(float)
    layers: dict[str, float] = defaultdict(float)
    t0 = time.perf_counter()
    for _ in range(calls):
        request.infer({0: x})
        for info in request.get_profiling_info():
            if info.real_time.total_seconds() > 0:
                us = info.real_time.total_seconds() * 1e6
                totals[f"{info.node_type} ({info.exec_type})"] += us
                layers[f"{info.node_name} ({info.node_type}, {info.exec_type})"] += us
    wall = time.perf_counter() - t0  # includes reading the counters
    return {"wall_ms_per_call_with_counters": round(1000 * wall / calls, 4), "ops": _shares(totals, calls),
            "layers": _shares(layers, calls)[:LAYERS]}


def _manifest(artifacts: Path) -> dict:
    """The export's manifest.json; {} where there is none."""
    path = artifacts / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _layer_flops(manifest: dict) -> dict[str, int]:
    """FLOPs per image of each layer of the exported model (a built-in one, named by the manifest); {} otherwise."""
    model = manifest.get("model", {})
    if model.get("name") not in MODELS or model.get("args"):
        return {}
    return layer_flops(MODELS[model["name"]]())


def _export_settings(manifest: dict, file: str) -> dict:
    """What export recorded of how it built `file` (its manifest entry's settings); {} without one."""
    return next((a.get("settings", {}) for a in manifest.get("artifacts", []) if a["file"] == file), {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", default="exported")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--calls", type=int, default=200, help="timed calls at batch 1 (fewer at larger batches)")
    parser.add_argument("--out", default="benchmarks/results/inference_profile.json")
    args = parser.parse_args()

    images, _ = load_split(args.data_dir, "test")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    engines = {"onnxruntime": profile_ort, "onnxruntime 1 thread": functools.partial(profile_ort, threads=1),
               "onnxruntime opt=extended": functools.partial(profile_ort, level="extended")}
    try:
        import openvino  # noqa: F401

        engines["openvino"] = profile_openvino
    except ImportError:
        pass
    runs = []
    for precision, file, by in FILES:
        if not (Path(args.artifacts) / file).is_file():
            print(f"{file}: not in {args.artifacts}, skipped", flush=True)
            continue
        for batch in batches:
            x = np.ascontiguousarray(normalize(images[:batch], MEAN, STD))
            calls = max(10, args.calls // batch) if batch > 1 else args.calls
            for engine, profile in ((e, p) for e, p in engines.items() if e.split()[0] in by):
                result = profile(Path(args.artifacts) / file, x, calls, warmup=max(3, calls // 10))
                runs.append({"engine": engine, "file": file, "precision": precision, "batch_size": batch,
                             "calls": calls, **result})
                top = ", ".join(f"{o['op']} {o['share']:.0%}" for o in result["ops"][:4])
                print(f"{engine:24s} {precision} batch {batch:4d}: {top}", flush=True)
    manifest = _manifest(Path(args.artifacts))
    int8_settings = _export_settings(manifest, "model.int8.onnx")
    ir_settings = _export_settings(manifest, "model.int8.xml")
    fileio.write_json(Path(args.out), {
        "benchmark": "inference_profile", "machine": sysinfo.machine(),
        "versions": sysinfo.versions("onnxruntime", "onnxruntime-gpu", "openvino"),
        "settings": {"batch_sizes": batches, "calls_at_batch_1": args.calls,
                     "threads": "each engine's default; one intra-op thread where the engine says so",
                     "onnxruntime": "optimization level all (its default), and extended where the engine says so",
                     "openvino": "CPU, PERFORMANCE_HINT latency, INFERENCE_PRECISION_HINT f32",
                     "int8_variant": {k: int8_settings[k] for k in ("variant", "graph_rewrites", "fp32_nodes",
                                                                     "reason") if k in int8_settings},
                     "ir_int8": {k: ir_settings[k] for k in ("quantizer", "preset", "graph_rewrites")
                                 if k in ir_settings}},
        "layer_flops_per_image": _layer_flops(manifest), "runs": runs})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
