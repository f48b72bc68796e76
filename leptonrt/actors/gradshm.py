"""Gradient sums through shared memory, for a group of CPU actors on one host.

Each member owns one segment: a step counter and two gradient slots used in turn. To sum,
a member copies its gradients into slot ``k % 2``, then publishes ``k`` in its counter;
once every peer's counter has reached ``k`` it adds all the members' slots up in rank
order, so every member gets the same bits (the same order as the point-to-point exchange
over gloo, which this replaces where it can). Two slots are enough: a member can be at
most one sum ahead of a peer, because sum ``k + 1`` waits for that peer to publish ``k + 1``,
which it does only after it has read slot ``k % 2``.

The counter is written after the slot, and read before it, by separate calls: x86's
memory model keeps stores in order and loads in order, so a reader that sees ``k`` sees
the slot's new contents. Other architectures give no such guarantee without fences that
Python cannot issue, so ``available()`` is false there and the group uses gloo.

Segments are named like the dataset's (``leptonrt-<pid>x<token>-...``, the pid being the
owning actor's, so a dead owner's segment is stale) and unlinked as soon as every member
has mapped them: a crash afterwards leaves nothing in /dev/shm.
"""

from __future__ import annotations

import mmap
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from ..data.shm import PREFIX, new_run_id, shm_dir

_HEADER = 64   # bytes before the slots: the int64 counter, and alignment


def available(device: torch.device) -> bool:
    """Whether this actor can sum through shared memory (a CPU actor on x86 Linux)."""
    return device.type == "cpu" and sys.platform == "linux" and platform.machine().lower() in {"x86_64", "amd64"}


def exited(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie not yet reaped by its parent counts)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in (b"Z", b"X")


class _Segment:
    def __init__(self, fd: int, n: int) -> None:
        self.map = mmap.mmap(fd, _HEADER + 2 * 4 * n)
        self.counter = np.frombuffer(self.map, dtype=np.int64, count=1)
        self.slots = [torch.frombuffer(self.map, dtype=torch.float32, count=n, offset=_HEADER + s * 4 * n)
                      for s in range(2)]

    def close(self) -> None:
        self.counter = self.slots = None
        try:
            self.map.close()
        except BufferError:
            pass   # a view is still alive somewhere; the mapping goes with it


class SharedSum:
    """One member's end of a group's shared-memory gradient sum (see the module docstring)."""

    def __init__(self, n: int, me: int, size: int) -> None:
        self.n, self.me, self.size, self.k = n, me, size, 0
        self.name = f"{PREFIX}{new_run_id()}-grad"
        path = shm_dir() / self.name
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, _HEADER + 2 * 4 * n)
            self.own = _Segment(fd, n)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        self.members: list[_Segment | None] = []
        self.pids: list[int] | None = None

    def attach(self, names: list[str], pids: list[int] | None = None) -> None:
        """Map every member's segment (``names`` in group order, this member's included);
        ``pids`` are the members' processes, watched while waiting for them."""
        self.pids = pids
        for rank, name in enumerate(names):
            if rank == self.me:
                self.members.append(self.own)
                continue
            if not name.startswith(PREFIX) or "/" in name:
                raise RuntimeError(f"refusing gradient segment name {name!r}")
            fd = os.open(shm_dir() / name, os.O_RDWR)
            try:
                self.members.append(_Segment(fd, self.n))
            finally:
                os.close(fd)

    def unlink(self) -> None:
        """Remove this member's name (every member has mapped it; the pages stay)."""
        (shm_dir() / self.name).unlink(missing_ok=True)

    def start(self, flat: torch.Tensor, timeout_s: float, meanwhile: Callable[[], None]) -> SharedSum:
        """Publish this member's gradients for the next sum; ``wait()`` then completes it.

        ``meanwhile`` runs every few milliseconds of waiting (the actor reads its broker's
        messages there, so a regroup ends the wait); past ``timeout_s`` the wait fails.
        """
        self.k += 1
        self.own.slots[self.k % 2].copy_(flat)
        self.own.counter[0] = self.k   # after the slot: see the module docstring
        self._flat, self._timeout_s, self._meanwhile = flat, timeout_s, meanwhile
        return self

    def wait(self) -> None:
        """Wait for every member's gradients of this sum and leave their sum in ``flat``."""
        flat, timeout_s, meanwhile = self._flat, self._timeout_s, self._meanwhile
        k, slot = self.k, self.k % 2
        for rank, member in enumerate(self.members):
            spins, last_check, deadline = 0, None, None
            while member.counter[0] < k:
                spins += 1
                if spins < 200:
                    os.sched_yield()   # the peer is usually microseconds away
                    continue
                now = time.monotonic()
                if deadline is None:
                    last_check, deadline = now, now + timeout_s
                if now - last_check >= 0.005:
                    # a dead peer never publishes: say so at once (over gloo the socket would)
                    if self.pids is not None and exited(self.pids[rank]):
                        raise RuntimeError(f"gradient peer {rank} (pid {self.pids[rank]}) exited")
                    meanwhile()
                    last_check = now
                if now > deadline:
                    raise RuntimeError(f"gradient sum {k} through shared memory timed out after {timeout_s:g} s")
                time.sleep(50e-6)   # a straggler: stop spinning, give the core away
        if self.size == 2:
            flat.add_(self.members[1 - self.me].slots[slot])   # a + b and b + a are the same bits
            return
        total = self.members[0].slots[slot].clone()
        for member in self.members[1:]:
            total.add_(member.slots[slot])
        flat.copy_(total)

    def close(self) -> None:
        self.unlink()
        for member in self.members:
            if member is not self.own:
                member.close()
        self.own.close()
        self.members = []
