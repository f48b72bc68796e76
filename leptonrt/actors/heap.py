"""Keep an actor's batch-sized buffers in its heap instead of handing them back every step.

glibc's malloc serves a block above its mmap threshold with fresh pages from the system and
returns them on free; a freed block raises the threshold to its size, and the trim
threshold (free memory at the top of the heap that goes back to the system) to twice that.
A training step allocates and frees batch-sized buffers over and over, so pages keep going
back and being faulted in again, and a larger share after a resplit starts that over.
Measured on the 2-core box: a bare loop of the benchmark's model (784-128-10, 512 to 768
rows a step) took about 100 page faults a step at glibc's defaults, and at most 1 a step
with the thresholds below once a share had run 100 steps; in 2-actor jobs, the first two
steps at a larger share gathered 12% and 23% slower than later ones at the defaults, 3% and
8% with fixed thresholds (set through glibc's environment variables then); and 2-actor
jobs with a fixed even split ran 7.7% faster (median of 8 jobs each, alternating).

Only glibc is touched, only when the user has not tuned it (their settings win), and any
other C library (musl, macOS) is left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20     # glibc's own ceiling for its moving threshold on 64-bit systems
TRIM_THRESHOLD = 1 << 30      # free memory kept at the top of the heap before any is returned


def user_tuned(env: dict[str, str]) -> bool:
    """Whether the environment already sets glibc's malloc thresholds (then they stand)."""
    return any(name in env for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")) \
        or "glibc.malloc." in env.get("GLIBC_TUNABLES", "")


def keep_heap(env: dict[str, str] | None = None) -> bool:
    """Fix glibc's mmap and trim thresholds for this process (True when they were set)."""
    if not sys.platform.startswith("linux") or user_tuned(os.environ if env is None else env):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):   # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
