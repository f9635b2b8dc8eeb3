"""Weights as people save them: a plain state_dict of a built-in model, or of an MNIST classifier from the
user's own code, turned into the in-memory checkpoint the rest of the toolkit reads.

The state_dict is read by checkpoint.read_checkpoint (weights-only, so no pickle runs code). A built-in model is
found from the state_dict's keys and tensor shapes, or named; any other model's class is imported from the code
the user names (`FILE.py:CLASS` or `package.module:CLASS`): importing runs that code, which is what was asked
for, and a class is never imported because a file names it. torch is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit import fileio
from toolkit.artifacts import read_manifest_field
from toolkit.errors import CheckpointError, ConfigError
from toolkit.refinputs import MNIST_SHAPE, is_mnist

# where a state_dict is often nested, in a dict saved with training state beside it
NESTED_KEYS = ("state_dict", "model_state_dict", "model")
MAX_MODEL_ARGS_CHARS = 10_000
MAX_CODE_BYTES = 16 << 20  # a model's .py file is some kilobytes
PROBE_BATCH = 3
# the output kinds a classifier returns, and the ending that turns each into log-probabilities
OUTPUT_KINDS = ("log_probs", "probabilities", "logits")


class ModelCodeNeeded(CheckpointError):
    """A state_dict of no built-in model: its class has to be named (`--model-code`), and is never guessed."""


@dataclass(frozen=True)
class ModelSource:
    """How to rebuild the model of a plain state_dict: found from its shapes (nothing given), a built-in model by
    name, or a class from the user's code with its constructor's keyword arguments."""

    name: str | None = None  # a built-in model (toolkit.model.MODELS)
    code: str | None = None  # FILE.py:CLASS or package.module:CLASS
    args: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = MNIST_SHAPE  # one sample's shape (the batch comes first)
    # the reference inputs [K, *input_shape] (--inputs): the model is probed on rows of them, inputs it takes
    reference_inputs: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not is_mnist(self.input_shape) and not self.code:
            raise ConfigError("--input-shape other than 1,28,28 needs --model-code: the built-in models take "
                              "MNIST images")
        if self.name and self.code:
            raise ConfigError("give --model (a built-in model) or --model-code (your own class), not both")
        if self.args and not (self.name or self.code):
            raise ConfigError("--model-args needs --model or --model-code: they are the constructor's arguments")

    @property
    def given(self) -> bool:
        return bool(self.name or self.code)


def _no_constant(name: str) -> float:
    raise ConfigError(f"--model-args holds {name}, which is not a number JSON knows; give finite numbers")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 reads as infinity
        raise ConfigError(f"--model-args holds {text[:30]}, beyond what a float holds; give finite numbers")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # more digits than int() reads (sys.get_int_max_str_digits)
        raise ConfigError(f"--model-args holds an integer of {len(text.lstrip('-'))} digits, more than Python "
                          "reads; give smaller numbers") from None


def parse_model_args(text: str | None) -> dict[str, Any]:
    """--model-args: a JSON object of keyword arguments; anything else is a ConfigError saying so."""
    if not text:
        return {}
    if len(text) > MAX_MODEL_ARGS_CHARS:
        raise ConfigError(f"--model-args is longer than {MAX_MODEL_ARGS_CHARS} characters")
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_int)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ConfigError(f"--model-args is not valid JSON ({str(e)[:120]}); give an object, e.g. "
                          "'{\"hidden\": 128}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--model-args must be a JSON object of keyword arguments, not {type(value).__name__}")
    return value


def find_state_dict(obj: Any) -> dict[str, Any] | None:
    """The state_dict in what torch.load returned: the dict itself when every value is a tensor, or one nested
    under a usual key (NESTED_KEYS); None when there is none."""
    import torch

    def is_state_dict(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())

    if is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for key in NESTED_KEYS:
            if is_state_dict(obj.get(key)):
                return dict(obj[key])
    return None


def infer_builtin(state_dict: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(name, constructor arguments) of the built-in model whose parameters have exactly these keys and shapes."""
    from toolkit.model import MAX_HIDDEN_LAYERS, build_model

    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    hidden = [shapes.get(f"hidden.{i}.weight") for i in range(MAX_HIDDEN_LAYERS)]
    sizes = [s[0] for s in hidden if s is not None and len(s) == 2]
    for name, args in (("convnet", {}), ("mlp", {"hidden_sizes": sizes})):
        try:
            model = build_model(name, **args)
        except ConfigError:
            continue
        if {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes:
            return name, args
    return None


def load_class(code: str) -> tuple[type, str | None]:
    """The nn.Module subclass `code` names (FILE.py:CLASS, or package.module:CLASS importable from the current
    folder), and the SHA-256 of the very bytes of FILE.py that ran (None for a module imported by name); importing
    it runs the file's code. ConfigError, in one line, for anything that goes wrong."""
    from torch import nn

    where, sep, name = code.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ConfigError(f"--model-code {code!r} must be FILE.py:CLASS or package.module:CLASS")
    module, sha256 = _import(where)
    cls = getattr(module, name, None)
    if cls is None:
        raise ConfigError(f"{where} has no class {name}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"{where}:{name} is not a torch.nn.Module subclass")
    return cls, sha256


def _read_code(path: Path) -> bytes:
    """The bytes of a model's .py file, read once: what runs is what is hashed. Opened as a regular file (checked
    on the descriptor read), so a FIFO or device at the path, or put there after a look, never holds the read."""
    try:
        with fileio.open_regular(path) as f:
            source = f.read(MAX_CODE_BYTES + 1)
    except OSError as e:
        if not path.is_file():  # nothing there, a folder, a FIFO, a device
            raise ConfigError(f"model code {path} {fileio.absent(path)}") from None
        raise ConfigError(f"cannot read model code {path}: {e.strerror or e}") from None
    if len(source) > MAX_CODE_BYTES:
        raise ConfigError(f"model code {path} is larger than {MAX_CODE_BYTES >> 20} MiB; not a model's source")
    return source


def _import(where: str) -> tuple[Any, str | None]:
    """Import a .py file by its path (its folder searched first, as when it runs as a script) or a module by its
    dotted name (the current folder searched first, as `python -m` does). A file is read once and exactly those
    bytes are run; the SHA-256 returned with the module is theirs (None for a module imported by name)."""
    path = Path(where)
    by_path = where.endswith(".py")
    source = _read_code(path) if by_path else None
    folder = str(path.resolve().parent) if by_path else str(Path.cwd())
    sys.path.insert(0, folder)
    try:
        if source is None:
            return importlib.import_module(where), None
        name = f"toolkit_user_model_{fileio.digest(str(path.resolve()).encode())[:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        code = compile(source, spec.origin, "exec", dont_inherit=True)  # not this module's __future__ flags
        sys.modules[name] = module  # as an import would: dataclasses and pickling look the module up by name
        try:
            exec(code, module.__dict__)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module, fileio.digest(source)
    except ConfigError:
        raise
    except (Exception, SystemExit) as e:  # the user's code may raise anything while it is imported
        raise ConfigError(f"importing {where} failed: {type(e).__name__}: {first_line(e)}") from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return " ".join(text.splitlines()[0].split())[:200] if text else "(no message)"


def build(cls: type, args: dict[str, Any], state_dict: dict[str, Any], what: str):
    """An instance of `cls` built with `args`, the state_dict loaded strictly, in eval mode."""
    try:
        model = cls(**args)
    except (Exception, SystemExit) as e:  # the user's constructor may raise anything, or call sys.exit
        raise ConfigError(f"building {what} with --model-args {json.dumps(args)[:100]} failed: "
                          f"{type(e).__name__}: {first_line(e)}") from None
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"the weights do not fit {what}: {_mismatch(e)}") from None
    return model.eval()


def _mismatch(e: Exception) -> str:
    """torch's load_state_dict error in one line: its first complaints, not the whole list."""
    lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()] or [first_line(e)]
    return " ".join(" ".join(lines).split())[:300]


def output_kind(model, what: str, input_shape: tuple[int, ...] = MNIST_SHAPE, reference_inputs: Any = None) -> str:
    """What `model` returns for a batch of `input_shape` samples: log_probs, probabilities or logits (OUTPUT_KINDS);
    ConfigError when it is not a float [N,10] tensor or the model fails on such an input. The batch is the first
    rows of `reference_inputs` [K, *input_shape] (repeated when K is smaller) where given: the inputs the model is
    written for (log(x) of always positive inputs is NaN on others); else a zero row (normalized MNIST's mean) and
    random ones."""
    import torch

    shape = ",".join(str(d) for d in input_shape)
    if reference_inputs is not None:
        given = "rows of --inputs"
        probe = torch.as_tensor(reference_inputs[[i % len(reference_inputs) for i in range(PROBE_BATCH)]])
    else:
        given = "a normalized MNIST batch" if is_mnist(input_shape) else "a batch of --input-shape"
        probe = torch.cat([torch.zeros(1, *input_shape), torch.randn(PROBE_BATCH - 1, *input_shape,
                                                                     generator=torch.Generator().manual_seed(0))])
    try:
        with torch.inference_mode():
            y = model(probe)
    except (Exception, SystemExit) as e:  # the user's forward may raise anything, or call sys.exit
        raise ConfigError(f"{what} failed on {given} [{PROBE_BATCH},{shape}]: "
                          f"{type(e).__name__}: {first_line(e)}") from None
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (PROBE_BATCH, 10) or not y.is_floating_point():
        got = f"{str(y.dtype).replace('torch.', '')} {list(y.shape)}" if isinstance(y, torch.Tensor) else \
            type(y).__name__
        raise ConfigError(f"{what} returns {got} for an input of shape [{PROBE_BATCH},{shape}]; a classifier "
                          "the toolkit exports returns [N,10] scores (log-probabilities, probabilities or logits)")
    if not torch.isfinite(y).all():
        raise ConfigError(f"{what} returns NaN or infinity on the probe batch ({given} [{PROBE_BATCH},{shape}]); "
                          "a model the toolkit exports returns finite scores")
    y = y.double()
    if torch.allclose(y.exp().sum(1), torch.ones(PROBE_BATCH, dtype=y.dtype), atol=1e-3):
        return "log_probs"
    if (y >= 0).all() and torch.allclose(y.sum(1), torch.ones(PROBE_BATCH, dtype=y.dtype), atol=1e-3):
        return "probabilities"
    return "logits"


def with_log_probs(model, kind: str):
    """`model` returning log-probabilities, the toolkit's output: as it is, or with a log/log_softmax ending."""
    if kind == "log_probs":
        return model
    from torch import nn

    class LogProbs(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y = self.inner(x)
            return y.clamp_min(1e-30).log() if kind == "probabilities" else y.log_softmax(dim=1)

    return LogProbs(model).eval()


def checkpoint_from_state_dict(state_dict: dict[str, Any], source: ModelSource, path: Path) -> dict[str, Any]:
    """The checkpoint dict the toolkit reads (model name and arguments, weights, no history or metrics), with the
    model checked to load the weights strictly. A model from code travels as its class (`_class`, a key no file
    can hold: a weights-only load never returns a type) and its output kind (`_output`)."""
    from toolkit.model import build_model

    ckpt: dict[str, Any] = {"format": "state_dict", "config": {}, "history": [], "state_dict": state_dict}
    if source.code:
        cls, code_sha256 = load_class(source.code)
        what = f"{cls.__name__} ({source.code})"
        kind = output_kind(build(cls, source.args, state_dict, what), what, source.input_shape,
                           source.reference_inputs)
        ckpt["model"] = {"name": cls.__name__, "args": dict(source.args), "code": source.code,
                         "code_sha256": code_sha256, "output": kind}
        if not is_mnist(source.input_shape):
            ckpt["model"]["input_shape"] = list(source.input_shape)
        ckpt.update(_class=cls, _output=kind)
        return ckpt
    if source.name:
        name, args = source.name, dict(source.args)
    else:
        found = infer_builtin(state_dict)
        if found is None:
            keys = ", ".join(list(state_dict)[:4]) + (", ..." if len(state_dict) > 4 else "")
            raise ModelCodeNeeded(f"{path} is not a toolkit checkpoint but a state_dict ({keys}) of no built-in "
                                  "model (convnet, mlp); name its class with `toolkit export --model-code "
                                  "FILE.py:CLASS` (and --model-args JSON)")
        name, args = found
    try:
        build_model(name, **args).load_state_dict(state_dict, strict=True)
    except ConfigError:
        raise
    except (RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"the weights in {path} do not fit model {name}: {_mismatch(e)}") from None
    ckpt["model"] = {"name": name, "args": args}
    return ckpt


def model_from_code(ckpt: dict[str, Any]):
    """The model of a checkpoint built from user code (checkpoint_from_state_dict, which probed its output kind),
    returning log-probabilities."""
    model = build(ckpt["_class"], ckpt["model"]["args"], ckpt["state_dict"], ckpt["model"]["name"])
    return with_log_probs(model, ckpt["_output"])


def describe(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What the manifest records about the model and where its weights came from (JSON-ready)."""
    spec = {k: v for k, v in ckpt["model"].items() if k in ("name", "args", "code", "code_sha256", "output",
                                                         "input_shape")}
    kind = "toolkit checkpoint" if ckpt.get("format") != "state_dict" else "state_dict"
    return {**spec, "weights": kind}


def from_model_code(folder: str | Path) -> bool:
    """Whether the manifest in `folder` says its model came from the user's code: such a class is imported only
    when the user names it, never because a file does, so verify's reference is the golden outputs export wrote."""
    model = read_manifest_field(folder, "model")
    return isinstance(model, dict) and bool(model.get("code"))
