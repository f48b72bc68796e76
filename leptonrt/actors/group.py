"""An actor's gradient group: forming it through the broker's store, summing, handing state over.

Every collective here returns whether it worked: a group that fails (a peer died or hung,
the broker re-forms it) is an outcome the step loop acts on, not an exception thrown
through it. Timeouts are leptonrt's, never torch's defaults (up to 30 minutes): a dead
peer must not keep the survivors waiting longer than the broker takes to notice it.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Callable

import torch

from .schedule import Place
from .store import BrokerStore


_teardown: threading.Thread | None = None   # the last group's destruction, while under way


def _destroy_in_background(dist, store: BrokerStore | None) -> None:
    """Destroy the group off the step loop. gloo's teardown waits about 20 ms while a peer is
    still connected (the peer leaves at its own next step), and an actor that trains alone
    next has no use for that wait; one that forms a group again waits for it first. The
    group's store is closed after it, by the same thread (its socket is that thread's now)."""
    global _teardown

    def destroy() -> None:
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:   # a broken group may not tear down cleanly; it is gone either way
            pass
        if store is not None:
            store.close()
    finish_teardown()
    _teardown = threading.Thread(target=destroy, name="leptonrt-group-teardown", daemon=True)
    _teardown.start()


def finish_teardown() -> None:
    """Wait until the last group is destroyed (before another forms, and before exiting)."""
    global _teardown
    if _teardown is not None:
        _teardown.join()
        _teardown = None


def init_world(backend: str, store, rank: int, world_size: int, timeout: timedelta) -> None:
    """``torch.distributed.init_process_group``, named the same in every member.

    torch names a default group after a process-wide counter (its rendezvous keys start with
    it) that each attempt advances and only destroying a formed group resets. An attempt that
    fails (a member that never came) leaves it advanced in that process alone, so the next
    generation's members would wait on each other's keys forever. No group is formed here, so
    the count starts again from zero, as it does in a fresh process."""
    import torch.distributed as dist
    from torch.distributed import distributed_c10d
    finish_teardown()
    if not dist.is_initialized() and hasattr(distributed_c10d._world, "group_count"):
        distributed_c10d._world.group_count = 0
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


class Group:
    """The torch.distributed group of one generation (nothing at all for a group of one)."""

    def __init__(self, address: str, job_id: int, backend: str, timeout_s: float, device: torch.device) -> None:
        self.address, self.job_id, self.backend, self.timeout_s = address, job_id, backend, timeout_s
        self.device = device
        self.dist = None
        self.store: BrokerStore | None = None
        self.place: Place | None = None
        self._peer_grads: list[torch.Tensor] | None = None   # receive buffers of the exchange
        self.error = ""   # why the last collective failed

    @property
    def size(self) -> int:
        return len(self.place.members) if self.place is not None else 1

    def join(self, place: Place) -> bool:
        """Form the group of ``place`` (blocking: the others form it at the same time)."""
        self.place = place
        if len(place.members) == 1:
            return True
        import torch.distributed as dist
        # forming may wait for a replacement that is still starting: twice the bound
        forming = timedelta(seconds=2 * self.timeout_s)
        self.store = BrokerStore(self.address, f"job{self.job_id}/gen{place.generation}/", forming)

        def init() -> None:
            init_world(self.backend, self.store, place.position, len(place.members), forming)
            from torch.distributed import distributed_c10d
            # every collective after that gets the short bound (the group's default timeout)
            distributed_c10d._set_pg_timeout(timedelta(seconds=self.timeout_s))
        self.dist = dist
        return self._collective(init)

    def leave(self) -> None:
        if self.dist is not None:
            _destroy_in_background(self.dist, self.store)
        elif self.store is not None:
            self.store.close()
        self.dist = self.store = None
        self._peer_grads = None

    def sum(self, flat: torch.Tensor) -> None:
        """Sum ``flat`` over the group in place (raises on failure; see ``_collective``)."""
        if self.dist is None:
            return
        if self.place.sync == "exchange":
            self._exchange(flat)
        else:
            # synchronous: on a CPU box an async collective's worker thread competes with the
            # step for the same cores (measured slower); the next batch is gathered right after
            self.dist.all_reduce(flat, op=self.dist.ReduceOp.SUM)

    def _exchange(self, flat: torch.Tensor) -> None:
        """Sum by sending ``flat`` to every other member and adding up all of them in rank
        order, so every member gets the same bits (one round of messages, not the ring's two)."""
        dist, me, size = self.dist, self.place.position, len(self.place.members)
        if self._peer_grads is None or len(self._peer_grads) != size:
            self._peer_grads = [torch.empty_like(flat) for _ in range(size)]
        ops = []
        for peer in range(size):
            if peer != me:
                ops += [dist.P2POp(dist.isend, flat, peer), dist.P2POp(dist.irecv, self._peer_grads[peer], peer)]
        timeout = timedelta(seconds=self.timeout_s)   # point-to-point waits ignore the group's
        for work in dist.batch_isend_irecv(ops):
            work.wait(timeout=timeout)
        if size == 2:
            flat.add_(self._peer_grads[1 - me])   # a + b and b + a are the same bits
            return
        total = (flat if me == 0 else self._peer_grads[0]).clone()
        for k in range(1, size):
            total.add_(flat if k == me else self._peer_grads[k])
        flat.copy_(total)

    def all_reduce(self, tensor: torch.Tensor) -> bool:
        if self.dist is None:
            return True
        return self._collective(lambda: self.dist.all_reduce(tensor))

    def broadcast(self, tensors: list[torch.Tensor], source: int) -> bool:
        """Everybody takes ``source``'s values of ``tensors`` (staged through the group's device)."""
        if self.dist is None:
            return True
        position = self.place.members.index(source)

        def send_all() -> None:
            for tensor in tensors:
                staged = tensor if tensor.device == self.device else tensor.to(self.device)
                self.dist.broadcast(staged, src=position)
                if staged is not tensor:
                    tensor.copy_(staged)
        return self._collective(send_all)

    def _collective(self, fn: Callable[[], None]) -> bool:
        """Run a collective; False (and ``error``) if the group failed."""
        try:
            fn()
        except RuntimeError as exc:   # torch's (and gloo's, NCCL's) way of saying the group broke
            self.error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            return False
        return True
