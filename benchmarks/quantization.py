"""Which int8 graph to ship: ONNX Runtime static-quantization variants, their structure, accuracy and speed.

One process exports the checkpoint's fp32 and int8 .onnx with `toolkit export` (which picks its int8 candidate on
this CPU and records why), then builds the other variants with the same calibration images:

- `before-rewrites`: the fp32 graph as exported (MaxPool before ReLU) quantized as is, the int8 file shipped
  before the graph rewrites;
- the export's candidates, `int8-all-convs`, `fp32-first-conv`, `fp32-first-conv-padded` and
  `int8-space-to-depth` (QDQ, u8 activations, per-tensor);
- the chosen candidate with per-channel weights, with s8 activations, and in QOperator form.

For each it counts the Transpose and DequantizeLinear nodes left in ONNX Runtime's optimized graph (where the
layout conversions show), scores all 10,000 test images, and times it against the fp32 file in the same process,
with one intra-op thread and with ONNX Runtime's default (one per core):
per batch size, every model runs in turn (alternating order) for --rounds rounds after a warm-up, and the speed-up
is the median over rounds of fp32 time / int8 time (`speedup_of_fastest_rounds`: fastest fp32 round / fastest int8
round). `best_throughput_speedup` compares the best images/s over the batch sizes of each, as the bench tables do.
`shipped` is the exported file, the same graph as the candidate it names: the gap between the two shows the noise.

    python benchmarks/quantization.py --checkpoint runs/convnet-fast-seed0/checkpoint.pt --data-dir data
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from toolkit import fileio, sysinfo
from toolkit.data import load_split
from toolkit.export import ExportConfig, export
from toolkit.exporters import ExportContext, int8
from toolkit.preprocess import MEAN, STD, normalize

THREADS = (1, 0)  # intra-op threads: one, and ONNX Runtime's default (one per core)
THREAD_LABELS = {1: "1 thread", 0: "default threads"}
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16")


def optimized_ops(path: Path) -> list[str]:
    """The op types of ONNX Runtime's optimized graph of `path` (CPU, all optimizations)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def build_variants(config: ExportConfig, fp32_model, chosen: str, out: Path) -> dict[str, dict]:
    """Write every variant's int8 file into `out`; {name: {path, settings}}."""
    ctx = ExportContext("", "", {})
    calib = int8.calibration_set(config, ctx)
    cands = int8.candidates(fp32_model)
    plan = {"before-rewrites": (config, fp32_model, [], [])}
    for name, candidate in cands.items():
        plan[name] = (config, *candidate)
    plan[f"{chosen}+per-channel"] = (replace(config, per_channel=True), *cands[chosen])
    plan[f"{chosen}+s8-activations"] = (replace(config, quant_activation="s8"), *cands[chosen])
    plan[f"{chosen}+qoperator"] = (replace(config, quant_format="qoperator"), *cands[chosen])
    variants = {}
    for name, (options, graph, fp32_nodes, rewrites) in plan.items():
        path = out / f"{name}.onnx"
        onnx.save(int8.quantize_candidate(graph, fp32_nodes, calib, options, out), str(path))
        variants[name] = {"path": path, "settings": {
            "quant_format": options.quant_format, "activations": options.quant_activation, "weights": "s8",
            "per_channel": options.per_channel, "fp32_nodes": fp32_nodes, "graph_rewrites": rewrites}}
    return variants


def accuracy_on(session, images: np.ndarray, labels: np.ndarray) -> float:
    name = session.get_inputs()[0].name
    out = np.concatenate([session.run(None, {name: images[i:i + 1000]})[0] for i in range(0, len(images), 1000)])
    return 100.0 * float((out.argmax(1) == labels).mean())


def time_all(sessions: dict, images: np.ndarray, batches: list[int], rounds: int) -> dict[str, dict]:
    """{model: {batch: [seconds per call, one per round]}}, every model timed in turn within each round."""
    names = list(sessions)
    input_name = sessions[names[0]].get_inputs()[0].name
    seconds = {n: {b: [] for b in batches} for n in names}
    for b in batches:
        x = np.ascontiguousarray(images[:b])
        calls = max(2, 512 // b)
        for session in sessions.values():
            for _ in range(3):
                session.run(None, {input_name: x})
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                t0 = time.perf_counter()
                for _ in range(calls):
                    sessions[name].run(None, {input_name: x})
                seconds[name][b].append((time.perf_counter() - t0) / calls)
    return seconds


def summarize(seconds: dict, name: str, batches: list[int]) -> dict:
    """Per batch: median ms and images/s, the median paired speed-up over fp32 and that of the fastest rounds
    (on a shared machine, other work only ever adds time, so the fastest round of each is the least disturbed)."""
    per_batch = {}
    for b in batches:
        mine, base = seconds[name][b], seconds["fp32"][b]
        per_batch[str(b)] = {"median_ms": 1000 * statistics.median(mine), "min_ms": 1000 * min(mine),
                             "images_per_s": b / statistics.median(mine),
                             "speedup_vs_fp32": statistics.median(f / m for f, m in zip(base, mine)),
                             "speedup_of_fastest_rounds": min(base) / min(mine)}
    best = max(per_batch.values(), key=lambda p: p["images_per_s"])["images_per_s"]
    best_fp32 = max(b / statistics.median(seconds["fp32"][b]) for b in batches)
    return {"batches": per_batch, "best_images_per_s": best, "best_throughput_speedup": best / best_fp32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/convnet-fast-seed0/checkpoint.pt")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/quantization.json")
    args = parser.parse_args()

    import onnxruntime as ort

    batches = [int(b) for b in args.batch_sizes.split(",")]
    images, labels = load_split(args.data_dir, "test")
    x = normalize(images, MEAN, STD)
    with tempfile.TemporaryDirectory() as tmp:
        config = ExportConfig(checkpoint=args.checkpoint, out_dir=str(Path(tmp) / "exported"), data_dir=args.data_dir)
        result = export(config, [("onnx", "fp32"), ("onnx", "int8")])
        shipped = next(a for a in result.artifacts if a.precision == "int8")
        fp32_path = Path(config.out_dir) / "model.onnx"
        variants = build_variants(config, onnx.load(str(fp32_path)), shipped.settings["variant"], Path(tmp))
        variants = {"shipped": {"path": Path(shipped.path), "settings": shipped.settings}, **variants}
        fp32_accuracy, timing = None, {}
        for threads in THREADS:  # one set of sessions at a time, so the two never compete for the cores
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = threads
            sessions = {n: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                        for n, p in [("fp32", fp32_path), *((n, v["path"]) for n, v in variants.items())]}
            if fp32_accuracy is None:
                fp32_accuracy = accuracy_on(sessions["fp32"], x, labels)
                accuracies = {n: accuracy_on(sessions[n], x, labels) for n in variants}
            seconds = time_all(sessions, x, batches, args.rounds)
            timing[THREAD_LABELS[threads]] = {n: summarize(seconds, n, batches) for n in variants}
        rows = []
        for name, v in variants.items():
            ops = optimized_ops(v["path"])
            accuracy = accuracies[name]
            row = {"variant": name, "settings": v["settings"], "test_accuracy": accuracy,
                   "accuracy_delta": accuracy - fp32_accuracy, "holds_accuracy": accuracy >= fp32_accuracy - 0.3,
                   "optimized_graph": {"transpose": ops.count("Transpose"),
                                       "dequantize_linear": ops.count("DequantizeLinear"), "ops": ops},
                   "timing": {label: t[name] for label, t in timing.items()}}
            rows.append(row)
            speed = "  ".join(f"{label}: x{t['best_throughput_speedup']:.2f} best img/s, " +
                              " ".join(f"b{b} x{t['batches'][str(b)]['speedup_vs_fp32']:.2f}" for b in batches)
                              for label, t in row["timing"].items())
            print(f"{name:30s} acc {accuracy:.2f} ({row['accuracy_delta']:+.2f})  Transpose {ops.count('Transpose')} "
                  f"DQ {ops.count('DequantizeLinear')}  {speed}", flush=True)
    flags = sysinfo.cpu_flags()
    machine = {**sysinfo.machine(), "int8_flags": [f for f in INT8_FLAGS if f in flags]}
    fileio.write_json(args.out, {
        "benchmark": "quantization", "machine": machine,
        "versions": sysinfo.versions("onnx", "onnxruntime", "onnxruntime-gpu"),
        "checkpoint": args.checkpoint,
        "settings": {"batch_sizes": batches, "rounds": args.rounds, "threads": list(THREAD_LABELS.values()),
                     "graph_optimization": "all", "speedup": "median over rounds of fp32 s/call / int8 s/call"},
        "fp32_test_accuracy": fp32_accuracy,
        "shipped": {k: shipped.settings[k] for k in ("variant", "chosen_by", "reason")},
        "variants": rows})
    print(f"shipped: {shipped.settings['variant']} ({shipped.settings['reason']})\nwrote {args.out}")


if __name__ == "__main__":
    main()
