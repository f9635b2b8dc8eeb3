"""Compare model files on all 10,000 MNIST test images: does B (and each further file) compute what A computes?

Either file may be ONNX or TorchScript, toolkit-made or not (see runners/foreign.py for how a foreign file is fed).
A is the reference: B is judged against it with verify's tolerances and verify's judgement (max and mean
|diff| of the compared outputs, argmax agreement, accuracy change), and each one's accuracy is reported.

What is compared is said in the report: both files' class scores as the same kind of values. By default
(`as_="auto"`) scores of the same kind are compared as given; otherwise both are turned into probabilities
when either gives probabilities, else into log-probabilities (log-softmax of logits).

When A is a toolkit file of an export made with --input-shape (its model takes no MNIST image), every file is fed
that export's reference inputs, checked against the manifest as verify checks them, and each toolkit file of such
an export is opened as its artifact, as bench opens it; there are no labels, so no accuracy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import artifacts, calibration, devices, fileio, formats, refinputs, sysinfo
from toolkit import data as mnist
from toolkit.errors import ConfigError, VerificationFailed
from toolkit.model_files import listed_artifact
from toolkit.reference import Reference, resolve_reference
from toolkit.runners import Runner, RunnerOptions, open_runner
from toolkit.runners.base import DEFAULT_TIME_LIMIT_S, check_time_limit
from toolkit.runners.feeding import Preprocessing, options_set, refuse_unused
from toolkit.runners.foreign import (
    ForeignOnnxRunner,
    open_file,
    options_taken,
    random_pixels,
    runtimes_for,
    scores,
    scores_kind,
)
from toolkit.verify import DEFAULT_TOLERANCES, Tolerance, judge

MNIST_INPUT = "MNIST test images"
REFERENCE_INPUTS = "reference inputs"  # an --input-shape export's own inputs (inputs.npy), which have no labels
TORCH_RUNTIMES = ("torchscript", "torch-export", "aoti")
CHUNK_IMAGES = 1000  # images per call, so progress can be reported as the run goes
COMPARE_AS = ("auto", "log_probs", "probabilities", "raw")
_OPTIONAL = ("max_abs_diff", "max_accuracy_change")  # may be switched off with "none"


def parse_tolerance(items: list[str], preset: str = "fp32") -> Tolerance:
    """verify's tolerance for `preset` with 'FIELD=VALUE' overrides (VALUE 'none' switches a limit off)."""
    if preset not in DEFAULT_TOLERANCES:
        raise ConfigError(f"unknown --judge-as {preset!r}; use {', '.join(DEFAULT_TOLERANCES)}")
    fields = asdict(DEFAULT_TOLERANCES[preset])
    names = [n for n in fields if n != "max_batch_diff"]
    for item in items:
        name, _, value = item.partition("=")
        try:
            if name not in names:
                raise KeyError(name)
            fields[name] = None if value.strip().lower() == "none" and name in _OPTIONAL else float(value)
        except (ValueError, KeyError):
            raise ConfigError(f"bad tolerance {item!r}; use FIELD=NUMBER with FIELD in {', '.join(names)} "
                              f"(none switches off {' or '.join(_OPTIONAL)})") from None
    return Tolerance(**fields)


@dataclass(frozen=True)
class CompareConfig:
    a: str
    b: str
    data_dir: str = "data"
    provider: str = "cpu"
    prep_a: Preprocessing = Preprocessing()
    prep_b: Preprocessing = Preprocessing()
    as_: str = "auto"
    tolerance: Tolerance = DEFAULT_TOLERANCES["fp32"]
    limit: int | None = None  # the first N test images only (None: all 10,000)
    more: tuple[str, ...] = ()  # further files, each judged against A like B (with B's preprocessing)
    time_limit_s: float = DEFAULT_TIME_LIMIT_S  # per model call: a file the toolkit did not write may never end
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # --shape: dynamic dimensions of ONNX inputs
    options_given: tuple[str, ...] = ()  # of feeding.FILE_OPTIONS, those set: one no file takes is refused
    layout_per_file: bool = False  # --layout A,B: prep_a's layout given for A alone, prep_b's for B and the rest

    def __post_init__(self) -> None:
        check_time_limit(self.time_limit_s)
        if self.as_ not in COMPARE_AS:
            raise ConfigError(f"unknown --as {self.as_!r}; use {', '.join(COMPARE_AS)}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or not 1 <= self.limit <= 10_000):
            raise ConfigError("--limit must be between 1 and 10000")
        for path in (self.a, self.b, *self.more):
            if not Path(path).is_file():
                raise ConfigError(f"{path} {fileio.absent(path)}")
        devices.check(self.provider)


@dataclass
class Side:
    file: str
    runtime: str
    toolkit_model: bool  # a toolkit file fed as itself (its own normalization); else preprocessing applies
    outputs: str  # what the file gives: log_probs, probabilities or logits
    accuracy: float | None  # None: the file was fed random data (its input is not MNIST-shaped)
    preprocessing: dict[str, Any]
    input: str = MNIST_INPUT  # what it was fed: MNIST test images, or random data of its declared inputs
    # an int8 file of the export whose reference inputs were fed (toolkit.calibration): how many of them are held out
    # from its calibration, where it was calibrated on the others (every file is then compared on those only), and
    # how many of the n rows judged also calibrated it, where it was calibrated on --calibration-inputs; as verify
    # reports them. The manifest records how many of all the reference inputs calibrated it, not which: of fewer
    # rows (--limit), the count is known only as a range, [at least, at most] (then also_calibrating is None, and
    # the JSON, as bench's, has also_calibrating_range in its place)
    held_out: int = 0
    also_calibrating: int | None = 0
    also_calibrating_range: list[int] | None = None


@dataclass
class CompareReport:
    a: Side
    b: Side
    n: int
    compared: str  # the kind of values both were turned into before |diff|
    max_abs_diff: float
    mean_abs_diff: float
    agreement: int
    accuracy_delta: float | None  # B - A, in points; None on random data
    tolerance: dict[str, Any]
    failures: list[str]
    seconds: float
    versions: dict[str, str] = field(default_factory=dict)
    inputs: str = MNIST_INPUT  # what both files were fed
    reference_inputs: int | None = None  # how many reference inputs A's export has, where they were fed

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "a": _side_json(self.a), "b": _side_json(self.b), "passed": self.passed}


def _side_json(side: Side) -> dict[str, Any]:
    """A file's side of a report: also_calibrating, or in its place also_calibrating_range where it is a range."""
    drop = "also_calibrating" if side.also_calibrating_range else "also_calibrating_range"
    return {k: v for k, v in asdict(side).items() if k != drop}


def reports_json(reports: list[CompareReport]) -> dict[str, Any]:
    """Two files: their report as it always was; more: A once, then each file's report against it."""
    if len(reports) == 1:
        return reports[0].to_json()
    return {"reference": _side_json(reports[0].a), "comparisons": [r.to_json() for r in reports],
            "passed": all(r.passed for r in reports)}


def raise_for_failures(reports: list[CompareReport]) -> None:
    """One VerificationFailed naming every file that differs from A."""
    failed = [r for r in reports if not r.passed]
    if failed:
        raise VerificationFailed("; ".join(f"{r.b.file} differs from {r.a.file}: {'; '.join(r.failures)}"
                                           for r in failed))


def convert(values: np.ndarray, kind: str, to: str) -> np.ndarray:
    """Class scores of `kind` as `to` (log_probs or probabilities)."""
    if kind == to:
        return values
    if kind == "probabilities":  # -> log_probs
        return np.log(np.maximum(values, np.finfo(np.float64).tiny))
    shifted = values - values.max(1, keepdims=True)  # logits or log_probs
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return np.exp(log_probs) if to == "probabilities" else log_probs


def target_kind(a: str, b: str, as_: str) -> str:
    if as_ == "raw" or (as_ == "auto" and a == b):
        return a if a == b else "raw"
    if as_ != "auto":
        return as_
    return "probabilities" if "probabilities" in (a, b) else "log_probs"


def label(k: int) -> str:
    """The k-th file's label (from 0), as the help names them: A, B, C, ... Z, then #27, #28, ..."""
    return chr(ord("A") + k) if k < 26 else f"#{k + 1}"


def compare(config: CompareConfig, on_progress: Callable[[int, int, str], None] | None = None) -> CompareReport:
    """Run A and B on the same inputs and judge B against A; on random data (a file whose input is not
    MNIST-shaped) there is no accuracy, and both must then take the same inputs. on_progress(done, total, what)
    follows each chunk of images: done and total count the images of both runs (each image twice)."""
    return compare_all(config, on_progress)[0]


def compare_all(config: CompareConfig,
                on_progress: Callable[[int, int, str], None] | None = None) -> list[CompareReport]:
    """A run once, then B and each of `config.more` run and judged against it: one report per file after A.
    What A takes decides the inputs, so the MNIST test set is loaded only for files that take images.
    on_progress counts the images of every run."""
    t0 = time.perf_counter()
    options = RunnerOptions(device=config.provider, time_limit_s=config.time_limit_s)
    paths = [config.a, config.b, *config.more]
    export_a = _own_export(config.a)
    full = _exported_inputs(export_a, config.data_dir)
    _refuse_unused(config, paths, full is not None)
    exports = [export_a, *map(_own_export, paths[1:])]  # each file's manifest entry, read once
    own, held_out = _rows_judged([a for a, _ in exports], full) if full is not None else (None, [])
    n = min(config.limit or 10_000, len(own.pixels) if own else 10_000)
    total, report = len(paths) * n, on_progress or (lambda done, total, what: None)
    measured, feeds = [], []
    for k, path in enumerate(paths):
        tag, offset = label(k), k * n
        prep = config.prep_a if k == 0 else config.prep_b
        report(offset, total, f"opening {tag}: {Path(path).name}")
        runner, feed = _open(path, exports[k], options, prep, config.shapes, own)
        feeds.append(feed)
        if k == 0:
            pixels, labels = (own.pixels[:n], None) if own else _inputs(config.data_dir, feed == MNIST_INPUT, n)
        elif feeds[k] != feeds[0]:
            raise ConfigError(f"{config.a} and {path} do not take the same inputs (A: {feeds[0]}; {path}: "
                              f"{feeds[k]}): there is nothing to compare them on")
        measured.append(_measure(path, tag, runner, prep, pixels, labels,
                                 lambda done, what, offset=offset: report(offset + done, total, what)))
        if full is not None:  # as verify reports an int8 file judged on some of these inputs, or its calibration's
            measured[-1][0].held_out = held_out[k]
            _count_also_calibrating(measured[-1][0], exports[k][0], full, n)
    rows = len(full.pixels) if full is not None else None
    return [_judged(config, [measured[0], side], n, t0, rows) for side in measured[1:]]


def _count_also_calibrating(side: Side, artifact: artifacts.Artifact | None, full: Reference, n: int) -> None:
    """How many of the n rows of the reference inputs (`full`) that judged `side` also calibrated its file
    (toolkit.calibration): exact where its manifest entry settles it, else the range it leaves open."""
    least, most = calibration.also_calibrating_among(artifact, full, n, len(full.pixels))
    side.also_calibrating, side.also_calibrating_range = (most, None) if least == most else (None, [least, most])


def _rows_judged(entries: list[artifacts.Artifact | None], own: Reference) -> tuple[Reference, list[int]]:
    """The reference inputs of A's export (`own`) cut to the rows that may judge every file (`entries`: their
    manifest entries), as verify judges each (an int8 file calibrated on some of them: the others), and for each
    file how many of them are held out from its calibration (0: it was not calibrated on some of them)."""
    held_out = []
    for artifact in entries:
        cut = calibration.judged_rows(artifact, own)
        held_out.append(len(cut.pixels) if cut is not own else 0)
        own = cut
    return own, held_out


def _refuse_unused(config: CompareConfig, paths: list[str], own: bool) -> None:
    """ConfigError for an option of how a foreign file is fed that no file here takes, as `_open` opens them: on
    the reference inputs of A's export (`own`), fed as they are, no file takes --mean, --std or --layout, and a
    file of an export opens as its artifact. A layout given for A alone, or for B and the files after it
    (--layout A,B), must be taken there."""
    given = options_set(config.options_given, config.shapes)
    if not given:  # nothing to refuse: no file is opened or read for it
        return
    if not own:
        taken = [options_taken(p, config.shapes) for p in paths]
        refuse_unused(given, taken)
        if "layout" in given and config.layout_per_file:
            _refuse_unused_layouts(config, paths, taken)
        return
    refuse_unused(given - {"shape"}, [], "every file is fed the reference inputs of A's export as they are")
    refuse_unused(given, [frozenset() if listed_artifact(p) else options_taken(p, config.shapes) for p in paths])


def _refuse_unused_layouts(config: CompareConfig, paths: list[str], taken: list[frozenset[str]]) -> None:
    """ConfigError for a layout of --layout A,B (other than auto) that its own files do not take: A's by A, B's by
    B and every file after it; the error names the files."""
    both = f"{config.prep_a.layout},{config.prep_b.layout}"
    for layout, first, end in ((config.prep_a.layout, 0, 1), (config.prep_b.layout, 1, len(paths))):
        if layout != "auto" and not any("layout" in t for t in taken[first:end]):
            whom = ", ".join(f"{label(k)} ({paths[k]})" for k in range(first, end))
            which = "it is not one" if end - first == 1 else "none of them is one"
            raise ConfigError(f"--layout {both} gives {whom} layout {layout}, but a layout is for a foreign file fed "
                              f"images (how pixels become its input), and {which}; give auto in its place")


Export = tuple[artifacts.Artifact | None, list[int] | None]  # a file's manifest entry, and its export's input shape


def _exported_inputs(export: Export, data_dir: str) -> Reference | None:
    """verify's reference for the export a toolkit file is of (`export`: its `_own_export`, whose input shape is
    that of the reference inputs' entry), when that export was made with --input-shape (its reference inputs,
    checked against the manifest as verify and bench check them); else None."""
    artifact, shape = export
    if shape is None:
        return None
    folder = Path(artifact.path).parent
    return resolve_reference(folder, artifacts.read_manifest(folder), None, "auto", data_dir)


def _own_export(path: str) -> Export:
    """`path`'s entry in the manifest beside it (None: a loose file), and the input shape of that export where it
    was made with --input-shape (None: it takes MNIST images)."""
    artifact = listed_artifact(path)
    return artifact, refinputs.other_input_shape(str(Path(artifact.path).parent)) if artifact else None


def _reference_feed(shape: Any) -> str:
    return f"{REFERENCE_INPUTS} float32[N,{','.join(map(str, shape))}]"


def _open(path: str, export: Export, options: RunnerOptions, prep: Preprocessing, shapes: dict[str, tuple[int, ...]],
          own: Reference | None) -> tuple[Runner | None, str]:
    """The file opened, and what it is fed. Against an --input-shape export's reference inputs (`own`), a toolkit
    file of an export of that input shape opens as its artifact and takes them as given, and so does an .onnx of
    no export whose one input is float32 of that shape; any other file is not opened (None): what it is said to
    take differs from A's, and it is refused. `export`: the file's `_own_export`."""
    artifact, shape = export
    if own is None:
        runner = open_file(path, options, prep, shapes)
        if shape is not None and getattr(runner, "takes_images", True):  # its IR or .pt2 would be fed MNIST
            return None, _reference_feed(shape)
        return runner, _feed_of(runner)
    wanted = own.pixels.shape[1:]
    if artifact is None:
        runner = open_file(path, options, prep, shapes)
        if not _takes_as_given(runner, wanted):
            return None, "not a file of an export made with --input-shape, nor an .onnx of one float32 input " \
                         f"[N,{','.join(map(str, wanted))}]"
    elif shape is None:
        return None, "not a file of an export made with --input-shape"
    elif tuple(shape) != wanted:
        return None, _reference_feed(shape)
    else:
        runner = open_runner(runtimes_for(path)[0], artifact, options)
    runner.inputs_as_given = True  # the model's own input already, as verify feeds it
    return runner, _reference_feed(wanted)


def _takes_as_given(runner: Runner, shape: tuple[int, ...]) -> bool:
    """Whether `runner` is a foreign .onnx whose one input is float32 [N, *shape]: it can take reference inputs of
    that shape as they are."""
    inputs = getattr(runner, "inputs", [])
    return (isinstance(runner, ForeignOnnxRunner) and len(inputs) == 1 and inputs[0].dtype == np.float32
            and inputs[0].rest == tuple(shape) and inputs[0].batch_fixed is None)


def _inputs(data_dir: str, images: bool, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The first n MNIST test images and their labels; for files that take no image, n random images and no
    labels, so that such files need no MNIST at all."""
    if not images:
        return random_pixels(n), None
    pixels, labels = mnist.load_split(data_dir, "test")
    return pixels[:n], labels[:n]


def _measure(path: str, tag: str, runner: Any, prep: Preprocessing, pixels: np.ndarray, labels: np.ndarray | None,
             report: Callable[[int, str], None]) -> tuple[Side, np.ndarray, str]:
    """One opened file run on the inputs: its side of the report, and its scores and their kind."""
    what = f"{tag}: {Path(path).name} in {runner.runtime}"
    values, kind = _scores_in_chunks(runner, pixels, lambda done: report(done, what))
    toolkit_model = runner.kind in formats.OUTPUTS
    images = labels is not None
    as_given = getattr(runner, "inputs_as_given", False)  # reference inputs, fed unchanged: no normalization
    if as_given:
        preprocessing = {"from": refinputs.PREPROCESSING, "mean": 0.0, "std": 1.0}
    elif toolkit_model:  # a torch file the toolkit made is fed as its export says, as verify feeds it
        source = "its export (the manifest beside it)" if runner.runtime in TORCH_RUNTIMES else \
            "the file's toolkit metadata"
        preprocessing = {"from": source, "mean": runner.mean, "std": runner.std}
    elif not getattr(runner, "takes_images", True):
        preprocessing = {"from": "none: random data of its own inputs"}  # --mean, --std and --layout do nothing
    elif not getattr(runner, "normalizes", True):  # an integer image input: --mean and --std do nothing
        preprocessing = {"from": f"none: raw pixels 0..255 as {np.dtype(runner.image.dtype).name}",
                         "layout": prep.layout}
    else:
        preprocessing = asdict(prep)
    side = Side(file=str(path), runtime=runner.runtime, toolkit_model=toolkit_model, outputs=kind,
                accuracy=100.0 * float((values.argmax(1) == labels).mean()) if images else None,
                preprocessing=preprocessing, input=MNIST_INPUT if images else REFERENCE_INPUTS if as_given
                else "random data")
    return side, values, kind


def _scores_in_chunks(runner: Any, pixels: np.ndarray, on_chunk: Callable[[int], None]) -> tuple[np.ndarray, str]:
    """`scores` a chunk of images at a time (a multiple of a fixed batch, where the file has one), with
    on_chunk(images done) after each; the kind is judged on all the scores together, as in one call."""
    fixed = next((i.batch_fixed for i in getattr(runner, "inputs", []) if i.batch_fixed), None)
    step = max(fixed, CHUNK_IMAGES // fixed * fixed) if fixed else CHUNK_IMAGES
    parts, kinds = [], []
    for start in range(0, len(pixels), step):
        values, kind = scores(runner, pixels[start:start + step])
        parts.append(values)
        kinds.append(kind)
        on_chunk(start + len(values))
    values = np.concatenate(parts)
    return values, kinds[0] if len(set(kinds)) == 1 else scores_kind(values)


def _feed_of(runner: Any) -> str:
    """What a runner is fed: MNIST images, or random data of its declared inputs (named, to match A and B)."""
    if getattr(runner, "takes_images", True):
        return MNIST_INPUT
    return "random data for " + ", ".join(f"{i.name} {np.dtype(i.dtype).name}[N,{','.join(map(str, i.rest))}]"
                                          for i in runner.inputs)


def _judged(config: CompareConfig, measured: list, n: int, t0: float,
            reference_inputs: int | None = None) -> CompareReport:
    (a, va, ka), (b, vb, kb) = measured
    compared = target_kind(ka, kb, config.as_)
    if compared != "raw":
        va, vb = convert(va, ka, compared), convert(vb, kb, compared)
    diff = np.abs(va - vb)
    finite = bool(np.isfinite(va).all() and np.isfinite(vb).all())
    max_diff = float(diff.max()) if finite else math.nan
    agreement = int((va.argmax(1) == vb.argmax(1)).sum())
    change = None if a.accuracy is None else b.accuracy - a.accuracy
    failures = judge(config.tolerance, finite=finite, max_diff=max_diff, agreement=agreement, n=n,
                     accuracy_change=change or 0.0)
    return CompareReport(a=a, b=b, n=n, compared=compared if compared != "raw" else f"raw ({ka} vs {kb})",
                         max_abs_diff=max_diff, mean_abs_diff=float(diff.mean()) if finite else math.nan,
                         agreement=agreement, accuracy_delta=change, tolerance=asdict(config.tolerance),
                         failures=failures, seconds=time.perf_counter() - t0,
                         versions=sysinfo.versions("torch", "onnx", "onnxruntime-gpu", "onnxruntime"),
                         inputs=a.input if a.input == b.input else f"{a.input} / {b.input}",
                         reference_inputs=reference_inputs)
