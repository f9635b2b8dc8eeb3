"""Which exported file runs in which engine: verify's judgement of every artifact in every runtime the toolkit has.

Runs `toolkit verify --runtime all` (all 10,000 test images at full batch and one at a time, the default
tolerances per precision) on ARTIFACTS_DIR, and lays its results out as an engine x file grid: each runtime (and
each compute mode it offers) against each file of the manifest. A cell says whether verify passed the file
there, or why there is no result: the runtime cannot open that format, is not installed here, or offers that
mode for fp32 files only. The formats and runtimes come from the toolkit's own tables, so a new format or
runtime shows up without changing this script.

    python benchmarks/compat.py exported data     # writes benchmarks/results/compat.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from toolkit import fileio, sysinfo
from toolkit.artifacts import read_manifest
from toolkit.runners import PYTORCH, RUNTIMES

RESULT = Path(__file__).parent / "results" / "compat.json"


def lscpu_model() -> str:
    """The CPU's model name as `lscpu` gives it (the kernel's /proc/cpuinfo where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return sysinfo.cpu_model()


def run_verify(artifacts: str, data_dir: str, batch1_images: int) -> tuple[dict[str, Any], float]:
    """verify's JSON report for every artifact in every installed runtime, and its wall time in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "verify.json"
        command = [sys.executable, "-m", "toolkit", "verify", "--artifacts", artifacts, "--data-dir", data_dir,
                   "--runtime", "all", "--batch1-images", str(batch1_images), "--json", str(report)]
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode not in (0, 1) or not report.is_file():  # 1: some cell failed, which the grid shows
            sys.exit(f"toolkit verify failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        return json.loads(report.read_text()), seconds


def _cell(spec, mode: str, artifact, by_key: dict, skipped: dict[str, str]) -> dict[str, Any]:
    cell: dict[str, Any] = {"runtime": spec.name, "mode": mode, "artifact": artifact.file}
    if not spec.opens(artifact.format, artifact.precision):
        return {**cell, "status": "cannot open", "why": f"{spec.name} does not open {artifact.label} files"}
    if spec.name in skipped:
        return {**cell, "status": "not run", "why": skipped[spec.name]}
    result = by_key.get((spec.name, mode, artifact.file))
    if result is None:
        return {**cell, "status": "not offered", "why": f"mode {mode} applies to fp32 files only"}
    return {**cell, "status": "pass" if result["passed"] else "fail", "why": "; ".join(result["failures"]),
            **{k: result[k] for k in ("judged_as", "n", "agreement", "accuracy", "accuracy_delta", "max_abs_diff",
                                      "batch1_n", "batch1_max_diff")}}


def grid(report: dict[str, Any], artifacts: list) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(engines, cells): one engine per runtime and compute mode, one cell per engine and artifact."""
    by_key = {(r["runtime"], r["mode"], r["artifact"]): r for r in report["results"]}
    engines, cells = [], []
    for spec in RUNTIMES.values():
        if PYTORCH in spec.formats:  # the eager baseline runs the checkpoint, not a file
            continue
        for mode in spec.modes:
            engines.append({"runtime": spec.name, "mode": mode, "description": spec.description,
                            "version": report["runtimes"].get(spec.name) or spec.version()})
            cells += [_cell(spec, mode, a, by_key, report["skipped"]) for a in artifacts]
    return engines, cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", help="folder with manifest.json (e.g. exported)")
    parser.add_argument("data_dir", help="folder with MNIST (e.g. data)")
    parser.add_argument("--batch1-images", type=int, default=10_000, help="test images also run one at a time")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if not 0 <= args.batch1_images <= 10_000:
        parser.error("--batch1-images must be between 0 and 10000")
    artifacts = read_manifest(args.artifacts)
    report, seconds = run_verify(args.artifacts, args.data_dir, args.batch1_images)
    engines, cells = grid(report, artifacts)
    result = {
        "what": "verify's judgement of every artifact in every runtime the toolkit has (toolkit verify --runtime all)",
        "machine": {**sysinfo.machine(), "cpu": lscpu_model()},
        "settings": {"batch1_images": args.batch1_images, "tolerances": report["tolerances"]},
        "reference": report["reference"], "n": report["n"], "verify_seconds": round(seconds, 1),
        "files": [{"file": a.file, "format": a.format, "precision": a.precision,
                   "parts": [p.file for p in a.parts], "bytes": a.total_bytes} for a in artifacts],
        "engines": engines, "cells": cells, "verify": report,
    }
    fileio.write_json(args.out, result)
    passed = sum(c["status"] == "pass" for c in cells)
    print(f"wrote {args.out}: {passed} of {len(cells)} cells pass, in {seconds:.0f} s on {result['machine']['cpu']}")


if __name__ == "__main__":
    main()
