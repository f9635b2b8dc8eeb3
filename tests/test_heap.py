"""keep_freed_memory: a block over glibc's default mmap threshold comes from the heap once it is called.

Each case runs in a fresh interpreter (the setting is process-wide and cannot be undone) and reads how much the
[heap] mapping grows when it mallocs 4 MB: a mapped block leaves it as it was, a heap block grows it.
"""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                                reason="glibc's mallopt is Linux-only")

PROBE = """
import ctypes, ctypes.util, sys
from toolkit import heap

def heap_size():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            return end - start
    return 0

kept = heap.keep_freed_memory() if sys.argv[1] == "keep" else None
again = heap.keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
before = heap_size()
block = libc.malloc(4 << 20)
assert block
print(kept, again, heap_size() - before)
"""


def probe(setting: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_default_glibc_maps_a_large_block():
    kept, again, growth = probe("default")
    assert (kept, again) == ("None", "None")
    assert int(growth) < 4 << 20


def test_kept_memory_serves_a_large_block_from_the_heap():
    kept, again, growth = probe("keep")
    assert (kept, again) == ("True", "True")
    assert int(growth) >= 4 << 20
