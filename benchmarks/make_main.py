"""`make main` as a new user runs it once installed: each command of its recipe in turn, timed, with the lines it
printed, and what its bench covered (the summary's rows, every file and runtime it timed and verified).

    python benchmarks/make_main.py --out benchmarks/results/make_main.json
    python benchmarks/make_main.py --cpus 0 --out benchmarks/results/make_main_1core.json

Run from the checkout's root after the install (`make .venv/.installed-stamp`); it overwrites runs/ and
exported/ as `make main` does. `--cpus` pins every command to those CPUs (Linux), as on a machine with that many
cores: each stage then sizes its threads to them, as it would there. One exception: to calibrate the int8 file
(inside `export`), ONNX Runtime's `quantize_static` runs the model with its default thread pool, which ONNX
Runtime places on cores itself; `quantize_static` has no option to set those threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from toolkit import fileio, sysinfo

REPO = Path(__file__).resolve().parents[1]


def recipe() -> list[str]:
    """The shell commands `make main` runs, in order, as make itself prints them (-n: nothing is run)."""
    done = subprocess.run(["make", "-n", "main"], cwd=REPO, capture_output=True, text=True, check=True)
    # a command continued over lines (the CUDA check's if/else) is one command
    lines = [line.strip() for line in done.stdout.replace("\\\n", " ").splitlines() if line.strip()]
    if any("pip install" in line for line in lines):
        sys.exit("install first (make .venv/.installed-stamp): this times make main once installed")
    return lines


def _cpu_list(text: str) -> list[int]:
    try:
        cpus = sorted({int(c) for c in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of CPU numbers: {text!r}") from None
    available = os.sched_getaffinity(0)
    if not cpus or not set(cpus) <= available:
        raise argparse.ArgumentTypeError(f"CPUs {text} are not all among this process's {sorted(available)}")
    return cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/make_main.json")
    parser.add_argument("--cpus", type=_cpu_list, help="comma-separated CPU numbers to pin every command to")
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, args.cpus)  # the commands inherit it

    steps, t_start = [], time.perf_counter()
    for command in recipe():
        t0 = time.perf_counter()
        done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True)
        printed = (done.stdout + done.stderr).splitlines()
        steps.append({"command": command, "seconds": round(time.perf_counter() - t0, 1),
                      "exit_code": done.returncode, "lines_printed": len(printed)})
        print(f"{steps[-1]['seconds']:7.1f} s  {len(printed):4d} lines  {command[:90]}", flush=True)
        if done.returncode != 0:
            sys.exit(f"{command} failed:\n" + "\n".join(printed[-20:]))
    total = time.perf_counter() - t_start

    bench = json.loads((REPO / "exported" / "bench-cpu.json").read_text())
    verify = json.loads((REPO / "exported" / "verify.json").read_text())
    timed = sorted({(p["runtime"], p["format"], p["precision"]) for p in bench["points"]})
    result = {
        "benchmark": "make_main", "machine": sysinfo.machine(), "pinned_cpus": args.cpus,
        "versions": sysinfo.versions("torch", "onnxruntime", "onnxruntime-gpu"),
        "total_seconds": round(total, 1), "total_lines_printed": sum(s["lines_printed"] for s in steps),
        "steps": steps,
        "verify": {"passed": verify["passed"], "artifacts": len(verify["results"]),
                   "images": max(r["n"] for r in verify["results"])},
        "bench": {"summary_rows": len(bench["summary"]), "points": len(bench["points"]),
                  "timed": [{"runtime": r, "format": f, "precision": p} for r, f, p in timed],
                  "files_timed": sorted({f"{f}/{p}" for _, f, p in timed}), "skipped": bench.get("skipped", []),
                  "fastest": bench.get("fastest"),
                  # the project's goals for the ratios this one bench run measured (never printed by make main)
                  "targets": bench.get("targets", {})},
    }
    fileio.write_json(Path(args.out), result)
    print(f"make main: {total:.0f} s, {result['total_lines_printed']} lines; bench summary "
          f"{result['bench']['summary_rows']} rows over {len(result['bench']['files_timed'])} files; wrote {args.out}")


if __name__ == "__main__":
    main()
