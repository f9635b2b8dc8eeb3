"""A bench run end to end: a source's candidates, searched (or swept) and timed in rounds, turned into points
and one report.

`bench` takes its candidates from the manifest (and verifies them first); `bench_files` from model files.
Both then go through the same timing and the same points; their reports differ only in what the source can
say: a file has no checkpoint to count FLOPs on, so it gets no targets (and a foreign file no reference either).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

import toolkit.bench.tuning as tuning
from toolkit import runners, sysinfo
from toolkit.artifacts import read_manifest_field, read_model_flops
from toolkit.bench.config import BenchConfig
from toolkit.bench.files import MNIST_INPUTS, REFERENCE_INPUTS, plan_files
from toolkit.bench.peaks import int8_matmul_peak_gops, matmul_peak_gflops, thread_counts
from toolkit.bench.results import BenchPoint, BenchReport, fastest, summarize, targets
from toolkit.bench.search import Candidate, Plan, plan_manifest
from toolkit.bench.timing import ROTATE, Budget, Job, Series, bench_pixels, steps, time_rounds
from toolkit.checkpoint import RecordedCheckpoint

Progress = Callable[[int, int, str], None]


def bench(config: BenchConfig, on_progress: Progress | None = None) -> BenchReport:
    """Each selected runtime and file at its best settings (a short search), at batch 1 and over the batch ladder;
    with `config.sweep`, every combination of settings at every batch size. See the package docstring.

    torch is imported only for what needs it (the PyTorch and TorchScript runtimes, the matmul peaks): an
    ONNX-only run needs neither torch nor the checkpoint, and verifies against the golden outputs then.
    """
    t_start = time.perf_counter()
    if config.threads and sysinfo.installed("torch"):
        import torch

        torch.set_num_threads(config.threads)
    plan = plan_manifest(config)
    points, search = _points(config, plan, on_progress)
    report = _manifest_report(config, plan, points)
    report.targets = targets(report)
    return _finish(report, search, t_start)


def bench_files(config: BenchConfig, paths: list[str], prep: Any = None,
                shapes: dict[str, tuple[int, ...]] | None = None, on_progress: Progress | None = None,
                options_given: tuple[str, ...] = ()) -> BenchReport:
    """Time model files alone, each in every selected runtime and device that opens it (see bench/files.py): MNIST
    test images where a file's input fits and the data is here, else random inputs of its declared shapes. A toolkit
    file is verified against its export's reference, as over its folder; a foreign file has none. No targets are
    computed (a file's FLOPs are unknown). `options_given`: those of feeding.FILE_OPTIONS that were set, each
    refused where no file takes it."""
    t_start = time.perf_counter()
    plan = plan_files(config, paths, prep, shapes, options_given)
    points, search = _points(config, plan, on_progress)
    return _finish(_file_report(config, plan, points), search, t_start)


def _pixels(config: BenchConfig, plan: Plan) -> Callable[[Candidate], np.ndarray]:
    """What each candidate is fed: its own inputs where its opener holds them (the reference inputs of an
    --input-shape export, fed as given), else the MNIST test images, or for bench FILE per file those or random
    pixels."""
    from toolkit.runners import foreign

    kinds = {f.file: f.inputs for f in plan.files}

    def images(c: Candidate) -> bool:  # not its own inputs, and over a folder or a file recorded as taking images
        return plan.opener.inputs(c) is None and (not plan.files or kinds[str(c.source)] == MNIST_INPUTS)

    mnist = bench_pixels(config.data_dir) if any(map(images, plan.candidates)) else None
    noise = foreign.random_pixels() if plan.files else None

    def fed(c: Candidate) -> np.ndarray:
        own = plan.opener.inputs(c)
        return own if own is not None else mnist if images(c) else noise

    return fed


def _points(config: BenchConfig, plan: Plan, on_progress: Progress | None) -> tuple[list[BenchPoint], dict]:
    """The points to report, and the search's record: with `sweep`, every candidate at every batch size; else
    the short search's choices (see tuning.py), batch 1 with each group's latency setting and the ladder with
    its throughput setting. Each phase in interleaved rounds."""
    pixels = _pixels(config, plan)
    budget = Budget.of(config)
    if config.sweep:
        jobs = [(c, config.batch_sizes) for c in plan.candidates]
        series = time_rounds(jobs, plan.opener, pixels, budget, _progress(on_progress, 0, steps(jobs, budget)))
        return _made(jobs, series, plan), {}
    grouped = tuning.groups(plan.candidates)
    batch, probing = tuning.probe_batch(config.batch_sizes), tuning.probe_budget(budget)
    probes = tuning.probe_jobs(grouped, batch)
    # the final phase's size, before the probes decide it: batch 1 and the ladder per group
    probe_steps = steps(probes, probing)
    estimate = probe_steps + len(grouped) * len({1, *config.batch_sizes}) * budget.rounds
    found = time_rounds(probes, plan.opener.unverified, pixels, probing, _progress(on_progress, 0, estimate))
    choices = tuning.choose(grouped, found, batch)
    jobs = tuning.final_jobs(choices, config.batch_sizes)
    series = time_rounds(jobs, plan.opener, pixels, budget,
                         _progress(on_progress, probe_steps, probe_steps + steps(jobs, budget)))
    return _made(jobs, series, plan), tuning.record(choices, found, batch, probing)


def _made(jobs: list[Job], series: dict[tuple[str, int], Series], plan: Plan) -> list[BenchPoint]:
    return [c.point(bs, s.batches_per_call, s.times, s.wall_s, s.first_ms, plan.opener.verdict(c))
            for c, sizes in jobs for bs in sizes for s in [series[(c.key, bs)]]]


def _progress(on_progress: Progress | None, offset: int, total: int) -> Callable[[int, str], None] | None:
    """A phase's progress as steps of the whole run."""
    if on_progress is None:
        return None
    return lambda done, what: on_progress(offset + done, total, what)


def _finish(report: BenchReport, search: dict[str, Any], t_start: float) -> BenchReport:
    report.search = search
    report.summary = summarize(report.points)
    report.fastest = fastest(report.points)
    report.seconds = time.perf_counter() - t_start
    return report


def _manifest_report(config: BenchConfig, plan: Plan, points: list[BenchPoint]) -> BenchReport:
    # the peaks are measured after the timing, so their load cannot slow the configurations down
    flops = _model_flops(config, plan.checkpoint)
    skipped = dict(plan.skipped)
    peaks = _peaks_wanted(config, plan.devices, flops, skipped)
    rates: dict[str, dict[str, float]] = {"float32": {}, "int8": {}} if peaks else {}
    report = BenchReport(
        machine=sysinfo.machine(), versions=sysinfo.versions(), settings=_settings(config, plan.devices),
        session_options=_session_options(config), model_flops_per_image=flops,
        matmul_peak_gflops=matmul_peak_gflops(rates=rates["float32"], threads=config.threads) if peaks else None,
        points=points, load_ms=plan.opener.load_ms,
        skipped={**skipped, **{f"runtime {k}": v for k, v in plan.skipped_runtimes.items()}},
        int8_matmul_peak_gops=int8_matmul_peak_gops(rates["int8"], threads=config.threads) if peaks else None,
        runtimes=plan.opener.runtimes(), verification=plan.opener.verification(), peak_rates=rates)
    if peaks:
        report.settings["matmul_peak_threads"] = thread_counts(config.threads)
    if plan.reference is not None:
        report.settings["reference"] = plan.reference.name
    model = read_manifest_field(config.artifacts, "model")  # the plot's title names it, also when drawn later
    report.settings["model"] = model.get("name") if isinstance(model, dict) else None
    if plan.opener.own_inputs is not None:
        report.settings["inputs"] = REFERENCE_INPUTS
    return report


def _file_report(config: BenchConfig, plan: Plan, points: list[BenchPoint]) -> BenchReport:
    # what this run really did: each file's runtimes, inputs and reference (a toolkit file's), no FLOPs
    files = [asdict(f) for f in plan.files]
    ran = list(dict.fromkeys(r for f in files for r in f["runtimes"]))
    settings = {**_settings(config, plan.devices), "files": files, "runtimes": ran,
                "verify": any(f["reference"] for f in files), "formats": [], "precisions": [],
                "time_limit_s": plan.opener.time_limit_s}
    if len(files) == 1:
        settings.update(file=files[0]["file"], inputs=files[0]["inputs"])
    skipped = {**plan.skipped, **{f"runtime {k}": v for k, v in plan.skipped_runtimes.items()},
               **{f"{f['name']} in {k}": v for f in files for k, v in f["skipped"].items()}}
    if config.matmul_peak:
        skipped["matmul peak"] = "not measured for a file: its FLOPs are unknown"
    return BenchReport(
        machine=sysinfo.machine(), versions=sysinfo.versions(), settings=settings,
        session_options=_session_options(config), model_flops_per_image=None,
        matmul_peak_gflops=None, points=points, load_ms=plan.opener.load_ms, skipped=skipped,
        runtimes=plan.opener.runtimes(), verification=plan.opener.verification())


def _peaks_wanted(config: BenchConfig, device_names: list[str], flops: int | None, skipped: dict[str, str]) -> bool:
    """Whether to measure the matmul peaks; when asked for but not possible, `skipped` says why."""
    if not (config.matmul_peak and "cpu" in device_names):
        return False
    if not sysinfo.installed("torch"):
        skipped["matmul peak"] = "measured with torch, which is not installed (--no-matmul-peak)"
        return False
    if flops is None:
        skipped["matmul peak"] = ("the model's FLOPs are unknown here (no checkpoint, none in the "
                                  "manifest): the efficiency targets need them")
        return False
    return True


def _model_flops(config: BenchConfig, checkpoint: RecordedCheckpoint | None) -> int | None:
    """FLOPs of one image's forward pass: as export recorded them in the manifest, else counted on the
    checkpoint's model (an older export) where torch and the checkpoint are here, built from the bytes bench read and
    checked against the manifest before timing; None when neither is known."""
    recorded = read_model_flops(config.artifacts)
    if recorded is not None or checkpoint is None:
        return recorded
    from toolkit.model import forward_flops

    return forward_flops(checkpoint.model())


def _settings(config: BenchConfig, providers: list[str]) -> dict[str, Any]:
    s = asdict(config)
    s["providers"] = providers
    s["modes_timed"] = list(runners.modes_to_run(config.modes))
    s["rotate_batches"] = ROTATE
    torch = sys.modules.get("torch")  # only where this run imported it
    s["torch_threads"] = torch.get_num_threads() if torch is not None else None
    return s


def _session_options(config: BenchConfig) -> dict[str, Any]:
    return {
        "intra_op_num_threads": config.threads or "onnxruntime default (one per physical core, or per CPU this "
                                                  "process may use when fewer), and 1 (and every CPU, where cores "
                                                  "have hyperthreads) for one call; CPUs / N with N concurrent calls",
        "graph_optimization_levels": list(config.optimizations),
        "execution_mode": "sequential",
        "cpu_affinity_cores": sysinfo.usable_cores(),
    }
