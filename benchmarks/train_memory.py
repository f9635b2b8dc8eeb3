"""What keeping freed memory in the process buys a CPU training step (toolkit/heap.py).

Times the `fast` recipe's training step in fresh processes, with glibc's default allocator settings and with
`heap.keep_freed_memory()` (what `toolkit train` does on the CPU), alternated round by round so both see the
same machine load. Each process warms up for 20 steps, then times rounds of 40 steps and counts the minor page
faults they cost (getrusage). The result is the median ms per step and faults per step of each setting, per
compute mode (float32 always; bf16 too where this CPU has it natively), and their ratio.

    python benchmarks/train_memory.py --data-dir data --out benchmarks/results/train_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SETTINGS = ("glibc default", "freed memory kept")
WARMUP_STEPS, TIMED_STEPS, ROUNDS_PER_PROCESS = 20, 40, 3


def child(data_dir: str, keep: bool, bf16: bool) -> dict:
    """One process's measurement: median ms per step and minor faults per step over its rounds."""
    import torch

    from toolkit import data as mnist
    from toolkit import heap
    from toolkit.recipes import make_config
    from toolkit.train_step import Step, build_training

    if keep and not heap.keep_freed_memory():
        raise SystemExit("this C library has no mallopt: nothing to compare")
    torch.manual_seed(0)
    config = make_config("fast", bf16=bf16)
    images, labels = mnist.load_split(data_dir, "train")
    X, Y = mnist.to_tensor(images, "cpu", config.channels_last), torch.from_numpy(labels)
    steps = -(-len(X) // config.batch_size)
    model, optimizer, scheduler, average = build_training(config, "cpu", steps, X)
    step = Step(config, model, optimizer, scheduler, average, torch.Generator().manual_seed(1), bf16)
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    batches = iter(range(0, len(X) - config.batch_size, config.batch_size))

    def run(n: int) -> None:
        for _ in range(n):
            idx = order[next(batches):][:config.batch_size]
            step(X[idx], Y[idx])

    run(WARMUP_STEPS)
    ms, faults = [], []
    for _ in range(ROUNDS_PER_PROCESS):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        run(TIMED_STEPS)
        ms.append((time.perf_counter() - t0) / TIMED_STEPS * 1000)
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / TIMED_STEPS)
    return {"ms_per_step": statistics.median(ms), "faults_per_step": statistics.median(faults)}


def measure(data_dir: str, keep: bool, bf16: bool, env: dict[str, str] | None = None) -> dict:
    """`child` in a fresh process, with `env` added to this one's environment."""
    args = [sys.executable, __file__, "--child", "--data-dir", data_dir] + (["--keep"] if keep else []) \
        + (["--bf16"] if bf16 else [])
    done = subprocess.run(args, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})})
    if done.returncode:
        raise SystemExit(f"measuring process failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--processes", type=int, default=5, help="processes per setting and mode (1-50)")
    parser.add_argument("--out", default="benchmarks/results/train_memory.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.data_dir, args.keep, args.bf16)))
        return
    if not 1 <= args.processes <= 50:
        parser.error("--processes must be between 1 and 50")

    from toolkit import fileio, sysinfo
    from toolkit.recipes import make_config

    modes = {"float32": False} | ({"bf16": True} if sysinfo.native_bf16() else {})
    load_before = os.getloadavg()
    runs: dict = {mode: {s: [] for s in SETTINGS} for mode in modes}
    for _ in range(args.processes):
        for mode, bf16 in modes.items():
            for setting in SETTINGS:
                runs[mode][setting].append(measure(args.data_dir, setting == SETTINGS[1], bf16))
    summary = {}
    for mode, by_setting in runs.items():
        med = {s: {k: statistics.median(r[k] for r in rs) for k in ("ms_per_step", "faults_per_step")}
               for s, rs in by_setting.items()}
        summary[mode] = {"median": med, "speedup": med[SETTINGS[0]]["ms_per_step"] / med[SETTINGS[1]]["ms_per_step"]}
        print(f"{mode}: {med[SETTINGS[0]]['ms_per_step']:.1f} ms/step "
              f"({med[SETTINGS[0]]['faults_per_step']:.0f} faults) -> {med[SETTINGS[1]]['ms_per_step']:.1f} ms/step "
              f"({med[SETTINGS[1]]['faults_per_step']:.0f} faults): {summary[mode]['speedup']:.2f}x")
    fileio.write_json(args.out, {
        "benchmark": "train_memory", "recipe": "fast", "batch_size": make_config("fast").batch_size,
        "machine": sysinfo.machine(),
        "versions": sysinfo.versions("torch"), "warmup_steps": WARMUP_STEPS, "timed_steps": TIMED_STEPS,
        "rounds_per_process": ROUNDS_PER_PROCESS, "processes": args.processes,
        "load_average_1_5_15_min": {"before": load_before, "after": os.getloadavg()},
        "summary": summary, "runs": runs})


if __name__ == "__main__":
    main()
