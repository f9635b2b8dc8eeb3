"""The torch.export (pt2) and AOTInductor (aoti) formats beside ONNX, as a user runs them (a fresh process for
each command): export time per format (AOTInductor's with a fresh compiler cache), `toolkit verify` on all
10,000 images at full batch and one at a time, a short interleaved `toolkit bench` of the three fp32 files,
and how long the C++ example takes to build.

    python benchmarks/torch_export.py --checkpoint runs/.../checkpoint.pt --data-dir data \
        --out benchmarks/results/torch_export.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from toolkit import fileio, sysinfo

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, args[:4]))} failed: {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seconds", type=float, default=1.0, help="bench time per point")
    parser.add_argument("--out", default="benchmarks/results/torch_export.json")
    args = parser.parse_args()

    toolkit = [sys.executable, "-m", "toolkit"]
    with tempfile.TemporaryDirectory() as tmp:
        out, cache = Path(tmp) / "exported", Path(tmp) / "inductor-cache"
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}  # nothing compiled before counts
        export_wall = {fmt: _run(*toolkit, "export", "--checkpoint", args.checkpoint, "--format", fmt, "--out", out,
                                 "--data-dir", args.data_dir, env=env) for fmt in ("onnx", "pt2", "aoti")}
        manifest = json.loads((out / "manifest.json").read_text())
        verify_wall = _run(*toolkit, "verify", "--artifacts", out, "--data-dir", args.data_dir,
                           "--batch1-images", "10000", "--json", Path(tmp) / "v.json")
        bench_wall = _run(*toolkit, "bench", "--artifacts", out, "--data-dir", args.data_dir,
                          "--runtime", "onnxruntime,torch-export,aoti", "--precision", "fp32", "--format",
                          "onnx,pt2,aoti", "--batch-sizes", "1,256", "--seconds", str(args.seconds), "--rounds", "3",
                          "--no-matmul-peak", "--json", Path(tmp) / "b.json")
        build_wall = _run("sh", REPO / "examples" / "cpp" / "build.sh", Path(tmp) / "classify",
                          env={**os.environ, "PYTHON": sys.executable})
        verify = json.loads((Path(tmp) / "v.json").read_text())
        bench = json.loads((Path(tmp) / "b.json").read_text())
    result = {
        "benchmark": "torch_export", "machine": sysinfo.machine(),
        "versions": sysinfo.versions("torch", "onnxruntime", "onnxruntime-gpu"),
        "export_wall_seconds": export_wall,
        "export_seconds": {a["format"]: a["export_seconds"] for a in manifest["artifacts"]},
        "size_bytes": {a["format"]: a["size_bytes"] for a in manifest["artifacts"]},
        "verify_wall_seconds": verify_wall, "verify": verify["results"],
        "bench_wall_seconds": bench_wall,
        "bench": [{k: p[k] for k in ("runtime", "format", "batch_size", "p50_ms", "p99_ms", "throughput")}
                  for p in bench["points"]],
        "cpp_build_wall_seconds": build_wall,
    }
    fileio.write_json(args.out, result)
    for p in result["bench"]:
        print(f"{p['runtime']:>13} {p['format']:>5} batch {p['batch_size']:>4}: p50 {p['p50_ms']:.3f} ms, "
              f"{p['throughput']:,.0f} images/s")
    print(f"export {export_wall}; verify {verify_wall:.1f} s; C++ build {build_wall:.1f} s")


if __name__ == "__main__":
    main()
