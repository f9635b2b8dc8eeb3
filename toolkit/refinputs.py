"""Reference inputs: the model's own inputs, for a model whose input is not normalized MNIST images.

Such a model is exported with `--input-shape C,H,W` (the per-sample shape) and `--inputs FILE.npy`, a float32
array [K, *shape] that serves as its golden inputs: export computes the model's outputs on it and copies it
beside the artifacts (hashed in the manifest), and verify compares every file on it. No accuracy is known for
such a model: its inputs come with no labels. The .npy is input like any other: read without pickle, its size,
dtype, shape and values checked before it is used. torch-free.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from toolkit import fileio
from toolkit.artifacts import golden_entry, read_manifest_fields
from toolkit.errors import ConfigError

MNIST_SHAPE = (1, 28, 28)
INPUTS_NAME = "inputs.npy"
MAX_INPUT_BYTES = 256 * 1024 * 1024
MAX_INPUT_ROWS = 100_000
MAX_DIMS = 6
MAX_DIM = 65_536
# what a file of another input shape says about its input in its metadata
PREPROCESSING = "none: the model's own input, as given"


def parse_shape(text: str | None) -> tuple[int, ...]:
    """--input-shape 'C,H,W' (any 1 to MAX_DIMS positive sizes, no batch) as a tuple; MNIST's when not given."""
    if not text:
        return MNIST_SHAPE
    parts = [p.strip() for p in str(text).split(",")]
    # ASCII digits only: str.isdigit() takes '²' too, which int() refuses; a size of many digits is no size
    if not 1 <= len(parts) <= MAX_DIMS or not all(p.isascii() and p.isdigit() and len(p) <= len(str(MAX_DIM))
                                                   and 0 < int(p) <= MAX_DIM for p in parts):
        raise ConfigError(f"--input-shape {str(text)[:40]!r} must be 1 to {MAX_DIMS} positive sizes (at most "
                          f"{MAX_DIM}) separated by commas, without the batch, e.g. 3,32,32")
    return tuple(int(p) for p in parts)


def is_mnist(shape: tuple[int, ...]) -> bool:
    return tuple(shape) == MNIST_SHAPE


def other_input_shape(folder: str | os.PathLike) -> list[int] | None:
    """The input shape of an export made with --input-shape whose files take no MNIST image; else None.

    The manifest's top-level input_shape must be the shape its reference inputs' entry (the golden outputs')
    records: ArtifactError, a malformed manifest, where it is another, malformed, missing while that entry exists,
    or given without that entry (MNIST's excepted). One manifest read, so both come from the same bytes."""
    from toolkit.errors import ArtifactError

    _, fields = read_manifest_fields(folder)
    shape = fields.get("input_shape")
    golden = golden_entry(folder, fields)
    data = golden.data if golden is not None and "inputs" in golden.data else None
    recorded = None if data is None else data.get("input_shape")
    if data is None and shape in (None, list(MNIST_SHAPE)):
        return None
    if shape is not None and _is_shape(shape) and shape == recorded and not is_mnist(tuple(shape)):
        return shape
    gives = "no input_shape" if shape is None else f"input_shape {json.dumps(shape)[:40]}"
    entry = ("it lists no reference inputs" if data is None else
             f"its reference inputs' entry says {_shown(recorded)}")
    raise ArtifactError(f"{Path(folder) / 'manifest.json'} gives {gives}, but {entry}; export again")


def _shown(shape: object) -> str:
    return f"[{','.join(map(str, shape))}]" if _is_shape(shape) else json.dumps(shape)[:40]


def _is_shape(shape: object) -> bool:
    """Whether `shape` is a per-sample shape --input-shape takes: 1 to MAX_DIMS sizes of 1 to MAX_DIM."""
    return (isinstance(shape, list) and 1 <= len(shape) <= MAX_DIMS
            and all(type(d) is int and 0 < d <= MAX_DIM for d in shape))


def layout(shape: tuple[int, ...]) -> str:
    """The metadata's input_layout of a file of this per-sample shape: 'N,3,32,32'."""
    return ",".join(["N", *(str(d) for d in shape)])


def declares_own_input(sample_shape: list | tuple, meta: dict[str, str]) -> bool:
    """Whether a file whose input takes samples of `sample_shape` says in its metadata that it is an --input-shape
    export of that shape: its input_layout names the shape and nothing preprocesses the input."""
    return (all(isinstance(d, int) for d in sample_shape) and meta.get("input_layout") == layout(tuple(sample_shape))
            and meta.get("preprocessing") == PREPROCESSING)


NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file


def _check_header(data: bytes, path: Path, option: str) -> None:
    """ConfigError when the .npy header's shape is implausible or the file does not hold exactly the bytes it says,
    before numpy allocates the array the header claims. ValueError for a header numpy cannot read."""
    buf = io.BytesIO(data)
    version = np.lib.format.read_magic(buf)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(buf, max_header_size=10_000)
    if dtype.hasobject or not isinstance(shape, tuple) or not shape:
        return  # refused by np.load below (a pickle) or by the dtype and shape checks after it
    if not 1 <= len(shape) <= MAX_DIMS + 1 or any(d > MAX_INPUT_ROWS * MAX_DIM for d in shape):
        raise ConfigError(f"{option} {path} has shape {list(shape)[:MAX_DIMS + 2]} in its header; give at most "
                          f"{MAX_INPUT_ROWS} inputs of at most {MAX_DIMS} sizes")
    want = dtype.itemsize * int(np.prod(shape, dtype=object))
    held = len(data) - buf.tell()
    if want != held:
        raise ConfigError(f"{option} {path}: its header says {shape[0]} rows of {list(shape[1:])} {dtype} "
                          f"({want:,} bytes of data), but the file holds {held:,} bytes after the header; "
                          "save it again with np.save")


def load_inputs(path: str | os.PathLike, shape: tuple[int, ...], option: str = "--inputs") -> np.ndarray:
    """The float32 array [K, *shape] in the .npy at `path` (given as `option`), read without pickle; ConfigError in
    one line when the file is missing, too large, not a plain .npy, of another dtype or shape, empty, or holds NaN
    or infinity."""
    return parse_inputs(read_input_bytes(path, option), path, shape, option)


def read_input_bytes(path: str | os.PathLike, option: str = "--inputs") -> bytes:
    """The bytes of the .npy at `path` (given as `option`), read once: what is hashed is what `parse_inputs` is
    then given. ConfigError when it is not a file or is too large."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{option} {path} is not a file")
    size = path.stat().st_size
    if size > MAX_INPUT_BYTES:
        raise ConfigError(f"{option} {path} is {size / 2**20:.0f} MiB; at most {MAX_INPUT_BYTES // 2**20} MiB")
    return path.read_bytes()


def parse_inputs(data: bytes, path: str | os.PathLike, shape: tuple[int, ...], option: str = "--inputs"
                 ) -> np.ndarray:
    """The float32 array [K, *shape] in `data`, the bytes of the .npy at `path` (named in errors only, never read
    again), checked as `load_inputs` says."""
    path = Path(path)
    if len(data) > MAX_INPUT_BYTES:
        raise ConfigError(f"{option} {path} is {len(data) / 2**20:.0f} MiB; at most {MAX_INPUT_BYTES // 2**20} MiB")
    if not data.startswith(NPY_MAGIC):  # numpy would take any other bytes for a pickle
        raise ConfigError(f"{option} {path} is not a .npy file (it does not start with NumPy's header); "
                          "save it with np.save")
    try:
        _check_header(data, path, option)
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        why = "it holds Python objects (a pickle), which are never loaded" if "pickle" in str(e) else str(e)[:120]
        raise ConfigError(f"{option} {path} is not a plain .npy array: {why}") from None
    want = f"float32 [K,{','.join(str(d) for d in shape)}]"
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        raise ConfigError(f"{option} {path} holds {getattr(array, 'dtype', type(array).__name__)}, not {want}; "
                          "save it with np.save(path, x.astype(np.float32))")
    if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != tuple(shape):
        raise ConfigError(f"{option} {path} has shape {list(array.shape)}, not {want} (--input-shape "
                          f"{','.join(str(d) for d in shape)})")
    if not 1 <= len(array) <= MAX_INPUT_ROWS:
        raise ConfigError(f"{option} {path} holds {len(array)} inputs; give 1 to {MAX_INPUT_ROWS}")
    if not np.isfinite(array).all():
        raise ConfigError(f"{option} {path} contains NaN or infinity")
    return np.ascontiguousarray(array)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def write_inputs(folder: str | os.PathLike, inputs: np.ndarray, to: Path | None = None) -> dict:
    """Atomically write `<folder>/inputs.npy` (or the scratch file `to` that becomes it); what the golden outputs'
    entry records about it."""
    data = npy_bytes(inputs)
    fileio.write_bytes(Path(folder) / INPUTS_NAME, data, to)
    return {"inputs": INPUTS_NAME, "input_shape": list(inputs.shape[1:]), "rows": len(inputs),
            "size_bytes": len(data), "sha256": fileio.digest(data)}


def read_inputs(folder: str | os.PathLike, recorded: dict) -> np.ndarray:
    """The reference inputs the golden outputs' entry records, after their size and SHA-256 matched; checked
    again like --inputs. ConfigError-free: a file changed since export is an ArtifactError."""
    from toolkit.errors import ArtifactError

    name = recorded.get("inputs")
    shape = recorded.get("input_shape")
    if name != INPUTS_NAME or not isinstance(shape, list) or not all(type(d) is int for d in shape):
        raise ArtifactError(f"{Path(folder) / 'manifest.json'}: the reference inputs' entry is malformed; "
                            "export again")
    path = Path(folder) / INPUTS_NAME
    size = recorded.get("size_bytes")
    if path.is_symlink() or not path.is_file() or not isinstance(size, int) or path.stat().st_size != size \
            or size > MAX_INPUT_BYTES:
        raise ArtifactError(f"{path} is missing or not the file export wrote; export again")
    data = path.read_bytes()
    if fileio.digest(data) != recorded.get("sha256"):
        raise ArtifactError(f"{path} changed since export (SHA-256 differs); export again")
    try:  # the very bytes hashed: the file is not read again, so what is loaded is what matched
        return parse_inputs(data, path, tuple(shape))
    except ConfigError as e:
        raise ArtifactError(f"{e}; export again") from None
