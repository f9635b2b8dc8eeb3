"""The configurations a bench run times (the candidates), and how each one's runner is opened.

This is bench's door to the runner layer: every runtime, option and opener it uses is named here (only the
OpenVINO hint names that BenchConfig checks are read in config), so the rest of the package sees candidates
and runners only. Two sources feed the same timing: the manifest
(every artifact, or the checkpoint, each runtime opens, times the settings that runtime takes) and one
model file (bench/files.py: every runtime that opens it; a toolkit file opened and verified as its artifact, any
other with nothing to verify it against).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit import calibration, devices, refinputs, runners, sysinfo, usermodel
from toolkit.artifacts import Artifact, read_manifest, read_model_flops
from toolkit.bench.config import BenchConfig
from toolkit.bench.results import BenchPoint
from toolkit.checkpoint import RecordedCheckpoint, read_recorded
from toolkit.errors import ArtifactError, CheckpointError
from toolkit.formats import judged_precision
from toolkit.runners import (
    IO_MODES,
    RUNTIMES,
    Runner,
    RunnerOptions,
    Runtime,
    Selection,
    Timed,
    open_timed,
    run_guard,
    select_runtimes,
)
from toolkit.runners.onnxruntime import default_threads as ort_default_threads
from toolkit.source_checkpoint import find_checkpoint

__all__ = ["Candidate", "Plan", "Runner", "Timed", "plan_manifest", "run_guard"]

VERIFY_BATCH1_IMAGES = 100  # bench's own parity check runs this many images one at a time too


@dataclass(frozen=True)
class Candidate:
    """One runtime configuration to time: a source opened in a runtime with options, and how it is called."""

    runtime: str
    source: Artifact | RecordedCheckpoint | str  # an artifact, the checkpoint (PyTorch eager baseline), or a model file
    format: str
    precision: str
    options: RunnerOptions
    io: str = "host"
    concurrency: int = 1  # caller threads sharing the runner

    @property
    def key(self) -> str:
        o = self.options
        return (f"{self.runtime} {self.format}/{self.precision} {o.device} {self.io} {o.optimization} {o.mode} "
                f"{o.hint} c{self.concurrency} t{o.threads}{' cuda-graph' if o.cuda_graph else ''}")

    @property
    def runner_key(self) -> tuple[str, str, str, RunnerOptions]:
        return self.runtime, self.format, self.precision, self.options

    @property
    def verify_key(self) -> tuple[str, str, str, RunnerOptions]:
        """What a verdict holds for: the runner with its thread count and OpenVINO hint left out, since those
        schedule the same computation (the graph, the device and the compute mode decide what is computed)."""
        return (self.runtime, self.format, self.precision,
                dataclasses.replace(self.options, threads=None, hint=RunnerOptions.hint))

    @property
    def group(self) -> str:
        """What the search keeps the best settings of: the runtime, the source, the device and the compute mode."""
        return f"{self.runtime} {self.format}/{self.precision} {self.options.device} {self.options.mode}"

    @property
    def setting(self) -> str:
        """The settings the search chooses between, as words ('-' where the runtime takes none)."""
        tunes, o, cpu = RUNTIMES[self.runtime].tunes, self.options, self.options.device == "cpu"
        words = [f"opt={o.optimization}"] if "optimization" in tunes and cpu else []
        calls = "concurrency" in tunes and cpu
        words += [f"calls={self.concurrency}"] if calls else []
        words += [f"threads={o.threads}"] if calls and self.concurrency == 1 and o.threads else []
        words += [f"hint={o.hint}"] if "hint" in tunes else []
        words += [f"io={self.io}"] if "io" in tunes and not cpu else []
        words += ["cuda-graph"] if o.cuda_graph else []
        return " ".join(words) or "-"

    @property
    def one_call_at_a_time(self) -> bool:
        """Whether one request is in flight at a time (no concurrent callers, no OpenVINO async queue)."""
        queued = "hint" in RUNTIMES[self.runtime].tunes and self.options.hint == "throughput"
        return self.concurrency == 1 and not queued

    def point(self, batch_size: int, batches_per_call: int, times: list[float], wall_s: float, first_ms: float,
              verdict: dict[str, Any] | None) -> BenchPoint:
        """This configuration's statistics at one batch size; settings its runtime does not take read '-'."""
        tunes = RUNTIMES[self.runtime].tunes
        verdict = verdict or {}
        ms = np.asarray(times) * 1e3
        in_flight = self.concurrency * batches_per_call
        return BenchPoint(
            runtime=self.runtime, format=self.format, precision=self.precision, provider=self.options.device,
            io=self.io, optimization=self.options.optimization if "optimization" in tunes else "-",
            cuda_graph=self.options.cuda_graph, batch_size=batch_size, concurrency=in_flight, iterations=len(ms),
            threads=self.options.threads, first_call_ms=first_ms, p50_ms=float(np.percentile(ms, 50)),
            p90_ms=float(np.percentile(ms, 90)), p99_ms=float(np.percentile(ms, 99)), mean_ms=float(ms.mean()),
            min_ms=float(ms.min()), throughput=batch_size * batches_per_call * len(ms) / wall_s,
            mode=self.options.mode if "mode" in tunes else "-",
            hint=self.options.hint if "hint" in tunes else "-", verified=verdict.get("passed"),
            agreement=verdict.get("agreement"), checked_images=verdict.get("n"), setting=self.setting)


# --- building the candidates ----------------------------------------------------------------------------

def _axes(config: BenchConfig, spec: Runtime, device: str, precision: str) -> dict[str, list[dict]]:
    """Each bench setting's values as option dicts; a runtime takes the product over its `tunes`."""
    cpu = device == "cpu"
    return {
        "optimization": [{"optimization": level} for level in config.optimizations] if cpu else [{}],
        "concurrency": [{"concurrency": c} for c in config.concurrency] if cpu else [{}],
        "io": [{}] if cpu else [{"io": m} for m in IO_MODES],
        "cuda_graph": [{}],
        "mode": [{}],  # each run's mode comes with it (runners.runs)
        "hint": [{"hint": h} for h in config.hints],
    }


def _variants(config: BenchConfig, spec: Runtime, device: str, precision: str) -> list[dict[str, Any]]:
    axes = _axes(config, spec, device, precision)
    combos: list[dict[str, Any]] = [{}]
    for axis in spec.tunes:
        combos = [{**c, **v} for c in combos for v in axes[axis]]
    if "cuda_graph" in spec.tunes and config.cuda_graph and device == "cuda":
        combos.append({"cuda_graph": True, "io": "device"})
    return combos


def _thread_counts(config: BenchConfig, concurrency: int, one_thread_too: bool) -> list[int | None]:
    """The intra-op threads a candidate making `concurrency` calls at once runs at: --threads where given; else
    concurrent calls share the CPUs, each its slice, and a single call gets ONNX Runtime's default (None: one per
    physical core) and, with `one_thread_too` on a machine of several CPUs, one thread (at batch 1 threads mostly
    wait on each other, and two hyperthreads of one core share its units, so one thread can answer sooner) and,
    where the cores have hyperthreads, every CPU. Counts the default already is are not timed twice."""
    if config.threads:
        return [config.threads]
    cpus = sysinfo.usable_cores()
    if concurrency > 1:
        return [max(1, cpus // concurrency)]
    if not one_thread_too or cpus == 1:
        return [None]
    default = ort_default_threads() or sysinfo.physical_cores()  # what None comes to
    return [None, *(n for n in (1, cpus) if n != default)]


def candidates_of(config: BenchConfig, name: str, device: str, source: Artifact | str, fmt: str,
                  precision: str, mode: str = "f32") -> list[Candidate]:
    """One source in one runtime on one device, at every combination of the settings that runtime takes."""
    out = []
    spec = RUNTIMES[name]
    for v in _variants(config, spec, device, precision):
        concurrency = v.pop("concurrency", 1)
        io = v.pop("io", "host")
        for threads in _thread_counts(config, concurrency, "concurrency" in spec.tunes and device == "cpu"):
            options = RunnerOptions(device=device, threads=threads, mode=mode, time_limit_s=config.time_limit_s,
                                    **v)
            out.append(Candidate(name, source, fmt, precision, options, io, concurrency))
    return out


def build_candidates(config: BenchConfig, runtimes: list[str], devices: list[str], manifest: list[Artifact],
                     checkpoint: RecordedCheckpoint | None, skipped: dict[str, str] | None = None) -> list[Candidate]:
    """Every configuration to time: runtime x device x source x the settings that runtime takes. A compute mode
    left out because this CPU only emulates it gets a note in `skipped`."""
    out = []
    for device in devices:
        # the torch baselines for the GPU run under provider cuda; CPU-only runtimes on cpu
        todo, _ = runners.runs(manifest, runtimes, device, list(config.formats), list(config.precisions), checkpoint)
        todo, left_out = runners.choose_modes(todo, config.modes)
        for run in todo:
            out += candidates_of(config, run.runtime, device, run.source, run.format, run.precision, run.mode)
        if skipped is not None:
            skipped.update(left_out)
    return out


def _find_checkpoint(config: BenchConfig, manifest: list[Artifact], selection: Selection,
                     skipped: dict[str, str]) -> RecordedCheckpoint | None:
    """The checkpoint, read once and checked against the SHA-256 the manifest records before anything is timed
    (checkpoint.read_recorded): the reference outputs, the PyTorch eager baseline and the model's FLOPs are all
    built from those bytes. None when this run uses none of them (it is then not even loaded) or, unless the
    baseline was asked for by name, when it is not found (then the baseline is skipped with the reason). A
    `--checkpoint` that is not the artifacts' source is refused, as verify fails every file against it."""
    if not sysinfo.installed("torch"):
        return None
    try:
        if usermodel.from_model_code(config.artifacts):
            # the weights alone cannot rebuild the model, and a manifest never names code to import
            raise CheckpointError("the export's model came from your own code (--model-code), which bench does not "
                                  "import: its PyTorch baseline cannot be rebuilt")
        path = find_checkpoint(config.artifacts, manifest, config.checkpoint)
    except CheckpointError as e:
        if "pytorch" in config.runtimes or "pytorch" in config.formats:
            raise
        if "pytorch" in selection.runtimes:
            selection.runtimes.remove("pytorch")
            if not config.formats and (not config.precisions or "fp32" in config.precisions):
                skipped["runtime pytorch"] = str(e)
        return None
    if not (config.checkpoint or _uses_checkpoint(config, selection)):
        return None
    return read_recorded(path, next((a.source_sha256 for a in manifest), ""))


def _uses_checkpoint(config: BenchConfig, selection: Selection) -> bool:
    """Whether the run loads the checkpoint: for the reference outputs (verified, or an export made with
    --input-shape), the PyTorch eager baseline, or the FLOPs of an export that recorded none."""
    return (config.verify or refinputs.other_input_shape(config.artifacts) is not None
            or read_model_flops(config.artifacts) is None
            or ("pytorch" in selection.runtimes
                and runners.baseline_selected(list(config.formats), list(config.precisions))))


# --- opening the runners --------------------------------------------------------------------------------

def options_words(o: RunnerOptions) -> str:
    return f"opt={o.optimization} threads={o.threads} precision={o.mode} hint={o.hint}"


def runtime_version(name: str) -> str:
    return RUNTIMES[name].version() or "unknown"


def sample(ref: Any, images: int) -> Any:
    """`ref` cut to `images` of its inputs, spread evenly over them (every k-th), so every part of the set is seen."""
    step = max(1, len(ref.pixels) // images)
    if step == 1:
        return ref
    labels = None if ref.labels is None else ref.labels[::step][:images]
    return dataclasses.replace(ref, pixels=ref.pixels[::step][:images], labels=labels,
                               log_probs=ref.log_probs[::step][:images])


def _verdict_of(key: tuple, runner: Runner, ref: Any, artifact: Artifact | None, total: int) -> dict[str, Any]:
    """verify's judgement of one runner on the reference's inputs (those that may judge its artifact; `ref` may be
    a sample of the `total` there are), with the default tolerances of the precision it computes at (as verify
    judges: an OpenVINO bf16 mode that computes f32 is held to f32's)."""
    from toolkit import verify

    runtime, fmt, precision, options = key
    computed = runner.computed_mode
    judged, rows = judged_precision(precision, computed), ref
    try:
        rows = calibration.judged_rows(artifact, ref, "give more with --verify-images N")
        fields = verify.check_runner(runner, rows, verify.DEFAULT_TOLERANCES[judged], VERIFY_BATCH1_IMAGES)
    except calibration.NothingHeldOut as e:  # nothing was checked: not a failure, and not a pass
        fields = {"passed": None, "failures": [f"not checked: {e}"]}
    except ArtifactError as e:
        fields = {"passed": False, "failures": [str(e)]}
    return {"runtime": runtime, "artifact": f"{fmt}/{precision}", "judged_as": judged,
            **({"computed_mode": computed} if computed != options.mode else {}),
            **{k: fields.get(k) for k in ("passed", "agreement", "n", "max_abs_diff", "failures")},
            **(_judged_on(artifact, ref, rows, fields["n"], total) if "n" in fields else {})}


def _judged_on(artifact: Artifact | None, ref: Any, rows: Any, n: int, total: int) -> dict[str, Any]:
    """Which rows judged an int8 file of an --input-shape export (toolkit.calibration), as verify says it: of the
    `ref` rows checked, the n held out from its calibration (held_out_of: those checked); or, where
    --calibration-inputs shares rows with the `total` reference inputs, how many of the n judged also calibrated it
    (also_calibrating, or [at least, at most] where a sample of them leaves it open: the manifest records how many
    of all of them did, not which)."""
    if rows is not ref:
        return {"held_out_of": len(ref.pixels)}
    least, most = calibration.also_calibrating_among(artifact, ref, n, total)
    if not most:
        return {}
    return {"reference_inputs": total,
            **({"also_calibrating": most} if least == most else {"also_calibrating_range": [least, most]})}


class Opener:
    """Opens a candidate's runner for each round (so only one runner's memory is held at a time), recording
    the first opening's time and, when asked, verify's verdict on it."""

    def __init__(self, verify_with: Any = None, own_inputs: np.ndarray | None = None) -> None:
        self.ref = verify_with
        self.own_inputs = own_inputs  # an --input-shape export's reference inputs, fed to every candidate as given
        self.load_ms: dict[str, float] = {}
        self.verdicts: dict[tuple, dict[str, Any]] = {}
        self.settings: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, c: Candidate) -> Runner:
        return self.open(c, verify=True)

    def unverified(self, c: Candidate) -> Runner:
        """The runner, not verified yet (the search's probes: only the settings it keeps are verified)."""
        return self.open(c, verify=False)

    def open(self, c: Candidate, verify: bool) -> Runner:
        runner, ms = self.load(c)
        self.load_ms.setdefault(f"{c.runtime} {c.format}/{c.precision} {c.options.device} "
                                f"{options_words(c.options)}", ms)
        ref = self.reference(c) if verify else None
        if ref is not None and c.verify_key not in self.verdicts:
            own = self.inputs(c)  # every reference input of an --input-shape export; `ref` may be a sample
            total = len(ref.pixels) if own is None else len(own)
            self.verdicts[c.verify_key] = {**_verdict_of(c.runner_key, runner, ref, self.artifact(c), total),
                                           "verified_with": options_words(c.options)}
        known = self.settings.setdefault(c.runtime, [])
        if runner.settings() not in known:
            known.append(runner.settings())
        return runner

    def load(self, c: Candidate) -> tuple[Runner, float]:
        """The candidate's runner, told whether it is fed its own inputs (`inputs`), and how long opening it took,
        in milliseconds."""
        runner, ms = self.opened(c)
        runner.inputs_as_given = self.inputs(c) is not None
        return runner, ms

    def opened(self, c: Candidate) -> tuple[Runner, float]:
        """The candidate's runner and how long opening it took, in milliseconds."""
        return open_timed(c.runtime, c.source, c.options)

    def inputs(self, c: Candidate) -> np.ndarray | None:
        """What the candidate is fed as given, its model's own input already: its export's reference inputs (an
        export made with --input-shape takes no MNIST image). None: it is fed the run's images."""
        return self.own_inputs

    def reference(self, c: Candidate) -> Any:
        """What the candidate is verified against; None: nothing."""
        return self.ref

    def artifact(self, c: Candidate) -> Artifact | None:
        """The manifest entry of the file the candidate runs; None: the checkpoint."""
        return c.source if isinstance(c.source, Artifact) else None

    def verdict(self, c: Candidate) -> dict[str, Any] | None:
        return self.verdicts.get(c.verify_key)

    def runtimes(self) -> dict[str, dict[str, Any]]:
        """Each runtime opened: its version and every distinct settings its runners reported."""
        return {name: {"version": runtime_version(name), "settings": s} for name, s in self.settings.items()}

    def verification(self) -> dict[str, dict[str, Any]]:
        return {f"{k[0]} {k[1]}/{k[2]} {k[3].device} opt={k[3].optimization} precision={k[3].mode}": v
                for k, v in self.verdicts.items()}


# --- the two sources ------------------------------------------------------------------------------------

@dataclass
class Plan:
    """What one run times, and what its report says about where the candidates came from."""

    candidates: list[Candidate]
    opener: Any  # Opener, or bench.files' FileOpener
    devices: list[str]
    checkpoint: RecordedCheckpoint | None = None
    reference: Any = None  # verify's reference, when the candidates are verified
    skipped: dict[str, str] = field(default_factory=dict)  # what was left out, and why
    skipped_runtimes: dict[str, str] = field(default_factory=dict)
    files: list[Any] = field(default_factory=list)  # bench FILE...: each file's runtimes and inputs


def _reference(config: BenchConfig, manifest: list[Artifact], checkpoint: RecordedCheckpoint | None) -> Any:
    """verify's reference (auto): the outputs of the checkpoint bench already read and checked, else, where it has
    none, golden.npy (or the error saying what is needed). Refused, before any timing, when the files' source is
    not the checkpoint it holds the outputs of (verify would fail every such file)."""
    from toolkit.reference import check_source, recorded_reference, resolve_reference

    if checkpoint is not None:
        ref = recorded_reference(checkpoint, config.data_dir)
    else:
        ref = resolve_reference(config.artifacts, manifest, None, "auto", config.data_dir)
    check_source(ref, manifest)
    return ref


def plan_manifest(config: BenchConfig) -> Plan:
    """Every selected runtime on every artifact (and the checkpoint) it opens, verified first unless told not."""
    selection = select_runtimes(config.runtimes)
    devices_used, skipped = devices.expand(config.providers)
    manifest = read_manifest(config.artifacts)
    checkpoint = _find_checkpoint(config, manifest, selection, skipped)
    candidates = build_candidates(config, selection.runtimes, devices_used, manifest, checkpoint, skipped)
    if not candidates:
        raise ArtifactError("nothing to benchmark: no runtime opens an artifact (or the checkpoint) in the selection")
    # an export made with --input-shape takes no MNIST image: it is fed the reference inputs beside it, which its
    # reference (golden.npy, from model code) answers, as verify feeds and judges it
    own = refinputs.other_input_shape(config.artifacts) is not None
    full = _reference(config, manifest, checkpoint) if config.verify or own else None
    for artifact in manifest if full is not None else []:  # refused as verify refuses it, before any timing
        calibration.check_entry(artifact, full)
    ref = sample(full, config.verify_images) if config.verify else None
    missing = runners.would_run(selection, manifest, devices_used, list(config.formats), list(config.precisions),
                                baseline=True)  # a runtime not installed is noted where it would have run something
    return Plan(candidates, Opener(ref, full.pixels if own else None), devices_used,
                checkpoint=checkpoint, reference=ref, skipped=skipped,
                skipped_runtimes={k: v for k, v in selection.skipped.items() if k in missing})
