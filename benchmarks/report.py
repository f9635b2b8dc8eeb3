"""Render the results tables from the committed JSON results (no number is typed by hand).

    python benchmarks/report.py > benchmarks/results/summary.md     # every section
    python benchmarks/report.py --headline                           # the README's one table
    python benchmarks/report.py --write README.md benchmarks/README.md

`--write` replaces, in each file, the text between `<!-- report.py NAME -->` and `<!-- /report.py -->` with
block NAME (headline, install, compat, tour_bench or sections); tests/test_readme.py checks that the
committed files match.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from toolkit.bench import fastest_line, target_goal, tuning

RESULTS = Path(__file__).parent / "results"

# Results measured on something other than what the toolkit builds now, by file: one line each, shown under
# that file's section and beside its rows in the headline. A file re-measured on the current default pipeline
# is taken out of this table.
PROVENANCE = {
    "train_speed.json": "measured before `fast` whitened its first layer (it learned it); "
                        "`family26/train_speed_modes.json` times the recipe as it is.",
    "train_speed_modes.json": "measured before `fast` whitened its first layer (float32 learned it for half the "
                              "steps, then froze it), the pinned figure too; `family26/` times the recipe as it is.",
    "nobf16/train_speed_modes.json": "measured before `fast` whitened its first layer (float32 learned it for half "
                                     "the steps, then froze it).",
    "recipes.json": "its `fast` rows were measured before `fast` whitened its first layer; "
                    "`family26/recipes_fast.json` and `family26/recipes_float32.json` weigh the whitened one.",
    "train_profile.json": "profiled before `fast` whitened its first layer: every step here trains it.",
    "train_memory.json": "measured before `fast` whitened its first layer: every step here trains it.",
}


# Results of the same scripts on another kind of CPU, each in a folder of results/ (the same file names), so that
# a figure that differs across CPUs shows each: the headline and the sections render these after the main ones.
OTHER_CPUS = (
    "nobf16",  # a CPU without AVX512-BF16 or AMX, where training runs float32
    "family26",  # an AMD EPYC of family 26 (bf16, and AVX-512 units twice the float32 rate of the main CPU's)
)


def load(name: str, folder: str = "") -> dict | None:
    path = RESULTS / folder / name
    return json.loads(path.read_text()) if path.exists() else None


def cores(n: int) -> str:
    return f"{n} core" + "s" * (n != 1)


def cpu(m: dict) -> str:
    """A result's machine as its CPU, its family and model numbers and whether it computes bf16 natively (where
    the result says) and the cores the run had: 'AMD EPYC (family 26, model 2) with bf16, 2 cores'. CPUs of one
    model name differ in these."""
    bf16 = {True: " with bf16", False: " without bf16"}.get(m.get("native_bf16"), "")
    ident = f" ({m['cpu_id']})" if m.get("cpu_id") else ""
    return f"{m['cpu']}{ident}{bf16}, {cores(m['cpu_cores'])}"


def machine(m: dict) -> str:
    gpu = m.get("gpu")
    return cpu(m) + (f", GPU {gpu['name']}" if gpu else ", no GPU")


def training(r: dict) -> list[str]:
    s = r["summary"]
    lines = [f"### Training speed and accuracy (`benchmarks/train_speed.py`, {machine(r['machine'])}, "
             f"device {r['device']})", "",
             "| pipeline | epochs | s/epoch | test accuracy | time to target |", "|---|---:|---:|---:|---:|"]
    for recipe, runs in r["recipes"].items():
        goal = s[recipe]["targets"]
        target = goal.get("reach") or goal.get("mean_final")
        for run in runs:
            hit = next((e for e in run["epochs"] if target and e["test_accuracy"] >= target), None)
            when = (f"{target}% after {hit['elapsed_seconds']:.1f} s" if hit
                    else f"ends after {run['wall_seconds']:.0f} s")
            lines.append(f"| toolkit `{recipe}`, seed {run['seed']} | {len(run['epochs'])} | "
                         f"{statistics.mean(e['epoch_seconds'] for e in run['epochs']):.1f} | "
                         f"{run['final_test_accuracy']:.2f}% | {when} |")
    nb = r["notebook_pipeline"]
    if nb:
        reached = f"98.8% after {nb['seconds_to_target']:.0f} s" if nb["reached"] else "98.8% not reached"
        lines.append(f"| notebook pipeline (torchvision + DataLoader, SGD 0.01, batch 64) | {len(nb['epochs'])} | "
                     f"{statistics.mean(e['epoch_seconds'] for e in nb['epochs']):.1f} | "
                     f"{nb['epochs'][-1]['test_accuracy']:.2f}% | {reached} |")
    lines.append("")
    for recipe in r["recipes"]:
        j = s[recipe]
        goal = j["targets"]
        text = (f"`{recipe}`: mean test accuracy {j['mean_test_accuracy']:.2f}% over {j['seeds']} seeds (lowest "
                f"{j['min_test_accuracy']:.2f}%), {j['mean_wall_seconds']:.1f} s per run including data loading")
        if "reach" in goal:
            text += (f"; {goal['reach']}% reached after a median {j['median_seconds_to_target']:.1f} s "
                     f"(target: within {goal['within_seconds']:g} s, every seed ending at "
                     f"{goal['min_final']}% or more)")
        else:
            text += f" (target: mean at least {goal['mean_final']}%, lowest at least {goal['min_final']}%)"
        lines.append(f"- {text}: **{'met' if j['targets_met'] else 'missed'}**.")
    if "fast_speedup_over_notebook" in s:
        lines.append(f"- `fast` reaches 99.0% **{s['fast_speedup_over_notebook']:.0f}x** sooner than the notebook's "
                     f"pipeline reaches 98.8%{' (a lower bound)' if s['speedup_is_lower_bound'] else ''}.")
    return lines


def recipes(r: dict) -> list[str]:
    # the heading names the baselines varied (rows without a verdict), so each file's section has its own anchor
    baselines = " and ".join(f"`{name}`" for name, row in r["summary"].items() if "verdict" not in row)
    lines = [f"### What each ingredient adds to {baselines} (`benchmarks/recipes.py`, {machine(r['machine'])})", "",
             f"Validation accuracy on the last {r['holdout']:,} training images, held out of training; the test "
             "set is not looked at.", "",
             "| variant | seeds | mean validation accuracy | lowest | recipe minus variant (points) | verdict |",
             "|---|---:|---:|---:|---:|---|"]
    for name, row in r["summary"].items():
        delta = f"{row['recipe_minus_variant']:+.3f}" if "recipe_minus_variant" in row else ""
        lines.append(f"| {name} | {row['seeds']} | {row['mean_val_accuracy']:.3f}% | {row['min_val_accuracy']:.2f}% | "
                     f"{delta} | {row.get('verdict', 'the recipe')} |")
    return lines


def train_profile(r: dict) -> list[str]:
    e = r["epoch"]
    total = sum(e["phases_seconds"].values())
    lines = [f"### Where a training epoch goes (`benchmarks/train_profile.py`, recipe `{r['recipe']}`, "
             f"{machine(r['machine'])})", "", "| phase | seconds | share |", "|---|---:|---:|"]
    for name, sec in sorted(e["phases_seconds"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {sec:.2f} | {100 * sec / total:.0f}% |")
    lines += ["", "Set-up is mostly PyTorch importing `torch._dynamo` when the first optimizer is built, once per "
                  "process; a run pays it, so the recipe's times include it."]
    c = r["step_comparison"]
    lines += ["", f"Step time at batch {c['batch_size']}, median of {c['rounds']} interleaved rounds:", "",
              "| step | ms | speed-up |", "|---|---:|---:|"]
    for name, ms in c["median_ms_per_step"].items():
        lines.append(f"| {name} | {ms:.1f} | x{c['speedup_vs_before'][name]:.2f} |")
    f = r["efficiency"]
    top = ", ".join(f"{o['operator']} on {o['input_shapes'][1:].split(']')[0]}] {100 * o['share']:.0f}%"
                    for o in r["top_operators"][:4])
    lines += ["", f"The step now runs at {f['step_gflops']:.0f} GFLOP/s ({f['train_mflop_per_image']:.1f} MFLOP per "
                  f"image), {100 * f['fraction_of_peak']:.0f}% of the {f['matmul_peak_gflops']:.0f} GFLOP/s "
                  f"{f['peak_dtype']} matrix-multiply peak measured in the same run. Operators taking the most "
                  f"time: {top}."]
    if "step_choices" in r:
        lines += [""] + step_choices(r["step_choices"])
    return lines


def step_choices(c: dict) -> list[str]:
    """The step with one choice changed at a time, against the recipe's step."""
    lines = [f"The {c['compute']} step with one choice changed at a time (seconds of steps per 60,000 images, median "
             f"of {c['rounds']} interleaved rounds; the recipe's step on {c['threads']} thread"
             f"{'s' * (c['threads'] != 1)}):", "", "| step | s per epoch | vs the recipe's |", "|---|---:|---:|"]
    for name, sec in c["median_step_seconds_per_epoch"].items():
        lines.append(f"| {name} | {sec:.2f} | x{c['time_vs_recipe_step'][name]:.2f} |")
    return lines


def bf16_emulation(r: dict) -> list[str]:
    lines = [f"### bf16 where the CPU only emulates it (`benchmarks/bf16_emulation.py`, {machine(r['machine'])})", "",
             "The `fast` recipe's training step, median of "
             f"{r['processes']} processes per setting. oneDNN reports bf16 support on every AVX-512 CPU; capped at an "
             "Ice Lake's instruction sets it emulates bf16, and `toolkit train` uses bf16 only where the CPU's own "
             "flags list AVX512-BF16 or AMX.", "",
             "| oneDNN instruction sets | bf16 autocast ms | float32 ms | bf16 / float32 |", "|---|---:|---:|---:|"]
    for isa, v in r["summary"].items():
        ms = v["median_ms_per_step"]
        lines.append(f"| {isa} | {ms['bf16 autocast']:.1f} | {ms['float32']:.1f} | {v['bf16_over_float32']:.2f}x |")
    return lines


def train_memory(r: dict) -> list[str]:
    lines = [f"### Freed memory kept in the process (`benchmarks/train_memory.py`, {machine(r['machine'])})", "",
             f"The `fast` recipe's training step, median of {r['processes']} processes per setting: glibc's default "
             "returns the step's few-megabyte blocks to the system and faults them in again; `toolkit train` raises "
             "its mmap and trim thresholds on the CPU.", "",
             "| compute | glibc default ms | page faults | kept ms | page faults | speed-up |",
             "|---|---:|---:|---:|---:|---:|"]
    for mode, v in r["summary"].items():
        d, k = v["median"]["glibc default"], v["median"]["freed memory kept"]
        lines.append(f"| {mode} | {d['ms_per_step']:.1f} | {d['faults_per_step']:,.0f} | {k['ms_per_step']:.1f} | "
                     f"{k['faults_per_step']:,.0f} | x{v['speedup']:.2f} |")
    return lines


def cnn_vs_mlp(r: dict) -> list[str]:
    lines = [f"### ConvNet vs MLP (`benchmarks/cnn_vs_mlp.py`, {machine(r['machine'])})", "",
             "| model | parameters | recipe | epochs | validation error per epoch (%) | final |",
             "|---|---:|---|---:|---|---:|"]
    for run in r["runs"]:
        errs = run["validation_error_per_epoch"]
        lines.append(f"| {run['model']} | {run['parameters']:,} | {run['recipe']} | {len(errs)} | "
                     f"{', '.join(f'{e:.2f}' for e in errs)} | {run['final_validation_error']:.2f}% |")
    return lines


def artifacts(r: dict, title: str = "Exported artifacts (`benchmarks/verify_time.py`") -> list[str]:
    rep = r["verify_report"]
    lines = [f"### {title}, {machine(r['machine'])})", "",
             f"PyTorch reference accuracy {rep['reference_accuracy']:.2f}% on {rep['n']:,} test images.", "",
             "| file | format | precision | size KiB | accuracy | agreement with PyTorch | max abs diff | passed |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for row in rep["results"]:
        lines.append(f"| {row['artifact']} | {row['format']} | {row['precision']} | "
                     f"{r['artifact_sizes'][row['artifact']] / 1024:.0f} | {row['accuracy']:.2f}% | "
                     f"{row['agreement']:,}/{row['n']:,} | {row['max_abs_diff']:.1e} ({row['compared']}) | "
                     f"{'yes' if row['passed'] else 'no'} |")
    walls = ", ".join(f"{w:.1f}" for w in r["wall_seconds"])
    lines += ["", f"`toolkit verify` over all {len(rep['results'])} artifacts: median "
                  f"{r['median_wall_seconds']:.1f} s wall per run ({walls} s), process start-up included."]
    return lines


def best_artifacts(r: dict) -> list[str]:
    return artifacts(r, "Artifacts of a `best` run (`benchmarks/best_export.sh`, seed 0")


def _setting(p: dict) -> str:
    """The settings that tell a point apart within its runtime, for the tables."""
    words = []
    if p["optimization"] != "-":
        words.append(f"opt={p['optimization']}")
    if p.get("hint", "-") != "-":
        words.append(f"{p['hint']} hint")
    if p["concurrency"] > 1 or p.get("hint") == "throughput":
        words.append(f"{p['concurrency']} in flight")
    return ", ".join(words) or "-"


def inference(r: dict, provider: str) -> list[str]:
    lines = [f"### Inference, provider {provider} (`benchmarks/inference.sh {provider}`, {machine(r['machine'])})",
             "", "Best throughput per runtime and the batch-1 latency (all points: "
             f"`benchmarks/results/inference_{provider}.md`); versions: "
             + ", ".join(f"{name} {v['version']}" for name, v in r.get("runtimes", {}).items()) + ".", "",
             "| runtime | mode | batch-1 p50 ms | batch-1 p99 ms | best images/s | at batch | setting | verified |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    groups: dict[str, list[dict]] = {}
    for p in r["points"]:
        groups.setdefault(f"{p['runtime']} {p['format']}/{p['precision']}\t{p.get('mode', '-')}", []).append(p)
    for key, points in groups.items():
        name, mode = key.split("\t")
        single = [p for p in points if p["batch_size"] == 1 and p["concurrency"] == 1]
        b1 = min(single, key=lambda p: p["p50_ms"]) if single else None
        best = max(points, key=lambda p: p["throughput"])
        latency = f"{b1['p50_ms']:.3f} | {b1['p99_ms']:.3f}" if b1 else "- | -"
        verified = {True: "yes", False: "FAILED", None: "-"}[best.get("verified")]
        lines.append(f"| {name} | {mode} | {latency} | {best['throughput']:,.0f} | {best['batch_size']} | "
                     f"{_setting(best)} | {verified} |")
    for regime, f in r.get("fastest", {}).items():
        if "images_per_s_from" in f:  # each rate says whether it is the p50's or the measured one
            lines += ["", f"Fastest here that passes verify, {fastest_line(f, regime)}."]
        else:
            lines += ["", f"Fastest here that passes verify ({regime}): {f['label']}, batch {f['batch_size']}: "
                      f"{f['p50_ms']:.3f} ms p50, {f['throughput']:,.0f} images/s."]
    lines += _targets_table(r.get("targets"))
    if r.get("matmul_peak_gflops"):
        int8 = r.get("int8_matmul_peak_gops")
        lines += ["", f"Matrix-multiply peaks measured in the same run: float32 {r['matmul_peak_gflops']:.1f} GFLOP/s"
                      + (f", int8 {int8:.1f} GOP/s." if int8 else ".")]
    return lines


def _peak_words(r: dict) -> str:
    """The run's matmul peaks, each with the rate of every library measured where the run recorded them."""
    rates = r["bench_report"].get("peak_rates") or {}
    libraries = {"torch": "torch", "onnxruntime": "ONNX Runtime"}

    def words(kind: str, peak: float, unit: str) -> str:
        each = ", ".join(f"{libraries.get(k, k)} {v:.0f}" for k, v in rates.get(kind, {}).items())
        return f"{kind} {peak:.0f} {unit}" + (f" (the better of {each})" if each else "")
    out = words("float32", r["matmul_peak_gflops"], "GFLOP/s")
    if r.get("int8_matmul_peak_gops"):
        out += ", " + words("int8", r["int8_matmul_peak_gops"], "GOP/s")
    if not rates:
        out += "; measured before the float32 peak took ONNX Runtime's MatMul beside torch's"
    return out


def peers(r: dict) -> list[str]:
    rep = r["bench_report"]
    lines = [f"### The same files on every engine (`benchmarks/peers.py`, {machine(r['machine'])})", "",
             "One bench run, interleaved rounds, each engine at the settings its short search found best; versions: "
             + ", ".join(f"{name} {v['version']}" for name, v in rep["runtimes"].items()) + ". Share of peak: "
             f"images/s x {r['model_flops_per_image'] / 1e6:.2f} MFLOP per image over the matmul peak measured in "
             f"the same run ({_peak_words(r)}); none for bf16 modes.", "",
             "| engine, file, precision mode | batch-1 p50 ms | vs ORT fp32 | best images/s (batch 64-256) | "
             "vs ORT fp32 | share of peak | judged as | agreement with PyTorch | verified |",
             "|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for row in r["rows"]:
        b1 = f"{row['batch1_p50_ms']:.3f} | x{row['batch1_p50_vs_ort_fp32']:.2f}" if row["batch1_p50_ms"] else "- | -"
        agreement = (f"{row['agreement']:,}/{row['checked_images']:,}" if row["agreement"] is not None else "-")
        share = f"{row['share_of_peak']:.3f}" if row["share_of_peak"] is not None else "-"
        lines.append(f"| {row['configuration']} | {b1} | {row['best_throughput']:,.0f} | "
                     f"x{row['throughput_vs_ort_fp32']:.2f} | {share} | {row['judged_as']} | {agreement} | "
                     f"{'yes' if row['verified'] else 'FAILED'} |")
    lines.append("")
    for regime, row in r["fastest"].items():
        detail = (f"{row['batch1_label']}, batch-1 p50 {row['batch1_p50_ms']:.3f} ms" if "latency" in regime else
                  f"{row['best_label']}, {row['best_throughput']:,.0f} images/s at batch {row['best_batch']}")
        lines.append(f"- fastest verified, {regime}: {row['configuration']} ({detail})")
    return lines + _targets_table(r.get("targets"))


def _targets_table(targets: dict | None) -> list[str]:
    """The project's goals for the ratios one run measured: each with its value, goal and whether it was met."""
    if not targets:
        return []
    lines = ["", "| target (ratio measured in this run) | measured | goal | met |", "|---|---:|---:|---|"]
    for name, t in targets.items():
        lines.append(f"| {name}: {t['detail']} | {t['value']:.3f} | {target_goal(name, t['target'])} "
                     f"| {'yes' if t['met'] else 'no'} |")
    return lines


def quantization(r: dict) -> list[str]:
    batches = "/".join(str(b) for b in r["settings"]["batch_sizes"])
    labels = r["settings"]["threads"]
    lines = [f"### int8 variants (`benchmarks/quantization.py`, {machine(r['machine'])}, int8 flags "
             f"{', '.join(r['machine'].get('int8_flags', [])) or 'none'})", "",
             "ONNX Runtime, CPU; each int8 file timed against fp32 in one process, interleaved, "
             f"{r['settings']['rounds']} rounds; speed-up = median of fp32 time / int8 time. Transpose / DQ: "
             "nodes left in ONNX Runtime's optimized graph. `shipped` is the same graph as the candidate it names.",
             "", "| variant | settings | test accuracy (change) | Transpose / DQ | " +
             " | ".join(f"{t}: best images/s, batch {batches}" for t in labels) + " |",
             "|---|---|---:|---:|" + "---:|" * len(labels)]
    for v in r["variants"]:
        s = v["settings"]
        setting = (f"{s['quant_format']}, {s['activations']}, s8 {'per-channel' if s['per_channel'] else 'per-tensor'}"
                   + (", first conv fp32" if s.get("fp32_nodes") else "")
                   + (", convs padded" if any("padded" in w for w in s.get("graph_rewrites", [])) else ""))
        speed = " | ".join(f"x{t['best_throughput_speedup']:.2f}, " +
                           " / ".join(f"x{p['speedup_vs_fp32']:.2f}" for p in t["batches"].values())
                           for t in (v["timing"][label] for label in labels))
        lines.append(f"| {v['variant']} | {setting} | {v['test_accuracy']:.2f}% ({v['accuracy_delta']:+.2f}) | "
                     f"{v['optimized_graph']['transpose']} / {v['optimized_graph']['dequantize_linear']} | {speed} |")
    shipped = r["shipped"]
    lines += ["", f"`toolkit export` shipped {shipped['variant']} ({shipped['chosen_by']}: {shipped['reason']})."]
    return lines


def env_size(r: dict) -> list[str]:
    envs = r["environments"]
    system = r["machine"]["platform"].split("-")[0]
    lines = [f"### The inference-only install (`benchmarks/env_size.py`, {system} {r['machine']['machine']}, "
             f"Python {r['machine']['python']}, pip {r['pip']})", "",
             "| ONNX Runtime package | environment on disk | its biggest packages | torch importable |",
             "|---|---:|---|---|"]
    for env in envs.values():
        biggest = ", ".join(f"{p['name']} {p['bytes'] / 1e6:.0f} MB" for p in env["packages"][:4])
        lines.append(f"| {env['onnxruntime_package']} | {env['bytes_on_disk'] / 1e6:.0f} MB | {biggest} | "
                     f"{'yes' if env['importable']['torch'] else 'no'} |")
    gpu = envs["gpu"]
    lines += ["", f"Target for {r['target_applies_to']}: at most {r['target_bytes'] / 1e6:.0f} MB; "
                  f"{'met' if r['target_met'] else 'missed'} ({gpu['bytes_on_disk'] / 1e6:.0f} MB, of which "
                  f"{gpu['empty_venv_bytes'] / 1e6:.0f} MB is the empty environment with pip and setuptools)."]
    return lines


def env_size_all(r: dict) -> list[str]:
    env = r["environments"]["all"]
    system = r["machine"]["platform"].split("-")[0]
    biggest = ", ".join(f"{p['name']} {p['bytes'] / 1e6:.0f} MB" for p in env["packages"][:6])
    return [f"### The full install (`benchmarks/env_size.py --profile all`, {system} {r['machine']['machine']}, "
            f"Python {r['machine']['python']}, pip {r['pip']})", "",
            f"`pip install '.[all]'` ({', '.join(r['extras'])}) into a fresh environment: "
            f"**{env['bytes_on_disk'] / 1e6:,.0f} MB** on disk, {env['files']:,} files "
            f"(of which {env['empty_venv_bytes'] / 1e6:.0f} MB is the empty environment with pip and setuptools); "
            f"ONNX Runtime package {env['onnxruntime_package']}; torch importable: "
            f"{'yes' if env['importable']['torch'] else 'no'}. Biggest packages: {biggest}."]


def web_inference(r: dict) -> list[str]:
    lines = [f"### Inside a web page (`benchmarks/web_inference.py`, {machine(r['machine'])})", "",
             f"{r['browser']}, ONNX Runtime Web {r['onnxruntime_web']}, {r['backend']}; {r['model']}; "
             f"{r['timing']}; {r['note']}.", "",
             "| wasm threads | images per call | ms per image, median | each run |", "|---:|---:|---:|---|"]
    for row in r["results"]:
        runs = ", ".join(f"{x:.2f}" for x in row["runs_ms_per_image"])
        lines.append(f"| {row['threads']} | {row['batch']:,} | {row['median_ms_per_image']:.2f} | {runs} |")
    return lines


_CELL_TEXT = {"cannot open": "cannot open", "not offered": "-", "not run": "not installed"}


def compat(r: dict) -> list[str]:
    """The engine x file grid of `benchmarks/compat.py`: where verify passed each exported file."""
    m = r["machine"]
    files = [f["file"] for f in r["files"]]
    lines = [f"### Which file runs in which engine (`benchmarks/compat.py`, {cpu(m)})", "",
             "| engine | " + " | ".join(f"`{f}`" for f in files) + " |", "|---|" + "---|" * len(files)]
    cells = {(c["runtime"], c["mode"], c["artifact"]): c for c in r["cells"]}
    for e in r["engines"]:
        row = []
        for f in files:
            c = cells[(e["runtime"], e["mode"], f)]
            if c["status"] in ("pass", "fail"):
                row.append(f"{c['status']} {c['agreement']:,}/{c['n']:,}"
                           + ("" if c["judged_as"] == next(x["precision"] for x in r["files"] if x["file"] == f)
                              else f" (as {c['judged_as']})"))
            else:
                row.append(_CELL_TEXT[c["status"]])
        mode = "" if e["mode"] == "f32" else f" {e['mode']}"
        lines.append(f"| {e['runtime']}{mode} {e['version'] or ''} | " + " | ".join(row) + " |")
    tol = r["settings"]["tolerances"]
    lines += ["", f"Each cell: verify's judgement on all {r['n']:,} test images at full batch and "
                  f"{r['settings']['batch1_images']:,} one at a time (agreement with PyTorch shown), with the default "
                  f"tolerances (fp32: every prediction equal, |diff| <= {tol['fp32']['max_abs_diff']:g}; int8: at "
                  f"least {tol['int8']['min_agreement']:.0%} agreement, accuracy within "
                  f"{tol['int8']['max_accuracy_change']:g} points). \"cannot open\": the engine does not read that "
                  "format; \"-\": the mode applies to fp32 files only. Files: "
                  + ", ".join(f"`{f['file']}`" + "".join(f" + `{p}`" for p in f["parts"]) + f" ({f['format']} "
                              f"{f['precision']})" for f in r["files"]) + "."]
    return lines


def _ort_version(r: dict) -> str:
    v = r["versions"]
    return v.get("onnxruntime-gpu") or v.get("onnxruntime") or "?"


def make_main(r: dict, pinned: dict | None = None) -> list[str]:
    def name(command: str) -> str:
        if command.startswith("if "):  # the recipe's GPU check
            return "`toolkit bench --device cuda` where torch sees a GPU"
        return f"`{command.split(' --')[0].removeprefix('.venv/bin/')}`"

    # the same recipe pinned to fewer CPUs (--cpus), where that run is committed: one more column
    seconds = {s["command"]: s["seconds"] for s in pinned["steps"]} if pinned else {}

    def more(command: str) -> str:
        if not pinned:
            return ""
        return f" {seconds[command]:.1f} |" if command in seconds else " - |"

    steps = [f"| {name(s['command'])} | {s['seconds']:.1f} | {s['lines_printed']} |{more(s['command'])}"
             for s in r["steps"]]
    head = ["| command | seconds | lines printed |", "|---|---:|---:|"]
    lines_after = []
    if pinned:
        head = [head[0] + f" seconds on {len(pinned['pinned_cpus'])} of its cores |", head[1] + "---:|"]
        lines_after = [f"The last column: the same recipe with every command pinned to "
                       f"{cores(len(pinned['pinned_cpus']))} (`--cpus`, `make_main_1core.json`), run right after "
                       f"the first on the same machine ({pinned['machine']['cpu']}).", ""]
    b, v = r["bench"], r["verify"]
    total = f"| all | {r['total_seconds']:.0f} | {r['total_lines_printed']} |"
    return [f"### `make main` once installed (`benchmarks/make_main.py`, {machine(r['machine'])})", "",
            f"torch {r['versions']['torch']}, onnxruntime {_ort_version(r)}; output read through a pipe "
            "(progress as plain lines).", "",
            *head, *steps, total + (f" {pinned['total_seconds']:.0f} |" if pinned else ""), "", *lines_after,
            f"verify: {v['artifacts']} artifacts on {v['images']:,} images, "
            f"{'all passed' if v['passed'] else 'NOT all passed'}. bench: a summary of {b['summary_rows']} rows "
            f"over {len(b['timed'])} runtime and file pairs ({b['points']} timed points in its JSON), files: "
            + ", ".join(b["files_timed"]) + ".", *_targets_table(b.get("targets"))]


def _work_shares(flops: dict[str, int] | None) -> str:
    """' Of the model's N multiply-adds per image, conv1 does a (x%), ...' from per-layer FLOPs; '' without them."""
    if not flops:
        return ""
    total = sum(flops.values())
    each = ", ".join(f"`{name}` {f // 2:,} ({100 * f / total:.1f}%)" for name, f in flops.items())
    return f" Of the model's {total // 2:,} multiply-adds per image: {each}."


def search_probes(r: dict) -> list[str]:
    st = r["settings"]
    lines = [f"### How steady the default search is (`benchmarks/search_probes.py`, {machine(r['machine'])})", "",
             f"The default `toolkit bench` (verify and the matmul peak off), {st['repeats']} runs per probe share, the "
             f"shares alternating run by run; a probe gets that share of a point's time budget, in "
             f"{st['probe_rounds']} rounds; the toolkit's share now is {tuning.PROBE_SHARE}. Steady: groups "
             "(runtime, file, compute mode) that kept the same throughput setting in every run (settings that "
             "differ only in ONNX Runtime's optimization level often time alike, so either may win).", "",
             "| probe share | steady groups | ONNX Runtime int8 kept | ONNX Runtime int8 / fp32, best images/s "
             "(min, median, max) | bench seconds (median) |", "|---:|---:|---|---|---:|"]
    for share, x in r["summary"].items():
        kept = ", ".join(f"{setting} {n}x" for setting, n in x["ort_int8_choices"].items())
        q = x["ort_int8_over_fp32"]
        lines.append(f"| {float(share):.2f} | {x['groups_always_same_choice']} of {x['groups']} | {kept} | "
                     f"x{q['min']:.2f}, x{q['median']:.2f}, x{q['max']:.2f} | {x['median_seconds']:.0f} |")
    return lines


def _one_thread_note(runs: list[dict]) -> str:
    """Says what the `1 thread` rows are, where a profile has them (older results do not)."""
    if not any(run["engine"].endswith("1 thread") for run in runs):
        return ""
    return " (`1 thread`: one intra-op thread, as each call of bench's concurrent configurations runs)"


def inference_profile(r: dict) -> list[str]:
    lines = [f"### Where inference time goes (`benchmarks/inference_profile.py`, {machine(r['machine'])})", "",
             "ONNX Runtime's profiler (at its default optimization level, all, and where the engine column says "
             "so at extended, which leaves out the NCHWc layout rewrite) and OpenVINO's performance counters (f32 "
             f"inference precision), each engine's default threads{_one_thread_note(r['runs'])}; the four "
             "operators that take the most time, "
             "and the two slowest layers (graph nodes), as shares of the operators' total. The exporter names the "
             "first convolution `node_conv2d` and the second `node_conv2d_1` (ONNX Runtime's NCHWc rewrite renames "
             "them `conv2d_nchwc` and `conv2d_1_nchwc`)." + _work_shares(r.get("layer_flops_per_image")), "",
             "| engine | file | batch | ms per call | top operators | slowest layers |",
             "|---|---|---:|---:|---|---|"]
    for run in r["runs"]:
        ms = run.get("wall_ms_per_call", run.get("wall_ms_per_call_with_counters"))
        top = ", ".join(f"{o['op']} {o['share']:.0%}" for o in run["ops"][:4])
        layers = ", ".join(f"{o['op']} {o['share']:.0%}" for o in run.get("layers", [])[:2]) or "not recorded"
        lines.append(f"| {run['engine']} | `{run['file']}` | {run['batch_size']} | {ms:.3f} | {top} | {layers} |")
    return lines


def torch_export(r: dict) -> list[str]:
    lines = [f"### pt2 and aoti beside ONNX (`benchmarks/torch_export.py`, {machine(r['machine'])})", "",
             f"torch {r['versions']['torch']}, onnxruntime {_ort_version(r)}; one interleaved "
             "bench run; each command a fresh process; AOTInductor compiled with an empty compiler cache.", "",
             "| file | export s | size KiB | verify: agreement (full batch / one at a time) | max abs diff | "
             "batch-1 p50 ms | batch-256 images/s |", "|---|---:|---:|---|---:|---:|---:|"]
    points = {(p["format"], p["batch_size"]): p for p in r["bench"]}
    for check in r["verify"]:
        fmt = check["format"]
        b1, b256 = points.get((fmt, 1)), points.get((fmt, 256))
        lines.append(f"| {check['artifact']} ({check['runtime']}) | {r['export_seconds'][fmt]:.1f} | "
                     f"{r['size_bytes'][fmt] / 1024:,.0f} | {check['agreement']:,}/{check['n']:,} / "
                     f"{check['batch1_n']:,} images, |diff| {check['batch1_max_diff']:.1e} | "
                     f"{check['max_abs_diff']:.1e} | {b1['p50_ms']:.3f} | {b256['throughput']:,.0f} |")
    lines += ["", f"`toolkit verify` of the three on all 10,000 images at full batch and one at a time: "
                  f"{r['verify_wall_seconds']:.0f} s; building `examples/cpp`: {r['cpp_build_wall_seconds']:.0f} s."]
    return lines


def _cpu(r: dict) -> str:
    return cpu(r["machine"])


def _pinned_float32(pinned: dict | None) -> str:
    """' (N s pinned to 1 core, `train_speed_float32_1core.json`)' from that result, or '' where there is none."""
    if not pinned or "fast in float32" not in pinned["summary"]:
        return ""
    p32 = pinned["summary"]["fast in float32"]
    return (f" ({p32['median_seconds_to_target']:.1f} s pinned to {cores(pinned['machine']['cpu_cores'])}, "
            f"`train_speed_float32_1core.json`)")


def _peer_rows(r: dict, row) -> None:
    """The headline's inference rows: latency against eager, the int8 speed-up, and each regime's fastest."""
    by = {x["configuration"]: x for x in r["rows"]}
    ort, eager, int8 = by.get("onnxruntime onnx/fp32"), by.get("pytorch pytorch/fp32"), by.get("onnxruntime onnx/int8")
    if ort and eager:
        row("batch-1 p50 latency, ONNX Runtime fp32 / PyTorch eager",
            f"x{ort['batch1_p50_ms'] / eager['batch1_p50_ms']:.2f}: {ort['batch1_p50_ms']:.3f} ms / "
            f"{eager['batch1_p50_ms']:.3f} ms")
    if ort and int8:
        row("ONNX Runtime int8 / fp32, best images/s", f"x{int8['throughput_vs_ort_fp32']:.2f}: "
            f"{int8['best_throughput']:,.0f} / {ort['best_throughput']:,.0f}")
    for regime, x in r["fastest"].items():
        figure = (f"{x['configuration']}: {x['batch1_p50_ms']:.3f} ms p50 at batch 1" if "latency" in regime else
                  f"{x['configuration']}: {x['best_throughput']:,.0f} images/s at batch {x['best_batch']}"
                  + (f", {x['share_of_peak']:.3f} of the {x['judged_as'].replace('fp', 'float')} matmul peak"
                     if x["share_of_peak"] is not None else ""))
        row(f"fastest verified, {regime}", figure)


def headline() -> list[str]:
    """The README's one table: a few figures from each committed result, each naming its script and CPU."""
    rows, notes = [], {}

    def row(what: str, figure: str, script: str, name: str, on: str) -> None:
        mark = ""
        if name in PROVENANCE:  # one note per file, lettered in order of first use
            notes.setdefault(name, f"({'abcdefgh'[len(notes)]})")
            mark = " " + notes[name]
        rows.append(f"| {what} | {figure}{mark} | `{script}` | {on} |")

    r = load("train_speed.json")
    if r:
        fast, best = r["summary"]["fast"], r["summary"]["best"]
        row("train `fast` (the default, 1 epoch)", f"{fast['mean_test_accuracy']:.2f}% test accuracy (mean of "
            f"{fast['seeds']} seeds), 99.0% after {fast['median_seconds_to_target']:.1f} s", "train_speed.py",
            "train_speed.json", _cpu(r))
        row("train `best` (15 epochs)", f"{best['mean_test_accuracy']:.2f}% (mean of {best['seeds']} seeds), "
            f"{best['mean_wall_seconds']:.0f} s per run", "train_speed.py", "train_speed.json", _cpu(r))
        if "fast_speedup_over_notebook" in r["summary"]:
            row("against the 2019 notebook's pipeline", f"`fast` reaches 99.0% "
                f"{r['summary']['fast_speedup_over_notebook']:.0f}x sooner than the notebook's pipeline reaches "
                f"98.8%{' (a lower bound)' if r['summary']['speedup_is_lower_bound'] else ''}",
                "train_speed.py", "train_speed.json", _cpu(r))
    r = load("train_speed_modes.json")
    if r and "fast in float32" in r["summary"]:
        f32 = r["summary"]["fast in float32"]
        row("train `fast` in float32 (bf16 turned off: what a CPU without bf16 runs)",
            f"{f32['mean_test_accuracy']:.2f}% (mean of {f32['seeds']} seeds), 99.0% after "
            f"{f32['median_seconds_to_target']:.1f} s{_pinned_float32(load('train_speed_float32_1core.json'))}",
            "train_speed.py --modes", "train_speed_modes.json", _cpu(r))
    for folder in OTHER_CPUS:  # the same `fast` recipe as that CPU trains it, and in float32 where also timed
        r = load("train_speed_modes.json", folder)
        for name in ("fast", "fast in float32"):
            if r and name in r["summary"]:
                fast = r["summary"][name]
                how = (f"in {fast['compute']}, as this CPU trains it" if name == "fast"
                       else "in float32 (bf16 turned off)")
                pinned = _pinned_float32(load("train_speed_float32_1core.json", folder)) if (
                    fast.get("compute") == "float32") else ""
                row(f"train `fast` {how}", f"{fast['mean_test_accuracy']:.2f}% (mean of {fast['seeds']} seeds), "
                    f"99.0% after {fast['median_seconds_to_target']:.1f} s{pinned}", "train_speed.py --modes",
                    f"{folder}/train_speed_modes.json", _cpu(r))
    for name in ("verify_best.json", "verify.json"):
        r = load(name)
        if r:
            results = r["verify_report"]["results"]
            worst = min(results, key=lambda x: x["agreement"] / x["n"])
            passed = sum(x["passed"] for x in results)
            script, whose = (("best_export.sh", "a `best` run's") if name == "verify_best.json"
                             else ("verify_time.py", "the"))
            row(f"{whose} exported files against PyTorch, all {r['verify_report']['n']:,} test images",
                f"{passed}/{len(results)} pass; "
                f"lowest agreement {worst['agreement']:,}/{worst['n']:,} ({worst['artifact']})", script, name, _cpu(r))
            break
    for folder in ("", *OTHER_CPUS):
        r = load("peers.json", folder)
        if r:
            _peer_rows(r, lambda what, figure, r=r: row(what, figure, "peers.py", "peers.json", _cpu(r)))
    for folder in ("", *OTHER_CPUS):
        r, pinned = load("make_main.json", folder), load("make_main_1core.json", folder)
        if r:
            one = f" ({pinned['total_seconds']:.0f} s pinned to {cores(len(pinned['pinned_cpus']))})" if pinned else ""
            row("`make main` once installed (data, train, export, verify, bench)",
                f"{r['total_seconds']:.0f} s{one}, {r['total_lines_printed']} lines printed, a bench summary of "
                f"{r['bench']['summary_rows']} rows", "make_main.py", "make_main.json", _cpu(r))
    lines = ["| what | measured | script (`benchmarks/`) | on |", "|---|---|---|---|", *rows]
    for name, mark in notes.items():
        lines += ["", f"{mark} `{name}`: {PROVENANCE[name]}"]
    return lines


def install() -> list[str]:
    """The README's install table: each profile's size from env_size.json / env_size_all.json."""
    small, full = load("env_size.json"), load("env_size_all.json")
    rows = ["| profile | command | fresh environment on disk | its biggest packages | torch |",
            "|---|---|---:|---|---|"]

    def row(profile: str, command: str, env: dict | None, torch: str) -> None:
        if env is None:
            rows.append(f"| {profile} | {command} | not measured | | {torch} |")
            return
        biggest = ", ".join(f"{p['name']} {p['bytes'] / 1e6:,.0f} MB" for p in env["packages"][:3])
        rows.append(f"| {profile} | {command} | {env['bytes_on_disk'] / 1e6:,.0f} MB | {biggest} | "
                    f"{'yes' if env['importable']['torch'] else 'no'} |")

    envs = small["environments"] if small else {}
    row("inference only", "`pip install .` (Linux x86_64: onnxruntime-gpu)", envs.get("gpu"), "no")
    row("inference only", "`pip install .` (elsewhere: onnxruntime)", envs.get("plain"), "no")
    row("everything", "`pip install '.[all]'`", full["environments"]["all"] if full else None, "yes")
    where = (small or full or {}).get("machine")
    if where:
        rows += ["", f"Measured by `benchmarks/env_size.py` (`--profile all` for the full one) on "
                     f"{where['platform'].split('-')[0]} {where['machine']}, Python {where['python']}."]
    return rows


def sections() -> list[str]:
    """Every section, in reading order, each followed by its provenance line when its JSON has one."""
    out = []
    renders = [("train_speed.json", training), ("recipes.json", recipes), ("train_profile.json", train_profile),
               ("bf16_emulation.json", bf16_emulation), ("train_memory.json", train_memory),
               ("cnn_vs_mlp.json", cnn_vs_mlp), ("verify.json", artifacts), ("verify_best.json", best_artifacts),
               ("quantization.json", quantization), ("compat.json", compat), ("env_size.json", env_size),
               ("env_size_all.json", env_size_all),
               ("peers.json", peers), ("torch_export.json", torch_export),
               ("make_main.json", lambda r: make_main(r, load("make_main_1core.json"))),
               ("inference_profile.json", inference_profile), ("search_probes.json", search_probes),
               ("web_inference.json", web_inference),
               ("inference_cpu.json", lambda r: inference(r, "cpu")),
               ("inference_cuda.json", lambda r: inference(r, "cuda"))]
    for name, render in renders:
        r = load(name)
        if r:
            lines = render(r)
            if name in PROVENANCE:
                lines[1:1] = ["", PROVENANCE[name]]
            out.append("\n".join(lines))
    # the same scripts on another kind of CPU, where they ran there (each heading names its CPU)
    for folder in OTHER_CPUS:
        others = [("recipes_fast.json", recipes), ("recipes_float32.json", recipes),
                  ("peers.json", peers), ("inference_profile.json", inference_profile),
                  ("quantization.json", quantization), ("train_profile_float32.json", train_profile),
                  ("make_main.json", lambda r, f=folder: make_main(r, load("make_main_1core.json", f)))]
        for name, render in others:
            r = load(name, folder)
            if r:
                lines = render(r)
                lines[1:1] = ["", f"Measured on {_cpu(r)}: `benchmarks/results/{folder}/{name}`."]
                out.append("\n".join(lines))
    return out


def compat_grid() -> list[str]:
    """The engine x file grid alone (no heading, no legend), for the README."""
    r = load("compat.json")
    if not r:
        return ["Not measured yet: `python benchmarks/compat.py`."]
    lines = compat(r)
    grid = lines[2:lines.index("", 2)]
    note = PROVENANCE.get("compat.json")
    return grid + ["", f"On {_cpu(r)}, `benchmarks/results/compat.json`." + (f" {note}" if note else "")]


def tour_bench() -> list[str]:
    """What the README tour's bench command printed (benchmarks/tour_bench.sh), verbatim, and where it ran."""
    r, text = load("tour_bench.json"), RESULTS / "tour_bench.txt"
    if not r or not text.exists():
        return ["Not measured yet: `benchmarks/tour_bench.sh`."]
    return [f"What it printed in one run after `make main` (`benchmarks/tour_bench.sh`, {machine(r['machine'])}):",
            "", "```text", *[line.rstrip() for line in text.read_text().strip("\n").splitlines()],
            "```"]


BLOCKS = {"headline": lambda: "\n".join(headline()), "install": lambda: "\n".join(install()),
          "tour_bench": lambda: "\n".join(tour_bench()),
          "compat": lambda: "\n".join(compat_grid()),
          "sections": lambda: "\n\n".join(sections())}
BLOCK = re.compile(r"(<!-- report\.py (\w+) -->\n)(.*?)(<!-- /report\.py -->)", re.S)


def filled(text: str) -> str:
    """`text` with every report.py block replaced by what the committed JSON renders now."""
    def fill(m: re.Match) -> str:
        if m.group(2) not in BLOCKS:
            raise SystemExit(f"unknown report.py block {m.group(2)!r}; known: {', '.join(BLOCKS)}")
        return m.group(1) + BLOCKS[m.group(2)]() + "\n" + m.group(4)
    return BLOCK.sub(fill, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--headline", action="store_true", help="only the README's one table")
    parser.add_argument("--write", nargs="+", type=Path, metavar="FILE",
                        help="fill the report.py blocks of these markdown files in place")
    args = parser.parse_args()
    if args.write:
        for path in args.write:
            path.write_text(filled(path.read_text()))
        return
    sys.stdout.write(BLOCKS["headline" if args.headline else "sections"]() + "\n")


if __name__ == "__main__":
    main()
