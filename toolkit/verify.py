"""Prove that exported artifacts compute what PyTorch computes, on all 10,000 MNIST test images.

Every artifact is run on the whole test set at once and image by image; its outputs are compared with the
checkpoint's PyTorch outputs; each failure is collected, and the report names all of them.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import data as mnist
from toolkit import fileio, sysinfo
from toolkit.artifacts import Artifact, find_checkpoint, check_files, read_manifest, read_verified, select
from toolkit.errors import ArtifactError, ConfigError, VerificationFailed
from toolkit.runtime import check_provider, create_session, describe, normalize


@dataclass(frozen=True)
class Tolerance:
    """What an artifact of one precision must achieve against PyTorch fp32."""

    max_abs_diff: float | None  # on log-probabilities (probabilities for onnx-app); None: not judged
    min_agreement: float  # fraction of argmax predictions equal to PyTorch's
    max_accuracy_change: float | None  # |accuracy - PyTorch accuracy| in points; None: not judged
    max_batch_diff: float  # batch 1 vs full batch, max |difference| of outputs


DEFAULT_TOLERANCES = {
    "fp32": Tolerance(max_abs_diff=1e-4, min_agreement=1.0, max_accuracy_change=None, max_batch_diff=1e-4),
    "fp16": Tolerance(max_abs_diff=None, min_agreement=0.999, max_accuracy_change=0.1, max_batch_diff=1e-2),
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
            raise ConfigError(f"bad tolerance {item!r}; use PRECISION.FIELD=NUMBER with PRECISION in "
                              f"{', '.join(DEFAULT_TOLERANCES)} and FIELD in {', '.join(asdict(DEFAULT_TOLERANCES['fp32']))}") from None
    return tolerances


@dataclass(frozen=True)
class VerifyConfig:
    artifacts: str = "exported"
    checkpoint: str | None = None  # default: the checkpoint the manifest names
    data_dir: str = "data"
    provider: str = "cpu"
    formats: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    batch1_images: int = 2000  # how many test images also go through one at a time
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))


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

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def raise_for_failures(self) -> None:
        """Raise VerificationFailed naming every failing artifact and why."""
        failing = [f"{r.artifact}: {'; '.join(r.failures)}" for r in self.results if not r.passed]
        if failing:
            raise VerificationFailed(f"{len(failing)} of {len(self.results)} artifact(s) failed verification: "
                                     + " | ".join(failing))


# A runner maps uint8 images [N, 28, 28] to (outputs comparable to the reference, predicted classes).
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _onnx_runner(artifact: Artifact, provider: str) -> tuple[Runner, str]:
    session = create_session(read_verified(artifact), provider, label=artifact.file)
    info = describe(session, artifact.file)
    expected = "app" if artifact.format == "onnx-app" else "normalized"
    if info.kind != expected:
        raise ArtifactError(f"{artifact.file}: manifest says {artifact.format} but its input is {info.kind}")
    if info.kind == "app":
        def run_app(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            probs, digit = session.run(None, {info.input_name: pixels})
            return probs, digit
        return run_app, "probabilities"

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = session.run(None, {info.input_name: normalize(pixels, mnist.MEAN, mnist.STD)})[0]
        return out, out.argmax(1)
    return run, "log_probs"


def _torchscript_runner(artifact: Artifact, provider: str) -> tuple[Runner, str]:
    import torch

    device = "cuda" if provider in ("cuda", "tensorrt") else "cpu"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            module = torch.jit.load(io.BytesIO(read_verified(artifact)), map_location=device)
    except Exception as e:  # torch.jit raises RuntimeError and others for damaged archives
        raise ArtifactError(f"{artifact.file} is not a loadable TorchScript file "
                            f"({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__})") from None

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            x = torch.from_numpy(normalize(pixels, mnist.MEAN, mnist.STD)).to(device)
            out = module(x).float().cpu().numpy()
        return out, out.argmax(1)
    return run, "log_probs"


RUNNERS: dict[str, Callable[[Artifact, str], tuple[Runner, str]]] = {
    "onnx": _onnx_runner,
    "onnx-app": _onnx_runner,
    "torchscript": _torchscript_runner,
}


def reference_outputs(checkpoint: str, pixels: np.ndarray) -> np.ndarray:
    """PyTorch fp32 log-probabilities of the checkpoint's model on the CPU."""
    import torch

    from toolkit.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(checkpoint))
    x = torch.from_numpy(normalize(pixels, mnist.MEAN, mnist.STD))
    with torch.inference_mode():
        return torch.cat([model(x[i:i + 2000]) for i in range(0, len(x), 2000)]).numpy()


def check_artifact(artifact: Artifact, provider: str, pixels: np.ndarray, labels: np.ndarray,
                   reference: np.ndarray, tolerance: Tolerance, batch1_images: int) -> ArtifactCheck:
    """Run one artifact on every image, at full batch and image by image, and judge it."""
    t0 = time.perf_counter()
    if artifact.format not in RUNNERS:
        raise ArtifactError(f"{artifact.file}: unknown format {artifact.format!r}")
    runner, compared = RUNNERS[artifact.format](artifact, provider)
    outputs, predicted = runner(pixels)
    expected = np.exp(reference) if compared == "probabilities" else reference
    if outputs.shape != expected.shape:
        raise ArtifactError(f"{artifact.file} returned shape {outputs.shape}, expected {expected.shape}")
    diff = np.abs(outputs.astype(np.float64) - expected)
    ref_pred = reference.argmax(1)
    agreement = int((predicted == ref_pred).sum())
    accuracy = 100.0 * float((predicted == labels).mean())
    ref_accuracy = 100.0 * float((ref_pred == labels).mean())

    k = min(batch1_images, len(pixels))
    single = np.concatenate([runner(pixels[i:i + 1])[0] for i in range(k)]) if k else outputs[:0]
    batch1_diff = float(np.abs(single - outputs[:k]).max()) if k else 0.0

    failures = []
    n = len(pixels)
    max_diff = float(diff.max())
    if not np.isfinite(outputs).all():
        failures.append("outputs contain NaN or infinity")
    if tolerance.max_abs_diff is not None and not max_diff <= tolerance.max_abs_diff:
        failures.append(f"max |diff| {max_diff:.3g} > {tolerance.max_abs_diff:g}")
    if agreement < tolerance.min_agreement * n:
        failures.append(f"agreement {agreement}/{n} < {tolerance.min_agreement:.2%}")
    if tolerance.max_accuracy_change is not None and abs(accuracy - ref_accuracy) > tolerance.max_accuracy_change:
        failures.append(f"accuracy changed by {accuracy - ref_accuracy:+.2f} points "
                        f"(limit {tolerance.max_accuracy_change:g})")
    if not batch1_diff <= tolerance.max_batch_diff:
        failures.append(f"batch 1 vs batch {n}: max |diff| {batch1_diff:.3g} > {tolerance.max_batch_diff:g}")
    return ArtifactCheck(
        artifact=artifact.file, format=artifact.format, precision=artifact.precision, provider=provider,
        compared=compared, n=n, max_abs_diff=max_diff, mean_abs_diff=float(diff.mean()), agreement=agreement,
        accuracy=accuracy, accuracy_delta=accuracy - ref_accuracy, batch1_n=k, batch1_max_diff=batch1_diff,
        seconds=time.perf_counter() - t0, passed=not failures, failures=failures)


def _not_run(artifact: Artifact, provider: str, n: int, why: str) -> ArtifactCheck:
    nan = float("nan")
    return ArtifactCheck(artifact=artifact.file, format=artifact.format, precision=artifact.precision,
                         provider=provider, compared="-", n=n, max_abs_diff=nan, mean_abs_diff=nan, agreement=0,
                         accuracy=nan, accuracy_delta=nan, batch1_n=0, batch1_max_diff=nan, seconds=0.0,
                         passed=False, failures=[f"not run: {why}"])


def verify(config: VerifyConfig, on_artifact: Callable[[ArtifactCheck], None] | None = None) -> VerifyReport:
    """Verify every selected artifact in `config.artifacts` against its source checkpoint."""
    t0 = time.perf_counter()
    check_provider(config.provider)
    folder = Path(config.artifacts)
    artifacts = select(read_manifest(folder), list(config.formats), list(config.precisions))
    if not artifacts:
        raise ArtifactError(f"no artifact in {folder}/ matches the formats/precisions asked for")
    checkpoint = find_checkpoint(folder, artifacts, config.checkpoint)
    checkpoint_sha = fileio.file_digest(checkpoint) if Path(checkpoint).is_file() else ""
    pixels, labels = mnist.load_split(config.data_dir, "test")
    reference = reference_outputs(checkpoint, pixels)
    problems = check_files(artifacts)

    results = []
    for artifact in artifacts:
        tolerance = config.tolerances[artifact.precision]
        if artifact.file in problems:  # never load a file that is not what was exported (TorchScript is code)
            result = _not_run(artifact, config.provider, len(pixels), problems[artifact.file])
        else:
            result = check_artifact(artifact, config.provider, pixels, labels, reference, tolerance,
                                    config.batch1_images)
            if artifact.source_sha256 != checkpoint_sha:
                result.failures.append("exported from a different checkpoint than the one verified against")
            result.passed = not result.failures
        results.append(result)
        if on_artifact:
            on_artifact(result)
    ref_accuracy = 100.0 * float((reference.argmax(1) == labels).mean())
    return VerifyReport(
        checkpoint=str(checkpoint), checkpoint_sha256=checkpoint_sha, reference_accuracy=ref_accuracy,
        n=len(pixels), provider=config.provider, results=results,
        tolerances={k: asdict(v) for k, v in config.tolerances.items()},
        versions=sysinfo.versions("torch", "onnx", "onnxruntime-gpu", "onnxruntime"),
        seconds=time.perf_counter() - t0)
