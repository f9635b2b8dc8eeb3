"""The one validator for what a model file says about itself (ONNX metadata_props, IR rt_info, .pte/.tflite JSON).

A file's metadata is input like any other: the toolkit's own files carry sane values, but a file from
elsewhere may say anything. Every runner that reads metadata (ONNX, OpenVINO IR, ExecuTorch, LiteRT) reads it
through `read_normalization`. Every field used is checked here, once: numbers finite, std > 0, labels a list
of ten strings, the declared output one the toolkit can read; anything else is one-line ArtifactError.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from toolkit.errors import ArtifactError

DEFAULT_LABELS = tuple(str(d) for d in range(10))
SCORE_KINDS = ("log_probs", "probabilities", "logits")
MAX_LABEL_CHARS = 100
MAX_STD = 1e6
MIN_STD = 1e-6  # below it, (pixel / 255 - mean) / std overflows float32 or means nothing
MAX_ABS_MEAN = 1e6


@dataclass(frozen=True)
class Normalization:
    """What a toolkit model's metadata declares: its input normalization, class labels and output kind."""

    mean: float
    std: float
    labels: tuple[str, ...]
    scores: str | None  # log_probs, probabilities or logits; None: not declared (the input kind's default)


def _number(meta: dict[str, str], key: str, label: str) -> float:
    if key not in meta:
        raise ArtifactError(f"{label}: toolkit metadata has no {key!r}; export the model again")
    text = meta[key]
    try:  # text as the toolkit writes it; a JSON number (the .pte/.tflite metadata is JSON) is taken too
        if isinstance(text, bool) or not isinstance(text, (str, int, float)):
            raise ValueError
        value = float(text)
    except (ValueError, OverflowError):
        raise ArtifactError(f"{label}: metadata {key!r} is {_shown(text)}, not a number") from None
    if not math.isfinite(value):
        raise ArtifactError(f"{label}: metadata {key!r} is {_shown(text)}, not a finite number")
    return value


def _labels(meta: dict[str, str], label: str) -> tuple[str, ...]:
    if "labels" not in meta:
        return DEFAULT_LABELS
    try:
        labels = json.loads(meta["labels"])
    except (TypeError, ValueError, RecursionError):
        labels = None
    if not (isinstance(labels, list) and len(labels) == 10
            and all(isinstance(x, str) and 0 < len(x) <= MAX_LABEL_CHARS for x in labels)):
        raise ArtifactError(f"{label}: metadata 'labels' is {_shown(meta['labels'])}, not a JSON list of 10 "
                            f"non-empty strings (at most {MAX_LABEL_CHARS} characters each)")
    return tuple(labels)


def _scores(meta: dict[str, str], label: str) -> str | None:
    """The output kind the metadata's 'output' field names first ('log_probs: float32 [N,10] ...')."""
    text = meta.get("output")
    if text is None:
        return None
    kind = text.split(":", 1)[0].strip() if isinstance(text, str) else ""
    if kind not in SCORE_KINDS:
        raise ArtifactError(f"{label}: metadata 'output' is {_shown(text)}; it must start with one of "
                            f"{', '.join(SCORE_KINDS)}")
    return kind


def json_object(metadata: object, label: str, where: str) -> dict:
    """Metadata stored as JSON (a .pte's method, a .tflite entry) must be an object of fields: else one line."""
    if not isinstance(metadata, dict):
        raise ArtifactError(f"{label}: its {where} holds {type(metadata).__name__}, not a JSON object of toolkit "
                            "metadata")
    return metadata


def read_normalization(meta: dict[str, str], label: str) -> Normalization:
    """The checked normalization, labels and output kind of a file's metadata, or a one-line ArtifactError."""
    mean, std = _number(meta, "mean", label), _number(meta, "std", label)
    if not abs(mean) <= MAX_ABS_MEAN:
        raise ArtifactError(f"{label}: metadata 'mean' is {mean!r}, outside [-{MAX_ABS_MEAN:g}, {MAX_ABS_MEAN:g}]")
    if not MIN_STD <= std <= MAX_STD:
        raise ArtifactError(f"{label}: metadata 'std' is {std!r}; it must be > 0 (from {MIN_STD:g} to {MAX_STD:g})")
    return Normalization(mean, std, _labels(meta, label), _scores(meta, label))


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
