"""An export folder's earlier contents: which of its files a new export keeps (its golden outputs too), which it
removes, and the export of another checkpoint or model that it never mixes with its own.

Only files the exporter itself writes and the earlier manifest lists are ever removed, and only inside the folder;
a manifest naming anything else is refused, never followed. A file of a name the exporter writes that no manifest
lists is the user's, and is replaced only with --overwrite.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit import fileio, golden
from toolkit.artifacts import (
    GOLDEN_KEY,
    GOLDEN_NAME,
    MANIFEST_NAME,
    RESULT_FILES,
    Artifact,
    GoldenEntry,
    golden_entry,
    read_manifest_fields,
)
from toolkit.checkpoint import DEFAULT_RUNS_DIR
from toolkit.errors import ArtifactError, ConfigError
from toolkit.exporters import ExportContext, triton
from toolkit.formats import FORMATS
from toolkit.refinputs import INPUTS_NAME, MNIST_SHAPE, npy_bytes, write_inputs
from toolkit.staging import Staging

Log = Callable[[str], None]

_REPLACE = ("export into another folder with --out, or replace that export with --overwrite (its verify and bench "
            "results there go too)")


@dataclass
class Previous:
    """An export folder's earlier manifest, read once (`previous_manifest`) for all that one look at the folder
    decides: its artifacts and its top-level fields, none of either where there is no manifest."""

    artifacts: list[Artifact] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)


def previous_artifacts(out_dir: Path, previous: Previous, ctx: ExportContext, rebuilding: set[str], overwrite: bool,
                       staging: Staging, newest_run: bool = False) -> list[Artifact]:
    """The entries of an earlier export in `out_dir` to keep; the files of the others are removed when `staging`
    commits.

    Another export (of another checkpoint or model: other_exports) is replaced only with `overwrite`, and then its
    verify/bench results go too. An int8 file calibrated on other reference inputs than this export's goes, said
    in the log: its calibration and the rows that judge it came from those. Only files this exporter itself writes
    are ever removed, and only inside `out_dir`; a manifest naming anything else is refused (read_manifest), never
    followed.
    """
    others = other_exports(out_dir, previous, ctx, overwrite, newest_run)
    if others:
        _remove_results(out_dir, previous, staging)
    kept = []
    for a in previous.artifacts:
        if a.file in rebuilding:
            continue
        on_disk = all((out_dir / f).is_file() and not (out_dir / f).is_symlink() for f in a.files)
        stale = a.file not in others and _of_other_inputs(a, ctx)
        if a.file not in others and on_disk and not stale:
            kept.append(a)
        else:
            for file in a.files:
                _check_exported(out_dir, file)
                staging.remove(file, _OTHER_INPUTS if stale else _OTHER)
    return kept


_OTHER = "it described another checkpoint or model"
_OTHER_INPUTS = ("it was calibrated and judged on other reference inputs than --inputs now; export it again with "
                 "--precision int8")


def _of_other_inputs(artifact: Artifact, ctx: ExportContext) -> bool:
    """Whether `artifact` was calibrated on reference inputs (its own or beside --calibration-inputs) other than
    `ctx`'s, which decide the rows that judge it."""
    settings = artifact.settings if isinstance(artifact.settings, dict) else {}
    if "calibration_split" not in settings and "reference_inputs_sha256" not in settings:
        return False  # calibrated on the MNIST training images, or not int8
    ours = None if ctx.reference_inputs is None else fileio.digest(npy_bytes(ctx.reference_inputs))
    return settings.get("reference_inputs_sha256") != ours


def other_exports(out_dir: Path, previous: Previous, ctx: ExportContext, overwrite: bool,
                  newest_run: bool = False) -> list[str]:
    """The files of `previous` that are another export than `ctx`'s: of another checkpoint, or of the same weights
    as another model (model_changes). ConfigError if there are any and not `overwrite`, naming what differs and
    (`newest_run`: the user named no checkpoint) how this checkpoint was chosen."""
    changes = model_changes(previous, ctx) if previous.artifacts else []
    others = [a for a in previous.artifacts if changes or a.source_sha256 != ctx.checkpoint_sha256]
    if others and not overwrite:
        ours = _shown(out_dir, ctx.checkpoint_path)
        files = ", ".join(sorted(a.file for a in others))
        if all(a.source_sha256 == ctx.checkpoint_sha256 for a in others):
            raise ConfigError(f"{out_dir}/ holds an export of {ours} as another model: {'; '.join(changes)} "
                              f"({files}); {_REPLACE}")
        chosen = (f"and the checkpoint to export is {ours}, the newest run under {DEFAULT_RUNS_DIR}/ (no --checkpoint "
                  "given); name the one you mean with --checkpoint," if newest_run else f"not of {ours};")
        raise ConfigError(f"{out_dir}/ holds an export of {_other_checkpoints(out_dir, others, ours)} ({files}), "
                          f"{chosen} {_REPLACE}")
    return sorted(a.file for a in others)


def _other_checkpoints(out_dir: Path, others: list[Artifact], ours: str) -> str:
    """The checkpoints `others` were exported from, as a user here would name them."""
    theirs = sorted({_shown(out_dir, a.source_checkpoint) if a.source_checkpoint else "another checkpoint"
                     for a in others})  # the same path: the file was replaced since (trained again)
    return ", ".join(f"an earlier version of {t}" if t == ours else t for t in theirs)


def _identity(model: dict[str, Any]) -> dict[str, Any]:
    """What makes a model the same one besides its weights, as JSON holds it: its class, its code (the file's
    SHA-256, else the module's name), its constructor's arguments and its input shape."""
    shape = model.get("input_shape") or MNIST_SHAPE
    return json.loads(fileio.json_text({
        "model": model.get("name"), "--model-code": model.get("code_sha256") or model.get("code"),
        "--model-args": model.get("args") or {},
        "--input-shape": ",".join(map(str, shape)) if isinstance(shape, (list, tuple)) else shape}))


def model_changes(previous: Previous, ctx: ExportContext) -> list[str]:
    """How the model recorded in the `previous` manifest differs from `ctx`'s (the same weights can be built as other
    models), one phrase each; none when it is the same. A manifest without a model entry predates plain
    state_dicts: its checkpoint alone made the model."""
    recorded = previous.fields.get("model")
    if not isinstance(recorded, dict):
        return []
    theirs, ours = _identity(recorded), _identity(ctx.ckpt["model"])
    changes = []
    for key in (k for k in ours if theirs[k] != ours[k]):
        then, now = theirs[key], ours[key]
        if key == "--model-code":  # name the code as given, not its hash
            then, now = recorded.get("code"), ctx.ckpt["model"].get("code")
        changes.append(f"{key} {now} has changed since" if then == now else
                       f"{key} {_phrase(then)} there, {_phrase(now)} now")
    return changes


def _phrase(value: Any) -> str:
    return "none" if value is None else value if isinstance(value, str) else fileio.json_text(value, indent=None)


def listed_golden_files(previous: Previous) -> set[str]:
    """golden.npy and inputs.npy where the folder's manifest lists them (the golden outputs and their reference
    inputs): the only ones export removes; a file of those names that no manifest lists is the user's."""
    entry = previous.fields.get(GOLDEN_KEY)
    if not isinstance(entry, dict):
        return set()
    data = entry.get("data")
    inputs = data.get("inputs") if isinstance(data, dict) else None
    return {name for name in (GOLDEN_NAME, INPUTS_NAME) if name in (entry.get("file"), inputs)}


def listed_files(previous: Previous) -> set[str]:
    """Every name the `previous` manifest lists: its artifacts' files, the golden outputs with their reference
    inputs, and the Triton repository."""
    listed = {file for a in previous.artifacts for file in a.files} | listed_golden_files(previous)
    if isinstance(previous.fields.get("triton"), dict):
        listed.add(triton.REPOSITORY)
    return listed


def written_names(pairs: list[tuple[str, str]], test_set: bool, reference_inputs: bool, triton_repository: bool
                  ) -> set[str]:
    """The names an export of `pairs` writes: each file with its companions, golden.npy (its golden outputs on the
    MNIST test set, when there is one, or on the reference inputs, written as inputs.npy) and the Triton
    repository."""
    names = {name for f, p in pairs for name in (FORMATS[f].file_name(p), *FORMATS[f].companion_names(p))}
    if test_set or reference_inputs:
        names.add(GOLDEN_NAME)
    if reference_inputs:
        names.add(INPUTS_NAME)
    if triton_repository:
        names.add(triton.REPOSITORY)
    return names


def check_unlisted(out_dir: Path, previous: Previous, names: set[str], overwrite: bool) -> None:
    """ConfigError, unless `overwrite`, when `out_dir` holds one of `names` (what this export writes) that no
    manifest (`previous`, its own) lists: the user's own file, or one left by an export whose manifest is gone, is
    never replaced unasked. Something other than a regular file of such a name (a Triton repository: other than a
    folder) is refused even with `overwrite`."""
    _check_kinds(out_dir, names)
    listed = listed_files(previous)
    found = sorted(name + "/" * (out_dir / name).is_dir() for name in names - listed
                   if os.path.lexists(out_dir / name))
    if found and not overwrite:
        them = "them" if len(found) > 1 else "it"
        raise ConfigError(f"{out_dir}/ holds {', '.join(found)}, which no manifest there lists (your own, or left by "
                          f"an export whose manifest is gone); move {them} away, export into another folder with "
                          f"--out, or replace {them} with --overwrite")


def _check_kinds(out_dir: Path, names: set[str]) -> None:
    for name in sorted(names):
        path = out_dir / name
        if not os.path.lexists(path):
            continue
        folder = name == triton.REPOSITORY
        kind = "a symbolic link" if path.is_symlink() else "" if (path.is_dir() if folder else path.is_file()) \
            else "a folder" if path.is_dir() else "a file" if folder else "not a regular file"
        if kind:
            raise ConfigError(f"{path} is {kind}, where export writes its {'Triton repository' if folder else name}; "
                              "move it away or export into another folder with --out")


def _shown(out_dir: Path, recorded: str) -> str:
    """A checkpoint's path as a manifest records it (relative to `out_dir`), as a user here would type it: relative
    to the current folder when it is below it, else absolute."""
    path = os.path.normpath(os.path.join(out_dir.resolve(), recorded))
    here = os.path.relpath(path)
    return path if here.startswith("..") else here


def previous_manifest(out_dir: Path) -> Previous:
    """`out_dir`'s manifest, read and checked once; empty when there is no manifest."""
    if not (out_dir / MANIFEST_NAME).exists() and not (out_dir / MANIFEST_NAME).is_symlink():
        return Previous()
    try:
        return Previous(*read_manifest_fields(out_dir))
    except ArtifactError as e:
        raise ArtifactError(f"{e} (remove {out_dir / MANIFEST_NAME} or export into another folder)") from None


def _remove_results(out_dir: Path, previous: Previous, staging: Staging) -> None:
    """Remove the verify/bench results of another export, and its Triton repository where its manifest lists one (a
    triton/ folder that no manifest lists is the user's)."""
    for name in RESULT_FILES:
        if (out_dir / name).is_file() or (out_dir / name).is_symlink():
            staging.remove(name, _OTHER)
    if triton.REPOSITORY in listed_files(previous):
        staging.remove(f"{triton.REPOSITORY}/", _OTHER)


def _check_exported(out_dir: Path, file: str) -> None:
    """ArtifactError unless a listed file that is not kept, which commit removes, is a name this exporter writes."""
    exported_names = {name for f in FORMATS.values() for p in f.precisions
                      for name in (f.file_name(p), *f.companion_names(p))}
    if file not in exported_names:
        raise ArtifactError(f"bad manifest in {out_dir}/: {file} is not a file toolkit exports; "
                            f"remove {out_dir / MANIFEST_NAME} or export into another folder")


def write_or_keep_golden(out_dir: Path, previous: Previous, reference: tuple[Any, Any] | None, data_dir: str,
                         ctx: ExportContext, log: Log, staging: Staging) -> GoldenEntry | None:
    """Write the golden outputs (to scratch files `staging` puts in place); without new ones, keep the earlier file
    only if it came from this export. Only a golden.npy or inputs.npy the earlier manifest lists is removed: one that
    no manifest lists is the user's."""
    listed = listed_golden_files(previous)
    if reference is None:
        return _keep_golden(out_dir, previous, listed, data_dir, ctx, log, staging)
    recorded = None if ctx.reference_inputs is None else \
        write_inputs(out_dir, ctx.reference_inputs, to=staging.scratch(INPUTS_NAME))
    if recorded:
        log(f"wrote {recorded['inputs']} (reference inputs, {recorded['size_bytes'] / 1024:.0f} KiB)")
    elif INPUTS_NAME in listed:  # golden outputs on the test set: the earlier inputs describe nothing
        _remove_stale(out_dir / INPUTS_NAME, staging, "the golden outputs are on the MNIST test set now")
    entry = golden.write_golden(out_dir, *reference, source_checkpoint=ctx.checkpoint_path,
                                source_sha256=ctx.checkpoint_sha256, inputs=recorded,
                                to=staging.scratch(GOLDEN_NAME))
    log(f"wrote {entry.file} (golden outputs, {entry.size_bytes / 1024:.0f} KiB)")
    return entry


def _keep_golden(out_dir: Path, previous: Previous, listed: set[str], data_dir: str, ctx: ExportContext, log: Log,
                 staging: Staging) -> GoldenEntry | None:
    """Without a test set: the golden outputs the manifest lists, if computed from this checkpoint and model;
    otherwise none, and the files listed with them go."""
    try:
        earlier = golden_entry(out_dir, previous.fields) if GOLDEN_NAME in listed else None
    except ArtifactError:
        earlier = None  # a damaged entry is not kept; its file goes below
    same = earlier is not None and earlier.source_sha256 == ctx.checkpoint_sha256 and \
        not model_changes(previous, ctx)
    if same and Path(earlier.path).is_file() and not Path(earlier.path).is_symlink():
        log(f"no MNIST test set in {data_dir}: kept the golden outputs written earlier from this checkpoint")
        return earlier
    log(f"no MNIST test set in {data_dir}: golden outputs not written (verify will then need torch and the "
        "checkpoint); run `toolkit data` and export with --data-dir to write them")
    if GOLDEN_NAME in listed:
        _remove_stale(out_dir / GOLDEN_NAME, staging, "it was computed from another checkpoint or model"
                      if earlier is not None and not same else "it is not the file the manifest describes")
    if INPUTS_NAME in listed:
        _remove_stale(out_dir / INPUTS_NAME, staging, "it went with those golden outputs")
    return None


def _remove_stale(stale: Path, staging: Staging, why: str) -> None:
    if stale.exists() or stale.is_symlink():
        staging.remove(stale.name, why)
