"""An actor keeps its batch-sized buffers in its heap (glibc), unless the user tuned malloc."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

from leptonrt.actors.heap import keep_heap, user_tuned


def _glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc_with_mallinfo2(), reason="glibc only")

# a fresh process (the test runner's own heap is not touched): allocate a 4 MiB block, above
# glibc's starting mmap threshold of 128 KiB, free it, and report where it lived (bytes newly
# mapped for it, and bytes of free heap once it is freed: the block may have grown the heap from
# a free chunk already there, so the free heap is read whole, not as a difference)
PROBE = textwrap.dedent("""
    import ctypes, sys
    from leptonrt.actors.heap import keep_heap
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    kept = keep_heap() if sys.argv[1] == "keep" else None
    before = libc.mallinfo2()
    block = libc.malloc(4 << 20)
    ctypes.memset(block, 1, 4 << 20)
    mapped = libc.mallinfo2().hblkhd - before.hblkhd
    libc.free(block)
    print(kept, mapped, libc.mallinfo2().fordblks)
""")


def _probe(mode: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not user_tuned({k: v})}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60,
                         check=True, env={**clean, **env})
    return out.stdout.split()


@glibc
def test_a_batch_sized_block_comes_from_the_heap_and_stays_there_once_freed():
    kept, mapped, free_after = _probe("keep")
    assert kept == "True"
    assert int(mapped) == 0                  # not a fresh mapping from the system...
    assert int(free_after) >= 4 << 20        # ...and its pages are kept for the next step
    _, mapped, free_after = _probe("default")
    assert int(mapped) >= 4 << 20            # glibc's defaults: mapped, and returned on free
    assert int(free_after) < 1 << 20


@glibc
def test_the_users_own_malloc_settings_stand():
    kept, mapped, _ = _probe("keep", MALLOC_MMAP_THRESHOLD_="131072")
    assert kept == "False" and int(mapped) >= 4 << 20


def test_which_settings_count_as_the_users_own():
    assert user_tuned({"MALLOC_TRIM_THRESHOLD_": "0"})
    assert user_tuned({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"})
    assert not user_tuned({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2", "MALLOC_ARENA_MAX": "2"})
    assert not keep_heap({"MALLOC_TOP_PAD_": "0"})
