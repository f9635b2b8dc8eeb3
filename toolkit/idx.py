"""MNIST's file formats: the IDX layout of the four official files, and the gzip they are often kept in,
inflated no further than a known size (a gzip bomb stops there)."""

from __future__ import annotations

import gzip
import io
import zlib

import numpy as np

from toolkit.errors import DataError


def gunzip(stream: io.BufferedIOBase, limit: int, what: str) -> bytes:
    """Inflate a gzip stream, refusing it once it would give more than `limit` bytes."""
    try:
        data = gzip.GzipFile(fileobj=stream, mode="rb").read(limit + 1)  # inflates no further than asked
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{what} is not a valid gzip file ({e})") from None
    if len(data) > limit:
        raise DataError(f"{what} inflates to more than {limit} bytes: not the official file")
    return data


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (the official MNIST format)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def parse_idx(data: bytes, ndim: int, name: str) -> np.ndarray:
    """The uint8 array of `ndim` dimensions that the IDX file `data` (called `name` in errors) holds."""
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise DataError(f"{name} is not an IDX file of {ndim} dimension(s)")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{name} holds {body.size} bytes, its header says {shape}")
    return body.reshape(shape)
