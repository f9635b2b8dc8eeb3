"""Size on disk of a fresh install of toolkit: the inference-only one a device gets, or the full one.

`--profile inference` (the default) builds two fresh virtual environments in a temporary folder and measures each:
  gpu    `pip install <repo>`: on Linux x86_64 that brings onnxruntime-gpu (the package's choice there)
  plain  the same dependencies with the plain `onnxruntime` package instead (what other platforms get)
and checks in each that torch is not importable and that `toolkit --help` runs.
`--profile all` builds one, `pip install '<repo>[all]'` (train, export, every runtime and on-device format),
measured the same way, and checks that torch is importable there and that `toolkit --help` runs.

    python benchmarks/env_size.py                  # writes benchmarks/results/env_size.json
    python benchmarks/env_size.py --profile all    # writes benchmarks/results/env_size_all.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
RESULT = {"inference": RESULTS / "env_size.json", "all": RESULTS / "env_size_all.json"}
TARGET_BYTES = 500 * 10**6  # the target for the GPU build on Linux x86_64
NOT_WANTED = ("torch", "torchvision", "onnx", "matplotlib", "triton")

# Run inside a measured environment: bytes per installed distribution, from each one's RECORD.
PER_DIST = r"""
import importlib.metadata, json, os
seen, sizes = set(), {}
for dist in importlib.metadata.distributions():
    total = 0
    for f in dist.files or []:
        p = os.path.realpath(dist.locate_file(f))
        if p in seen or not os.path.isfile(p):
            continue
        seen.add(p)
        total += os.stat(p).st_blocks * 512
    sizes[dist.metadata["Name"]] = {"version": dist.version, "bytes": total}
print(json.dumps(sizes))
"""


def disk_usage(folder: Path) -> tuple[int, int, int]:
    """(bytes on disk, apparent bytes, files) under `folder`, like `du -s --block-size=1` (hard links once)."""
    seen, on_disk, apparent, files = set(), 0, 0, 0
    for root, dirs, names in os.walk(folder):
        for name in names + dirs:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            on_disk += st.st_blocks * 512
            apparent += st.st_size
            files += name in names
    return on_disk, apparent, files


def run(*cmd: str | Path) -> str:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{done.stderr[-3000:]}")
    return done.stdout


def base_dependencies() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def plain_dependencies() -> list[str]:
    """The base dependencies with the plain onnxruntime package in place of the GPU build (markers dropped)."""
    deps = []
    for dep in base_dependencies():
        requirement = dep.split(";")[0].strip()
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
        if name == "onnxruntime-gpu":
            continue
        deps.append(requirement)
    if not any(d.lower().startswith("onnxruntime") for d in deps):
        sys.exit("pyproject.toml lists no plain onnxruntime requirement")
    return deps


def build(venv: Path, variant: str) -> dict:
    run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    empty = disk_usage(venv)[0]
    pip = [py, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check"]
    if variant == "gpu":
        run(*pip, REPO)
    elif variant == "all":
        run(*pip, f"{REPO}[all]")
    else:
        run(*pip, "--no-deps", REPO)
        run(*pip, *plain_dependencies())
    on_disk, apparent, files = disk_usage(venv)
    dists = json.loads(run(py, "-c", PER_DIST))
    importable = json.loads(run(py, "-c", "import importlib.util, json; print(json.dumps({n: "
                                f"importlib.util.find_spec(n) is not None for n in {NOT_WANTED!r}}}))"))
    help_ok = subprocess.run([venv / "bin" / "toolkit", "--help"], capture_output=True).returncode == 0
    version = run(py, "-m", "pip", "--version").split()[1]
    biggest = sorted(dists.items(), key=lambda kv: -kv[1]["bytes"])
    return {
        "variant": variant,
        "bytes_on_disk": on_disk,
        "apparent_bytes": apparent,
        "files": files,
        "empty_venv_bytes": empty,  # python's own venv with pip and setuptools, before any install
        "onnxruntime_package": next(n for n in dists if n.lower().startswith("onnxruntime")),
        "packages": [{"name": n, "version": d["version"], "bytes": d["bytes"]} for n, d in biggest],
        "importable": importable,
        "toolkit_help_ok": help_ok,
        "pip": version,
    }


def machine() -> dict:
    return {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version()}


def inference_report() -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="toolkit-env-size-") as tmp:
        for variant in ("gpu", "plain"):
            print(f"building the {variant} environment ...", file=sys.stderr)
            results[variant] = build(Path(tmp) / variant, variant)
    for r in results.values():
        if any(r["importable"].values()) or not r["toolkit_help_ok"]:
            sys.exit(f"the {r['variant']} environment is not inference-only or toolkit does not run: {r}")
    return {
        "what": "size on disk of a fresh virtual environment with `pip install toolkit` (no extras)",
        "machine": machine(),
        "pip": run(sys.executable, "-m", "pip", "--version").split()[1],
        "target_bytes": TARGET_BYTES,
        "target_applies_to": "gpu (Linux x86_64, onnxruntime-gpu)",
        "target_met": results["gpu"]["bytes_on_disk"] <= TARGET_BYTES,
        "environments": results,
    }


def full_report() -> dict:
    with tempfile.TemporaryDirectory(prefix="toolkit-env-size-") as tmp:
        print("building the full environment (.[all]) ...", file=sys.stderr)
        result = build(Path(tmp) / "all", "all")
    if not result["importable"]["torch"] or not result["toolkit_help_ok"]:
        sys.exit(f"the full environment lacks torch or toolkit does not run: {result}")
    return {
        "what": "size on disk of a fresh virtual environment with `pip install 'toolkit[all]'`",
        "machine": machine(),
        "pip": result["pip"],
        "extras": tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["all"],
        "environments": {"all": result},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(RESULT), default="inference",
                        help="inference: `pip install .` (two variants); all: `pip install '.[all]'`")
    parser.add_argument("--out", type=Path, help="where to write the JSON (default: results/ by profile)")
    args = parser.parse_args()
    report = inference_report() if args.profile == "inference" else full_report()
    out = args.out or RESULT[args.profile]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for r in report["environments"].values():
        print(f"{r['variant']}: {r['bytes_on_disk'] / 1e6:.0f} MB ({r['onnxruntime_package']})", file=sys.stderr)


if __name__ == "__main__":
    main()
