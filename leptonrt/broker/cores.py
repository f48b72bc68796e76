"""Which cores each CPU actor of a job runs on while some of them are on standby.

Pure. Each pinned CPU actor has cores of its own (``actors.devices.core_sets``: one core and
one thread each). An actor the rebalancer puts on standby leaves its cores idle, while a
single CPU actor alone would have had all of them: so the members that stay are lent the
idle cores, and run a thread on each, until the actor on standby is taken back. Without
this the member left after a standby kept one core of two (measured on a 2-core box,
784-128-10 at batch 64: 1 thread 72-77K samples/s, 2 threads 87-94K).

Lent cores are not always faster: a small matmul splits worse over two threads than it runs
on one (bare PyTorch, 64-128-10 at batch 64 on the same box: 1 thread 119-132K samples/s, 2
threads 92-97K). So a member may *decline* them: the rebalancer measures it on the cores
lent, and has it give them back where its own are faster (``policy.Rebalancer``); the cores
then stay idle.

Only actors with cores of their own take part (local, pinned CPU actors); GPU actors,
actors of other hosts and unpinned ones keep what they have.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

__all__ = ["Lending"]


class Lending:
    """The cores of each rank, given which ranks are in the gradient group.

    ``home``: rank -> the cores it was started on (ranks absent from it are never lent to
    and lend nothing). A rank out of the group lends its cores; the members among ``home``
    share them, one core each in turn by rank, so each member's share differs by at most one.
    """

    def __init__(self, home: Mapping[int, tuple[int, ...]]) -> None:
        self.home = {rank: tuple(cores) for rank, cores in home.items() if cores}

    def cores(self, members: Collection[int], idle: Collection[int] | None = None,
              declined: Collection[int] = ()) -> dict[int, tuple[int, ...]]:
        """rank -> its cores (every rank of ``home``) while ``members`` form the group and the
        ranks ``idle`` (on standby; by default every other rank) lend theirs to the members
        that have not ``declined`` them. A rank neither (a replacement starting, say) keeps
        its own."""
        inside = sorted(r for r in self.home if r in members and r not in declined)
        idle = [r for r in self.home if r not in members] if idle is None else idle
        out = dict(self.home)
        if not inside:
            return out
        lent = sorted(c for r in idle if r in self.home and r not in members for c in self.home[r])
        for i, core in enumerate(lent):
            rank = inside[i % len(inside)]
            out[rank] = out[rank] + (core,)
        return out

    def threads(self, members: Collection[int], idle: Collection[int] | None = None,
                declined: Collection[int] = ()) -> dict[int, int]:
        """rank -> the threads it runs (one per core), as ``cores`` says."""
        return {rank: len(cores) for rank, cores in self.cores(members, idle, declined).items()}
