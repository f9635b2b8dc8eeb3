"""What bf16 autocast costs a training step on a CPU that only emulates bf16, against float32.

oneDNN reports bf16 support on every AVX-512 CPU; without AVX512-BF16 or AMX (Ice Lake, Cascade Lake, Skylake
servers) it emulates it. This times the `fast` recipe's step (benchmarks/train_memory.py's child process, freed
memory kept as `toolkit train` does) in bf16 and in float32, first with oneDNN using everything this CPU has,
then capped at AVX512_CORE_VNNI (Ice Lake's instruction sets, by oneDNN's ONEDNN_MAX_CPU_ISA), alternated
process by process. On a CPU with AVX512-BF16 the first pair is the native bf16 gain, the second what an Ice
Lake's emulation costs on the same cores.

    python benchmarks/bf16_emulation.py --data-dir data --out benchmarks/results/bf16_emulation.json
"""

from __future__ import annotations

import argparse
import os
import statistics

from train_memory import measure

from toolkit import fileio, sysinfo
from toolkit.recipes import make_config

ISAS = {"all of this CPU's": {}, "AVX512_CORE_VNNI (Ice Lake)": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}}
COMPUTE = {"bf16 autocast": True, "float32": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--processes", type=int, default=3, help="processes per setting (1-50)")
    parser.add_argument("--out", default="benchmarks/results/bf16_emulation.json")
    args = parser.parse_args()
    if not 1 <= args.processes <= 50:
        parser.error("--processes must be between 1 and 50")
    load_before = os.getloadavg()
    runs: dict = {isa: {c: [] for c in COMPUTE} for isa in ISAS}
    for _ in range(args.processes):
        for isa, env in ISAS.items():
            for compute, bf16 in COMPUTE.items():
                runs[isa][compute].append(measure(args.data_dir, True, bf16, env)["ms_per_step"])
    summary = {}
    for isa, by_compute in runs.items():
        ms = {c: statistics.median(v) for c, v in by_compute.items()}
        summary[isa] = {"median_ms_per_step": ms, "bf16_over_float32": ms["bf16 autocast"] / ms["float32"]}
        print(f"oneDNN with {isa} instruction sets: bf16 {ms['bf16 autocast']:.1f} ms/step, "
              f"float32 {ms['float32']:.1f} ms/step: bf16 takes {summary[isa]['bf16_over_float32']:.2f}x")
    fileio.write_json(args.out, {
        "benchmark": "bf16_emulation", "recipe": "fast", "batch_size": make_config("fast").batch_size,
        "machine": sysinfo.machine(),
        "versions": sysinfo.versions("torch"), "processes": args.processes,
        "load_average_1_5_15_min": {"before": load_before, "after": os.getloadavg()},
        "summary": summary, "ms_per_step_each_process": runs})


if __name__ == "__main__":
    main()
