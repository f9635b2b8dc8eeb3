"""Hostile pickles against the numpy-only unpickler: each must be refused with one DataError, quickly."""

import collections
import os
import pickle
import struct

import numpy as np
import pytest

from toolkit.errors import DataError
from toolkit.safe_pickle import MAX_DEPTH, loads_numpy

PROTO2 = b"\x80\x02"


def _refused(payload: bytes, match: str) -> str:
    with pytest.raises(DataError, match=match) as e:
        loads_numpy(payload)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_numeric_arrays_in_tuples_and_lists_load():
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)), [np.ones(2, bool)])
    for protocol in (2, 3, 4):
        back = loads_numpy(pickle.dumps(arrays, protocol=protocol))
        np.testing.assert_array_equal(back[0][0], arrays[0][0])
        assert back[0][0].dtype == np.float32 and back[0][1].dtype == np.int64 and back[1][0].dtype == bool


def test_shared_tuple_bomb_is_refused_without_expanding_it():
    # t0 = (x, x), t1 = (t0, t0), ... : 534 bytes whose tree has 2**60 leaves
    t = (np.zeros(3), np.zeros(3))
    for _ in range(60):
        t = (t, t)
    payload = pickle.dumps(t, protocol=2)
    assert len(payload) < 1000
    _refused(payload, "nested more than")


def test_wide_shared_structure_within_the_depth_limit_is_checked_once_per_object():
    # depth MAX_DEPTH - 1, each level holding the previous one 200 times: 200**15 paths, a few KB of pickle
    leaf = np.arange(4)
    t = (leaf,)
    for _ in range(MAX_DEPTH - 2):
        t = (t,) * 200
    back = loads_numpy(pickle.dumps(t, protocol=2))
    for _ in range(MAX_DEPTH - 2):
        back = back[199]
    np.testing.assert_array_equal(back[0], leaf)


def test_self_referencing_list_is_refused():
    loop = []
    loop.append(loop)
    _refused(pickle.dumps(loop, protocol=2), "refer to themselves")
    a, b = [], []
    a.append(b)
    b.append(a)
    _refused(pickle.dumps((np.zeros(1), a), protocol=4), "refer to themselves")


def test_deep_nesting_is_refused_not_a_recursion_error():
    depth = 5000  # EMPTY_LIST x depth, then APPEND each onto the one below
    payload = PROTO2 + b"]" * depth + b"a" * (depth - 1) + b"."
    _refused(payload, "nested more than")


def test_huge_memo_index_is_refused_before_unpickling():
    # 8 bytes: NONE, LONG_BINPUT 2**30. CPython's unpickler would allocate and zero ~16 GB for the memo.
    payload = PROTO2 + b"N" + b"r" + struct.pack("<I", 2**30) + b"."
    _refused(payload, "memo slot")


def test_declared_lengths_beyond_the_data_are_refused():
    payload = b"\x80\x04" + b"\x8e" + struct.pack("<Q", 2**40) + b"abc"  # BINBYTES8 of 1 TiB, 3 bytes present
    _refused(payload, "cannot unpickle")


def test_calling_ndarray_or_reconstructing_a_huge_array_is_refused():
    # REDUCE numpy.ndarray((10**10,), 'f8'): 80 GB from 30 bytes
    payload = PROTO2 + b"cnumpy\nndarray\n" + b"\x8a\x05" + (10**10).to_bytes(5, "little") + b"\x85" + b"U\x02f8\x86R."
    _refused(payload, "cannot unpickle")
    # _reconstruct(ndarray, (10**10,), 'f8')
    payload = (PROTO2 + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + b"\x8a\x05"
               + (10**10).to_bytes(5, "little") + b"\x85U\x02f8\x87R.")
    _refused(payload, "larger than the pickle allows")


def test_oversized_pickle_is_refused_before_reading_it():
    payload = pickle.dumps(np.zeros(1000), protocol=2)
    with pytest.raises(DataError, match="more than the 100 allowed"):
        loads_numpy(payload, max_bytes=100)
    assert loads_numpy(payload, max_bytes=len(payload)).shape == (1000,)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/toolkit-pwned",))


def test_code_execution_through_a_global_is_refused():
    if os.path.exists("/tmp/toolkit-pwned"):
        os.remove("/tmp/toolkit-pwned")
    _refused(pickle.dumps((np.zeros(3), _Exploit()), protocol=2), "refusing to unpickle posix.system")
    assert not os.path.exists("/tmp/toolkit-pwned")
    _refused(pickle.dumps(collections.OrderedDict(a=1), protocol=2), "refusing to unpickle collections")


def test_only_latin1_codec_calls_are_allowed():
    # _codecs.encode(b"00", "hex_codec") imports a module and returns twice the bytes it was given
    payload = b"\x80\x03c_codecs\nencode\nC\x0200X\t\x00\x00\x00hex_codec\x86R."
    assert pickle.loads(payload) == b"3030"  # what an unrestricted unpickler does with it
    _refused(payload, "only latin1")


def test_non_numeric_arrays_are_refused():
    _refused(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2), "object array")
    _refused(pickle.dumps(np.array(["ab"]), protocol=2), "only numeric arrays")
    _refused(pickle.dumps(np.zeros(2, dtype=[("a", "f4")]), protocol=2), "only numeric arrays")


def test_malformed_stream_is_a_data_error():
    _refused(pickle.dumps(np.zeros(3), protocol=2)[:-20], "cannot unpickle")
