"""A restricted unpickler that can only rebuild numpy arrays.

Third-party pickles can run arbitrary code through any global they name, so this one resolves only the
handful of numpy globals that plain ndarrays need and refuses everything else.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any

from toolkit.errors import DataError


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return {
        # pickles name the module numpy had when they were written
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes into protocol-2 pickles as codecs.encode(text, "latin1"): harmless
        ("_codecs", "encode"): codecs.encode,
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        if (module, name) not in allowed:
            raise DataError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        return allowed[(module, name)]

    def persistent_load(self, pid: Any) -> Any:
        raise DataError("refusing to unpickle a persistent reference: only numpy arrays are allowed")


def loads_numpy(data: bytes) -> Any:
    """Unpickle `data`, allowing only numpy arrays and dtypes (inside tuples, lists and dicts)."""
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except DataError:
        raise
    except Exception as e:  # a malformed stream, not a refused global
        raise DataError(f"cannot unpickle data: {e}") from None
    import numpy as np

    def check(x: Any) -> None:
        if isinstance(x, (tuple, list)):
            for item in x:
                check(item)
        elif isinstance(x, np.ndarray):
            if x.dtype == object:
                raise DataError("refusing an object array from a pickle: only numeric arrays are allowed")
        elif not isinstance(x, (int, float, str, bytes, type(None))):
            raise DataError(f"unexpected {type(x).__name__} in pickle: only numpy arrays are allowed")

    check(obj)
    return obj
