"""Per-image inference time of model.app.onnx in a web page: ONNX Runtime Web (wasm) in headless Chromium.

Serves examples/web with `toolkit web`'s server, opens the page with 1 and then 2 wasm threads (checking that
the page is cross-origin isolated and got the threads it asked for), and times session.run inside the page
with performance.now(): one image per call (what drawing on the page does) and 1,000 images per call, on
real test images, after warm-up, as the median of repeated runs. Writes JSON with the machine, Chromium and
ONNX Runtime Web versions and the settings.

    python -m benchmarks.web_inference --exported exported --data-dir data --out benchmarks/results/web_inference.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from tests.chromium import Chromium, chromium_version, find_chromium
from tests.webserver import Background
from toolkit import fileio, sysinfo
from toolkit.data import load_split
from toolkit.web import DEFAULT_SITE, Mount, WebConfig

# Runs inside the page: `calls` session.run calls of `batch` images each, `repeats` times after `warmup`
# untimed calls; returns the per-image milliseconds of each repeat.
TIMING = """(async ({batch, calls, warmup, repeats}) => {
  const all = new Uint8Array(await (await fetch('/data/t10k-images.bin')).arrayBuffer());
  const n = all.length / 784;
  const slice = (i) => { const s = (i * batch) % (n - batch + 1); return all.subarray(s * 784, (s + batch) * 784); };
  for (let i = 0; i < warmup; i++) await demo.classify(slice(i));
  const perImageMs = [];
  for (let r = 0; r < repeats; r++) {
    const start = performance.now();
    for (let i = 0; i < calls; i++) await demo.classify(slice(r * calls + i));
    perImageMs.push((performance.now() - start) / (calls * batch));
  }
  return perImageMs;
})(SETTING)"""

SETTINGS = {
    "batch 1": {"batch": 1, "calls": 1000, "warmup": 200, "repeats": 7},
    "batch 1000": {"batch": 1000, "calls": 5, "warmup": 2, "repeats": 7},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exported", type=Path, default=Path("exported"), help="folder with model.app.onnx")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="folder holding MNIST/raw/")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/web_inference.json"))
    parser.add_argument("--threads", default="1,2", help="wasm thread counts to measure (comma list)")
    parser.add_argument("--note", default="", help="a remark stored in the JSON, e.g. about the machine's load")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if any(t < 1 or t > 16 for t in threads):
        sys.exit("error: --threads must be between 1 and 16")
    binary = find_chromium()
    if binary is None:
        sys.exit("error: Chromium is not installed (Debian: apt-get install chromium)")

    x, _ = load_split(args.data_dir, "test")
    results = []
    with tempfile.TemporaryDirectory() as data:
        (Path(data) / "t10k-images.bin").write_bytes(np.ascontiguousarray(x, dtype=np.uint8).tobytes())
        config = WebConfig(site=DEFAULT_SITE, model=args.exported / "model.app.onnx", port=0,
                           extra_mounts=(Mount("/data/", Path(data), frozenset({".bin"})),))
        with Background(config) as base_url:
            for n in threads:
                with Chromium(binary) as page:
                    page.goto(f"{base_url}?threads={n}", "document.body && document.body.dataset.ready === 'true'")
                    info = page.evaluate("demo.ready")
                    if not info["crossOriginIsolated"] or info["threads"] != n:
                        sys.exit(f"error: the page is not running {n} threads cross-origin isolated: {info}")
                    for name, setting in SETTINGS.items():
                        per_image = page.evaluate(TIMING.replace("SETTING", json.dumps(setting)), timeout=600)
                        results.append({"threads": n, "mode": name, **setting,
                                        "median_ms_per_image": statistics.median(per_image),
                                        "runs_ms_per_image": per_image})
                        print(f"{n} thread(s), {name}: {statistics.median(per_image):.4f} ms per image "
                              f"(runs: {', '.join(f'{v:.4f}' for v in per_image)})")
                    ort_version = info["ortVersion"]

    fileio.write_json(args.out, {
        "benchmark": "web_inference",
        "machine": sysinfo.machine(),
        "browser": chromium_version(binary),
        "onnxruntime_web": ort_version,
        "backend": "wasm (SIMD, threads through SharedArrayBuffer; the page is cross-origin isolated)",
        "model": "model.app.onnx (uint8 pixels -> probabilities, digit)",
        "images": "MNIST test images, rotated through the 10,000",
        "timing": "performance.now() around session.run in the page, preprocessing excluded; median of the runs",
        "note": args.note,
        "results": results,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
