"""How long `toolkit verify` takes for every exported artifact, as a user runs it (a fresh process each time).

    python benchmarks/verify_time.py --data-dir data --out benchmarks/results/verify.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from toolkit import fileio, sysinfo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--artifacts", default="exported")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/verify.json")
    args = parser.parse_args()

    walls, report = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "toolkit", "verify", "--artifacts", args.artifacts,
                                   "--data-dir", args.data_dir, "--json", f"{tmp}/v.json"],
                                  capture_output=True, text=True)
            walls.append(time.perf_counter() - t0)
            if done.returncode != 0:
                sys.exit(f"toolkit verify failed: {done.stderr.strip()}")
            report = json.loads(Path(f"{tmp}/v.json").read_text())
    manifest = json.loads((Path(args.artifacts) / "manifest.json").read_text())
    sizes = {a["file"]: a["size_bytes"] for a in manifest["artifacts"]}
    result = {"benchmark": "verify_time", "machine": sysinfo.machine(), "versions": sysinfo.versions(),
              "wall_seconds": walls, "median_wall_seconds": statistics.median(walls),
              "artifact_sizes": sizes, "verify_report": report}
    fileio.write_json(args.out, result)
    print(f"toolkit verify over {len(report['results'])} artifacts: median {result['median_wall_seconds']:.1f} s "
          f"wall ({', '.join(f'{w:.1f}' for w in walls)})")


if __name__ == "__main__":
    main()
