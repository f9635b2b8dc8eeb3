"""`bench FILE...`: model files timed alone, each in every runtime (and device) here that opens it.

An .onnx runs in ONNX Runtime, OpenVINO and OpenCV; a .pt2, .aoti.pt2, TorchScript, .pte, .tflite or IR .xml in
its own runtime (runners/foreign.py says which). A file whose input is an MNIST image gets the MNIST test images
when the data folder holds them; any other file, or any file without the data, gets random inputs of its
declared shapes, and the report says which per file. A toolkit file (one the manifest beside it lists) goes the
way of bench over its folder: opened as that artifact, with the same checks, and verified against its export's
reference; any other file has no reference, and nothing is verified.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import calibration, devices, fileio, sysinfo
from toolkit.artifacts import Artifact, read_manifest
from toolkit.bench.config import BenchConfig
from toolkit.bench.search import Candidate, Opener, Plan, candidates_of, sample
from toolkit.errors import ArtifactError, ConfigError, ProviderUnavailable, ToolkitError
from toolkit.formats import DEFAULT_MODE, PRECISIONS
from toolkit.model_files import listed_artifact
from toolkit.refinputs import other_input_shape
from toolkit.runners import RUNTIMES, Runner, RunnerOptions, modes_to_run, open_runner, select_runtimes

MNIST_INPUTS = "MNIST test images"
RANDOM_INPUTS = "random inputs"
REFERENCE_INPUTS = "its export's reference inputs"


@dataclass
class BenchFile:
    """One file of the run: what it was timed in, on which inputs, and what was left out and why."""

    file: str
    name: str  # how its rows are labelled (its file name, or the path where two files share a name)
    runtimes: list[str] = field(default_factory=list)
    inputs: str = MNIST_INPUTS
    why_random: str = ""  # the reason for random inputs, when the inputs are random
    skipped: dict[str, str] = field(default_factory=dict)
    reference: str = ""  # what it was verified against (a toolkit file's export's reference); '': not verified


class FileOpener(Opener):
    """Opens a candidate's runner for each round as bench over a folder does, recording the first opening's time. A
    toolkit file opens as the artifact its manifest lists and is verified against its export's reference; any other
    file opens as a foreign file, with nothing to verify it against."""

    def __init__(self, prep: Any, shapes: dict[str, tuple[int, ...]] | None, time_limit_s: float | None) -> None:
        super().__init__()
        self.prep, self.shapes, self.time_limit_s = prep, shapes, time_limit_s
        self.artifacts: dict[str, Artifact] = {}  # a toolkit file's path -> its manifest entry
        self.references: dict[str, Any] = {}  # a toolkit file's path -> verify's reference, unless --no-verify
        self.own_inputs_of: dict[str, np.ndarray] = {}  # a file of an --input-shape export -> the inputs it is fed

    def open_file(self, runtime: str, path: str, options: RunnerOptions) -> Runner:
        options = replace(options, time_limit_s=self.time_limit_s)
        if path in self.artifacts:
            return open_runner(runtime, self.artifacts[path], options)
        from toolkit.runners import foreign

        return foreign.open_in(runtime, path, options, self.prep, self.shapes)

    def opened(self, c: Candidate) -> tuple[Runner, float]:
        t0 = time.perf_counter()
        runner = self.open_file(c.runtime, str(c.source), c.options)
        return runner, (time.perf_counter() - t0) * 1e3

    def reference(self, c: Candidate) -> Any:
        return self.references.get(str(c.source))

    def artifact(self, c: Candidate) -> Artifact | None:
        return self.artifacts.get(str(c.source))

    def inputs(self, c: Candidate) -> np.ndarray | None:
        return self.own_inputs_of.get(str(c.source))


def _devices(config: BenchConfig) -> tuple[list[str], dict[str, str]]:
    """The devices asked for that this machine has; one it lacks is skipped with a note, unless nothing is left."""
    wanted, skipped = devices.expand(config.providers)
    usable = []
    for name in wanted:
        missing = None if name == devices.CPU else (devices.onnxruntime_unavailable(name) or (
            devices.torch_unavailable(name) if sysinfo.installed("torch") else None))
        if missing:
            skipped[name] = missing
        else:
            usable.append(name)
    if not usable:
        raise ConfigError(f"no device asked for is usable here: {'; '.join(f'{k}: {v}' for k, v in skipped.items())}")
    return usable, skipped


def _names(paths: list[str]) -> dict[str, str]:
    """Each file's row label: its name, or the path as given where two files share a name."""
    names = [Path(p).name for p in paths]
    return {p: n if names.count(n) == 1 else p for p, n in zip(paths, names)}


def _mnist_here(data_dir: str) -> str:
    """'' when the MNIST test set is in `data_dir`, else why not."""
    from toolkit import data as mnist

    try:
        mnist.load_split(data_dir, "test")
    except ToolkitError as e:
        return str(e)
    return ""


def _probe(opener: FileOpener, bench_file: BenchFile, runtime: str, explicit: bool) -> Runner | None:
    """The file opened once in `runtime` on the CPU (to learn its inputs); None when it cannot be, with the
    reason noted, unless the runtime was asked for by name. A mistake in the options is always an error."""
    try:
        return opener.open_file(runtime, bench_file.file, RunnerOptions(threads=1))
    except ConfigError:
        raise
    except (ArtifactError, ProviderUnavailable) as e:
        if explicit:
            raise
        bench_file.skipped[runtime] = str(e)
        return None


def _input_words(runner: Runner) -> str:
    """The file's input type, in the precision column's place: a file's own precision is not known."""
    runner = getattr(runner, "spec", runner)  # OpenVINO or OpenCV on an .onnx: as ONNX Runtime reads it
    inputs = getattr(runner, "inputs", None)
    if inputs:
        return f"{np.dtype(inputs[0].dtype).name} input"
    return "uint8 input" if runner.kind == "app" else "float32 input"


def _file_candidates(config: BenchConfig, bench_file: BenchFile, precision: str, runtime: str,
                     used: list[str]) -> list[Candidate]:
    spec, out = RUNTIMES[runtime], []
    modes = modes_to_run(config.modes) if "mode" in spec.tunes else ("f32",)
    if precision in PRECISIONS and precision != "fp32":  # as over a folder: a compute mode changes fp32 files only
        modes = (DEFAULT_MODE,)
    for device in used:
        if device not in spec.devices:
            if device != devices.CPU:
                bench_file.skipped[f"{runtime} on {device}"] = f"{runtime} runs on {', '.join(spec.devices)}"
            continue
        for mode in modes:
            out += [c for c in candidates_of(config, runtime, device, bench_file.file, bench_file.name,
                                             precision, mode)
                    if c.io == "host" and not c.options.cuda_graph]  # a file is fed from numpy
    return out


def _plan_file(config: BenchConfig, opener: FileOpener, bench_file: BenchFile, runtimes: list[str],
               explicit: set[str], used: list[str], no_data: str) -> list[Candidate]:
    """One file's candidates in every runtime of `runtimes` that loads it; its inputs are recorded on it."""
    candidates, images, listed = [], True, opener.artifacts.get(bench_file.file)
    for runtime in runtimes:
        runner = _probe(opener, bench_file, runtime, runtime in explicit)
        if runner is None:
            continue
        images = images and getattr(runner, "takes_images", True)
        bench_file.runtimes.append(runtime)
        precision = listed.precision if listed else _input_words(runner)  # a toolkit file's own is known
        candidates += _file_candidates(config, bench_file, precision, runtime, used)
        del runner
    if bench_file.inputs == REFERENCE_INPUTS:
        return candidates
    if not bench_file.runtimes:  # what the first runtime said is why (ONNX Runtime's, for an .onnx)
        first = next(iter(bench_file.skipped.values()))
        raise ArtifactError(first if bench_file.file in first else f"{bench_file.file}: {first}")
    if not images or no_data:
        bench_file.inputs = RANDOM_INPUTS
        bench_file.why_random = "its input is not an MNIST image" if not images else f"no MNIST test set ({no_data})"
    return candidates


def _as_exported(config: BenchConfig, opener: FileOpener, bench_file: BenchFile, references: dict[str, Any]) -> None:
    """A toolkit file, as bench over its folder takes it: opened as the artifact the manifest beside it lists (its
    hash and its format's checks) and, unless --no-verify, verified against its export's reference (`references`
    keeps one per folder). A file of an export made with --input-shape takes no MNIST image: it is fed the
    reference inputs export kept beside it, as verify feeds them, and judged on them."""
    artifact = listed_artifact(bench_file.file)
    if artifact is None:
        return
    folder = str(Path(artifact.path).parent)
    own_shape = other_input_shape(folder) is not None
    opener.artifacts[bench_file.file] = artifact
    if not config.verify and not own_shape:
        return
    from toolkit.reference import check_source, resolve_reference

    if folder not in references:
        references[folder] = resolve_reference(folder, read_manifest(folder), config.checkpoint, "auto",
                                               config.data_dir)
    # refused before any timing: an entry verify refuses, or a reference (--checkpoint) the file was not exported from
    calibration.check_entry(artifact, references[folder])
    check_source(references[folder], [artifact])
    if own_shape:
        opener.own_inputs_of[bench_file.file] = references[folder].pixels
        bench_file.inputs = REFERENCE_INPUTS
    if config.verify:
        opener.references[bench_file.file] = sample(references[folder], config.verify_images)
        bench_file.reference = references[folder].name


def _not_installed(runtimes: tuple[str, ...]) -> str:
    """'; not installed: NAMES (how to install them)' for those of `runtimes` that are not installed, else ''."""
    missing = [r for r in runtimes if not RUNTIMES[r].installed()]
    hints = dict.fromkeys(RUNTIMES[r].install_hint for r in missing)
    return f"; not installed: {', '.join(missing)} ({'; '.join(hints)})" if missing else ""


def _refuse_unused(paths: list[str], given: set[str], shapes: dict[str, tuple[int, ...]] | None) -> None:
    """ConfigError for an option of how a foreign file is fed that none of `paths` takes, as `FileOpener` opens
    them: a file a manifest lists as its artifact, fed as its metadata says; any other as `foreign.open_file`."""
    if not given:  # nothing to refuse: no file is opened or read for it
        return
    from toolkit.runners import feeding, foreign

    listed = [listed_artifact(p) is not None for p in paths]
    why = "none of these files is one" + (" (a file a manifest lists is fed as its export says)" if any(listed) else "")
    taken = [frozenset() if own else foreign.options_taken(p, shapes) for p, own in zip(paths, listed)]
    feeding.refuse_unused(given, taken, why)


def plan_files(config: BenchConfig, paths: list[str], prep: Any = None,
               shapes: dict[str, tuple[int, ...]] | None = None, options_given: tuple[str, ...] = ()) -> Plan:
    """Every file in every selected runtime that opens it, on every device asked for that is here. A runtime that
    cannot load a file is left out with its reason (an error where it was named); a file none can load fails. An
    option of how a foreign file is fed (`options_given`, --shape where `shapes`) that no file takes is refused."""
    from toolkit.runners import feeding, foreign

    prep = prep or feeding.Preprocessing()
    for path in paths:
        if not Path(path).is_file():
            raise ConfigError(f"{path} {fileio.absent(path)}")
    _refuse_unused(paths, feeding.options_set(options_given, shapes), shapes)
    selection = select_runtimes(config.runtimes)
    used, skipped = _devices(config)
    opener = FileOpener(prep, shapes, config.time_limit_s)
    no_data = _mnist_here(config.data_dir)
    candidates, files, references, relevant = [], [], {}, set()
    for path, name in _names(list(dict.fromkeys(paths))).items():
        opens = foreign.runtimes_for(path)
        relevant.update(opens)  # a runtime not installed is noted where it would have opened a file
        found = [r for r in opens if r in selection.runtimes]
        if not found:
            raise ConfigError(f"{path} opens in {', '.join(opens)}, none of them selected (--runtime) and installed "
                              f"here{_not_installed(opens)}")
        files.append(BenchFile(path, name))
        _as_exported(config, opener, files[-1], references)
        candidates += _plan_file(config, opener, files[-1], found, set(config.runtimes) - {"all"}, used, no_data)
    if not candidates:
        raise ConfigError("nothing to benchmark: no selected runtime runs these files on the devices asked for")
    return Plan(candidates, opener, used, skipped=skipped,
                skipped_runtimes={k: v for k, v in selection.skipped.items() if k in relevant}, files=files)
