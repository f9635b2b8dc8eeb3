"""Prove that exported artifacts compute what PyTorch computes, on all 10,000 MNIST test images.

Every artifact is run, in each runtime asked for, on the whole test set at once and image by image; its
outputs are compared with the checkpoint's PyTorch outputs (computed here with torch from the checkpoint, or,
where torch or the checkpoint is absent, read from the golden outputs export wrote beside the artifacts); each
failure is collected (a file that will not load or crashes while running included), and the report names all
of them.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import calibration, devices, formats, runners, sysinfo
from toolkit.artifacts import Artifact, read_manifest, select
from toolkit.bounds import is_number_within
from toolkit.errors import ArtifactError, ConfigError, VerificationFailed
from toolkit.reference import Reference, check_reference, resolve_reference
from toolkit.runners.base import DEFAULT_TIME_LIMIT_S, check_time_limit

MAX_BATCH1_IMAGES = 10_000


@dataclass(frozen=True)
class Tolerance:
    """What an artifact of one precision must achieve against PyTorch fp32."""

    max_abs_diff: float | None  # on log-probabilities (probabilities for onnx-app); None: not judged
    min_agreement: float  # fraction of argmax predictions equal to PyTorch's
    max_accuracy_change: float | None  # |accuracy - PyTorch accuracy| in points; None: not judged
    max_batch_diff: float  # batch 1 vs full batch, max |difference| of outputs

    def __post_init__(self) -> None:
        # a NaN limit would make every comparison false, i.e. switch the check off
        for name, value in asdict(self).items():
            if value is not None and not is_number_within(value, 0.0, math.inf):
                raise ConfigError(f"tolerance {name} must be a finite number >= 0, not {value!r}")
        if self.min_agreement > 1:
            raise ConfigError(f"tolerance min_agreement is a fraction in [0, 1], not {self.min_agreement!r}")


DEFAULT_TOLERANCES = {
    "fp32": Tolerance(max_abs_diff=1e-4, min_agreement=1.0, max_accuracy_change=None, max_batch_diff=1e-4),
    "fp16": Tolerance(max_abs_diff=None, min_agreement=0.999, max_accuracy_change=0.1, max_batch_diff=1e-2),
    "bf16": Tolerance(max_abs_diff=None, min_agreement=0.999, max_accuracy_change=0.1, max_batch_diff=5e-2),
    "int8": Tolerance(max_abs_diff=None, min_agreement=0.99, max_accuracy_change=0.3, max_batch_diff=1e-2),
}


def parse_tolerance_overrides(items: list[str]) -> dict[str, Tolerance]:
    """Apply 'precision.field=value' overrides (e.g. 'fp16.min_agreement=0.998') to the defaults."""
    tolerances = dict(DEFAULT_TOLERANCES)
    for item in items:
        try:
            key, value = item.split("=", 1)
            precision, name = key.split(".", 1)
            current = tolerances[precision]
            if name not in asdict(current):
                raise KeyError(name)
            tolerances[precision] = Tolerance(**{**asdict(current), name: float(value)})
        except (ValueError, KeyError):
            fields = ", ".join(asdict(DEFAULT_TOLERANCES["fp32"]))
            raise ConfigError(f"bad tolerance {item!r}; use PRECISION.FIELD=NUMBER with PRECISION in "
                              f"{', '.join(DEFAULT_TOLERANCES)} and FIELD in {fields}") from None
    return tolerances


@dataclass(frozen=True)
class VerifyConfig:
    artifacts: str = "exported"
    checkpoint: str | None = None  # default: the checkpoint the manifest names
    data_dir: str = "data"
    provider: str = "cpu"
    runtimes: tuple[str, ...] = ()  # empty: each artifact in its own runtime only; "all": every installed
    formats: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    batch1_images: int = 2000  # how many test images also go through one at a time
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    reference: str = "auto"  # one of reference.REFERENCES
    # seconds one model call may run (None: no limit): a manifest can be forged, so its files may never finish
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S
    modes: tuple[str, ...] = ()  # OpenVINO's compute modes; empty: f32, and bf16 where this CPU computes it natively

    def __post_init__(self) -> None:
        check_reference(self.reference)
        check_time_limit(self.time_limit_s)
        formats.check_selection(self.formats, self.precisions)
        unknown = [m for m in self.modes if m not in formats.MODES]
        if unknown:
            raise ConfigError(f"unknown mode {unknown[0]!r}; choose from {', '.join(formats.MODES)}")
        if not 0 <= self.batch1_images <= MAX_BATCH1_IMAGES:
            raise ConfigError(f"batch1-images must be between 0 and {MAX_BATCH1_IMAGES}")
        devices.check(self.provider)


@dataclass
class ArtifactCheck:
    artifact: str
    format: str
    precision: str
    provider: str
    compared: str  # "log_probs" or "probabilities"
    n: int
    max_abs_diff: float
    mean_abs_diff: float
    agreement: int
    accuracy: float
    accuracy_delta: float
    batch1_n: int
    batch1_max_diff: float
    seconds: float
    passed: bool
    failures: list[str]
    runtime: str = "onnxruntime"
    mode: str = formats.DEFAULT_MODE  # the runtime's compute mode (formats.MODES: OpenVINO's f32 or bf16)
    judged_as: str = ""  # the tolerance applied: the lower of the file's precision and the mode computed
    computed_mode: str = ""  # the mode the runtime reports computing at, where it is not `mode`
    also_calibrating: int = 0  # of the n inputs that judged an int8 file, those that also calibrated it

    @property
    def name(self) -> str:
        """The artifact, and the runtime (and mode) it ran in."""
        return f"{self.artifact} on {self.runtime}" + (f" {self.mode}" if self.mode != formats.DEFAULT_MODE else "")


@dataclass
class VerifyReport:
    checkpoint: str
    checkpoint_sha256: str
    reference_accuracy: float
    n: int
    provider: str
    results: list[ArtifactCheck]
    tolerances: dict[str, dict[str, Any]]
    versions: dict[str, str]
    seconds: float
    runtimes: dict[str, str] = field(default_factory=dict)  # runtime -> version
    skipped: dict[str, str] = field(default_factory=dict)
    unverified: dict[str, list[str]] = field(default_factory=dict)  # a skipped runtime -> files no other one checked
    not_verified_why: dict[str, str] = field(default_factory=dict)  # each selected file that no runtime checked -> why
    reference: str = ""  # what the outputs were compared with: "checkpoint <path>" or "golden.npy sha256=<12 hex>"
    reference_note: str = ""  # why the golden outputs were used and not the checkpoint, in auto (reference.py)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def not_verified(self) -> list[str]:
        """Every selected file that no runtime here checked."""
        return list(self.not_verified_why)

    def not_verified_by_reason(self, leave_out: tuple[str, ...] = ()) -> dict[str, list[str]]:
        """{why: the files not verified for that reason}, but those in `leave_out`."""
        grouped: dict[str, list[str]] = {}
        for file, why in self.not_verified_why.items():
            if file not in leave_out:
                grouped.setdefault(why, []).append(file)
        return grouped

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "not_verified": self.not_verified, "passed": self.passed}

    def raise_for_failures(self, require_all: bool = False) -> None:
        """Raise VerificationFailed naming every failing artifact and why; with `require_all`, also naming the
        selected files that were not verified, and why (_why_not_checked)."""
        failing = [f"{r.artifact}{'' if r.runtime in runners.NATIVE_RUNTIMES else f' on {r.runtime}'}"
                   f"{'' if r.mode == formats.DEFAULT_MODE else f' {r.mode}'}: {'; '.join(r.failures)}"
                   for r in self.results if not r.passed]
        if failing:
            raise VerificationFailed(f"{len(failing)} of {len(self.results)} artifact(s) failed verification: "
                                     + " | ".join(failing))
        if require_all and self.not_verified:
            raise VerificationFailed("not verified (--require-all): " + " | ".join(
                f"{', '.join(files)}: {why}" for why, files in self.not_verified_by_reason().items()))


def _comparable(runner: runners.Runner, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(outputs comparable to the reference, predicted classes, what was compared) for one batch."""
    out = runner.run(pixels)
    n = len(pixels)
    if "log_probs" in out:
        values, predicted, compared = out["log_probs"], None, "log_probs"
    else:
        values, predicted, compared = out["probabilities"], out["digit"].reshape(-1), "probabilities"
        if predicted.shape != (n,):
            raise ArtifactError(f"{runner.label} returned {predicted.size} digits for {n} images")
    if values.shape != (n, 10):
        raise ArtifactError(f"{runner.label} returned shape {values.shape}, expected {(n, 10)}")
    return values, (values.argmax(1) if predicted is None else predicted), compared


def judge(tolerance: Tolerance, *, finite: bool, max_diff: float, agreement: int, n: int,
          accuracy_change: float, batch1_diff: float | None = None) -> list[str]:
    """Why measured outputs fail `tolerance` (empty: they pass); batch1_diff None: not judged."""
    failures = []
    if not finite:
        failures.append("outputs contain NaN or infinity")
    if tolerance.max_abs_diff is not None and not max_diff <= tolerance.max_abs_diff:
        failures.append(f"max |diff| {max_diff:.3g} > {tolerance.max_abs_diff:g}")
    if agreement < tolerance.min_agreement * n:
        failures.append(f"agreement {agreement:,}/{n:,} < {tolerance.min_agreement:.2%}")  # as the tables count
    if tolerance.max_accuracy_change is not None and abs(accuracy_change) > tolerance.max_accuracy_change:
        failures.append(f"accuracy changed by {accuracy_change:+.2f} points (limit {tolerance.max_accuracy_change:g})")
    if batch1_diff is not None and not batch1_diff <= tolerance.max_batch_diff:
        failures.append(f"batch 1 vs batch {n:,}: max |diff| {batch1_diff:.3g} > {tolerance.max_batch_diff:g}")
    return failures


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torch's intra-op threads set to one while images go through one at a time (where torch is loaded): one
    28x28 image is too little work to share, and a second thread waiting for a busy core stalls every call (on a
    2-core machine with the other core busy, pt2 and aoti ran several times slower with two threads)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check_runner(runner: runners.Runner, ref: Reference, tolerance: Tolerance, batch1_images: int) -> dict[str, Any]:
    """Run `runner` on every image, at full batch and image by image; the measured fields and failures."""
    outputs, predicted, compared = _comparable(runner, ref.pixels)
    expected = np.exp(ref.log_probs) if compared == "probabilities" else ref.log_probs
    diff = np.abs(outputs.astype(np.float64) - expected)
    agreement = int((predicted == ref.log_probs.argmax(1)).sum())
    accuracy = float("nan") if ref.labels is None else 100.0 * float((predicted == ref.labels).mean())
    k = min(batch1_images, len(ref.pixels))
    with _one_torch_thread():
        single = np.concatenate([_comparable(runner, ref.pixels[i:i + 1])[0] for i in range(k)]) if k else outputs[:0]
    batch1_diff = float(np.abs(single - outputs[:k]).max()) if k else 0.0
    n, max_diff = len(ref.pixels), float(diff.max())

    change = accuracy - ref.accuracy
    failures = judge(tolerance, finite=bool(np.isfinite(outputs).all()), max_diff=max_diff, agreement=agreement,
                     n=n, accuracy_change=change, batch1_diff=batch1_diff)
    return dict(compared=compared, n=n, max_abs_diff=max_diff, mean_abs_diff=float(diff.mean()),
                agreement=agreement, accuracy=accuracy, accuracy_delta=change, batch1_n=k,
                batch1_max_diff=batch1_diff, passed=not failures, failures=failures)


@dataclass(frozen=True)
class Job:
    """One artifact in one runtime and compute mode."""

    runtime: str
    artifact: Artifact
    mode: str = formats.DEFAULT_MODE

    @property
    def judged_as(self) -> str:
        return formats.judged_precision(self.artifact.precision, self.mode)


def plan(artifacts: list[Artifact], runtimes: list[str], device: str, modes: tuple[str, ...] = (),
         native_only: bool = False) -> tuple[list[Job], dict[str, str]]:
    """Every (runtime, artifact, mode) to check (with `native_only`, each file in its own runtime only); runtimes
    that cannot run on `device` are skipped with a note. A runtime's extra compute modes (OpenVINO bf16) apply to
    the fp32 files, where they change something; one this CPU only emulates is left out with a note unless
    `modes` names it (runners.choose_modes)."""
    todo, skipped = runners.runs(artifacts, runtimes, device, native_only=native_only)  # OpenVINO opens .onnx too
    todo, left_out = runners.choose_modes(todo, modes)
    return [Job(run.runtime, run.source, run.mode) for run in todo], {**skipped, **left_out}


def check_job(job: Job, device: str, judged_rows: calibration.JudgedRows, tolerances: dict[str, Tolerance],
              batch1_images: int, time_limit_s: float | None = None) -> ArtifactCheck:
    """Open the job's runner from the hash-checked bytes and judge it, on the rows of the reference that may judge
    it, by the tolerance of the precision it computes at (an OpenVINO bf16 job that computes f32 is judged as f32);
    what it raises (running past `time_limit_s` included) is its own failure."""
    t0 = time.perf_counter()
    ref = judged_rows.ref
    options = runners.RunnerOptions(device=device, mode=job.mode, time_limit_s=time_limit_s)
    try:
        runner = runners.open_runner(job.runtime, job.artifact, options)
        runner.inputs_as_given = ref.labels is None  # reference inputs are the model's own input
        computed = runner.computed_mode
        judged = formats.judged_precision(job.artifact.precision, computed)
        fields = check_runner(runner, judged_rows.of(job.artifact), tolerances[judged], batch1_images)
    except ArtifactError as e:
        return _not_run(job, device, len(ref.pixels), str(e))
    return ArtifactCheck(artifact=job.artifact.file, format=job.artifact.format, precision=job.artifact.precision,
                         provider=device, seconds=time.perf_counter() - t0, runtime=job.runtime, mode=job.mode,
                         judged_as=judged, computed_mode="" if computed == job.mode else computed,
                         also_calibrating=calibration.also_calibrating(job.artifact, ref), **fields)


def _not_run(job: Job, provider: str, n: int, why: str) -> ArtifactCheck:
    nan = float("nan")
    return ArtifactCheck(artifact=job.artifact.file, format=job.artifact.format, precision=job.artifact.precision,
                         provider=provider, compared="-", n=n, max_abs_diff=nan, mean_abs_diff=nan, agreement=0,
                         accuracy=nan, accuracy_delta=nan, batch1_n=0, batch1_max_diff=nan, seconds=0.0,
                         passed=False, failures=[f"not run: {why}"], runtime=job.runtime, mode=job.mode,
                         judged_as=job.judged_as)


def _unverified(selection: runners.Selection, artifacts: list[Artifact], jobs: list[Job], device: str,
                native_only: bool) -> dict[str, list[str]]:
    """Each runtime that is not installed but would have checked a selected file (only those are noted), with the
    files that no other runtime checks (TorchScript without torch): left out with a note, not failed."""
    checked = {job.artifact.file for job in jobs}
    return {name: [a.file for a in todo if a.file not in checked]
            for name, todo in runners.would_run(selection, artifacts, [device], native_only=native_only).items()}


def _why_not_checked(artifacts: list[Artifact], jobs: list[Job], selection: runners.Selection,
                     skipped: dict[str, str], native_only: bool) -> dict[str, str]:
    """Each selected file that no job checks, and why: the runtimes that open it are not installed or cannot run
    on the device (their notes in `selection.skipped` and `skipped`), or no runtime selected opens it at all."""
    checked = {job.artifact.file for job in jobs}
    left_out = {**selection.skipped, **skipped}
    why = {}
    for a in artifacts:
        if a.file in checked:
            continue
        native = formats.FORMATS[a.format].native_runtime
        openers = [name for name in (*selection.runtimes, *selection.skipped)
                   if runners.RUNTIMES[name].opens(a.format, a.precision) and (not native_only or name == native)]
        reasons = [f"runtime {name} {left_out[name]}" for name in openers if name in left_out]
        some_precisions = [f"{name} runs only {', '.join(runners.RUNTIMES[name].precisions)} files"
                           for name in selection.runtimes if a.format in runners.RUNTIMES[name].formats]
        why[a.file] = "; ".join(reasons or some_precisions) or (
            f"no selected runtime ({', '.join(selection.runtimes)}) opens {a.format} files")
    return why


def _nothing_to_verify(folder: Path, selection: runners.Selection, unverified: dict[str, list[str]],
                       skipped: dict[str, str]) -> ArtifactError:
    """Why no file can be checked: none is selected, or each one's runtime is not installed or cannot run here."""
    why = [f"{', '.join(files)} {'needs' if len(files) == 1 else 'need'} runtime {name}, {selection.skipped[name]}"
           for name, files in unverified.items() if files] + [f"runtime {name} {n}" for name, n in skipped.items()]
    return ArtifactError(f"nothing in {folder}/ can be verified here: {'; '.join(why)}" if why else
                         f"no artifact in {folder}/ matches the formats/precisions asked for in runtime(s) "
                         f"{', '.join(selection.runtimes) or 'none'}")


def verify(config: VerifyConfig, on_artifact: Callable[[ArtifactCheck], None] | None = None,
           on_progress: Callable[[int, int, str], None] | None = None) -> VerifyReport:
    """Verify every selected artifact in `config.artifacts`, in each selected runtime, against its checkpoint's
    PyTorch outputs (see reference.resolve_reference for where they come from).

    on_artifact(result) follows each finished check; on_progress(done, total, what) says what starts next,
    the reference's outputs being the first of the steps."""
    def progress(done: int, what: str) -> None:
        if on_progress:
            on_progress(done, len(jobs) + 1, what)

    t0 = time.perf_counter()
    selection = runners.select_runtimes(config.runtimes, default=runners.NATIVE_RUNTIMES)
    folder = Path(config.artifacts)
    artifacts = select(read_manifest(folder), list(config.formats), list(config.precisions))
    # by default each file in its own runtime only
    jobs, skipped = plan(artifacts, selection.runtimes, config.provider, config.modes, native_only=not config.runtimes)
    unverified = _unverified(selection, artifacts, jobs, config.provider, native_only=not config.runtimes)
    if not jobs:
        raise _nothing_to_verify(folder, selection, unverified, skipped)
    skipped = {**{name: selection.skipped[name] for name in unverified}, **skipped}
    progress(0, f"reference outputs ({config.reference or 'auto'})")
    ref = resolve_reference(folder, artifacts, config.checkpoint, config.reference, config.data_dir)
    judged_rows = calibration.JudgedRows(ref)  # each entry checked once, however many runtimes run its file
    for artifact in artifacts:  # a manifest that cannot say which rows judge an int8 file is refused, not guessed
        judged_rows.check(artifact)
    results = []
    for i, job in enumerate(jobs, 1):
        mode = "" if job.mode == formats.DEFAULT_MODE else f" {job.mode}"
        progress(i, f"{job.artifact.file} in {job.runtime}{mode}")
        # the runner opens the hash-checked bytes: a file that is not what was exported is "not run", never loaded
        result = check_job(job, config.provider, judged_rows, config.tolerances, config.batch1_images,
                           config.time_limit_s)
        if job.artifact.source_sha256 != ref.source_sha256:
            result.failures.append("exported from a different checkpoint than the one verified against")
        result.passed = not result.failures
        results.append(result)
        if on_artifact:
            on_artifact(result)
    progress(len(jobs) + 1, "done")
    used = sorted({job.runtime for job in jobs}, key=list(runners.RUNTIMES).index)
    return VerifyReport(
        checkpoint=ref.checkpoint, checkpoint_sha256=ref.source_sha256, reference_accuracy=ref.accuracy,
        n=len(ref.pixels), provider=config.provider, results=results,
        tolerances={k: asdict(v) for k, v in config.tolerances.items()},
        versions=sysinfo.versions("torch", "onnx", "onnxruntime-gpu", "onnxruntime"),
        seconds=time.perf_counter() - t0, runtimes=runners.runtime_versions(used),
        skipped=skipped, unverified={name: files for name, files in unverified.items() if files}, reference=ref.name,
        reference_note=ref.note,
        not_verified_why=_why_not_checked(artifacts, jobs, selection, skipped, native_only=not config.runtimes))
