"""Cores of actors on standby are lent to the members that stay, and given back."""

from leptonrt.broker.cores import Lending
from leptonrt.broker.events import Pin
from leptonrt.broker.rebalance import Cores, Regroup as Membership
from leptonrt.messages import Grant, Hello, Regroup, Standby, Threads, Welcome

from tests.broker.test_job import Cluster, StubRebalancer, make_core, sends

HOME = {0: (0,), 1: (1,), 2: (2,), 3: (3,)}


def test_the_idle_ranks_cores_go_round_the_members_by_rank():
    lending = Lending(HOME)
    assert lending.cores([0, 1, 2, 3]) == HOME
    assert lending.cores([0, 2]) == {0: (0, 1), 1: (1,), 2: (2, 3), 3: (3,)}
    assert lending.threads([3]) == {0: 1, 1: 1, 2: 1, 3: 4}
    # a rank that is neither a member nor idle (a replacement starting) keeps its core to itself
    assert lending.cores([0, 1], idle=[3]) == {0: (0, 3), 1: (1,), 2: (2,), 3: (3,)}


def test_a_member_that_declined_lent_cores_keeps_its_own_and_the_others_share_them():
    lending = Lending(HOME)
    assert lending.cores([0, 2], declined=[0]) == {0: (0,), 1: (1,), 2: (2, 1, 3), 3: (3,)}
    # when every member declines, the cores of those on standby stay idle
    assert lending.threads([0], declined=[0]) == {0: 1, 1: 1, 2: 1, 3: 1}


def test_actors_without_cores_of_their_own_neither_lend_nor_borrow():
    lending = Lending({0: (0,), 1: None, 2: (2,)})   # rank 1: a GPU actor, or another host's
    assert lending.cores([1]) == {0: (0,), 2: (2,)}
    assert lending.cores([0, 1]) == {0: (0, 2), 2: (2,)}


class Changes(StubRebalancer):
    """A rebalancer that asks for the given membership changes, one per decision."""

    def __init__(self, *changes):
        super().__init__()
        self.changes = list(changes)

    def decide(self, split, members, *, steps_left, stale=frozenset()):
        return self.changes.pop(0) if self.changes else None


def _change(members, split, reason):
    return Membership(members=members, split=split, saving_s=1.0, horizon=100, cost_s=0.01, reason=reason,
                      expected_s=1.0)


def _until(cluster, rank, start, kind, split):
    """Report ``rank``'s steps from ``start`` on, a window at a time, until the core sends a
    ``kind``: what it sent then."""
    for first in range(start, 64, 8):
        out = cluster.report(rank, *range(first, first + 8), split=split)
        if sends(out, kind):
            return out
    raise AssertionError(f"no {kind.__name__} by step 64")


def _take(*declined):
    return Cores(declined=declined, saving_s=1e-4, horizon=100, cost_s=1e-3,
                 reason="rank 0 takes the cores of those on standby" if not declined else "rank 0 gives back")


def _pair_with_rank_1_going_to_standby():
    """Two pinned CPU actors, one core each, whose rebalancer puts rank 1 on standby at the
    next report: (rebalancer, core, cluster), before rank 1's report that triggers it."""
    reb = Changes()
    core = make_core(2, epochs=6, window=8, snapshot_every=4, rebalancer=reb, lending=Lending({0: (0,), 1: (1,)}))
    cluster = Cluster(core, 2)
    cluster.start()
    cluster.report(0, *range(8))
    reb.changes.append(_change((0,), (4, 0), "rank 1 to standby"))
    cluster.now = 1.0
    return reb, core, cluster


def test_a_standby_lends_nothing_until_the_member_takes_the_cores_and_a_readmission_takes_them_back():
    reb, core, cluster = _pair_with_rank_1_going_to_standby()
    out = cluster.report(1, *range(8))
    assert sends(out, Standby) and [(r.rank, r.threads, r.cores) for r in sends(out, Regroup)] == [(0, 1, None)]
    assert not [e for e in out if isinstance(e, Pin)]
    # the rebalancer has the member take the idle core: it is told its cores and threads from a
    # step not yet granted, and moves itself there (no Pin: it is training)
    reb.changes.append(_take())
    cluster.now = 2.0
    granted = core.grants.granted
    out = cluster.report(0, *range(8, 16), split=[4, 0])
    told = sends(out, Threads)
    assert [(t.threads, t.cores, t.generation) for t in told] == [(2, [0, 1], core.generation)]
    assert told[0].from_step >= granted and not [e for e in out if isinstance(e, Pin)]
    assert not sends(out, Regroup) and core.result()["actors"][0]["threads"] == 2
    # the models switch when the first step on the new cores is committed, not before
    before = list(reb.configured)
    cluster.report(0, *range(16, told[0].from_step), split=[4, 0])
    assert reb.configured == before
    cluster.report(0, told[0].from_step, split=[4, 0])
    assert reb.configured[len(before):] == [(0, 2), (1, 1)] and reb.declined == frozenset()
    # a re-admission gives the core back: the member's Regroup says its own cores
    reb.changes.append(_change((0, 1), (2, 2), "rank 1 re-admitted"))
    cluster.now = 3.0
    out = _until(cluster, 0, told[0].from_step + 1, Regroup, [4, 0])
    assert sorted((r.rank, r.threads, r.cores) for r in sends(out, Regroup)) == [(0, 1, [0]), (1, 1, None)]
    assert not [e for e in out if isinstance(e, Pin)]
    assert reb.configured[-2:] == [(0, 1), (1, 1)] and sends(out, Grant)[-1].split == [2, 2]


def test_a_member_that_gives_back_its_lent_cores_is_told_its_own_from_an_ungranted_step():
    reb, core, cluster = _pair_with_rank_1_going_to_standby()
    cluster.report(1, *range(8))
    reb.changes.append(_take())
    cluster.now = 2.0
    cluster.report(0, *range(8, 16), split=[4, 0])
    # measured slower on both, it gives the lent core back
    reb.changes.append(_take(0))
    cluster.now = 3.0
    out = cluster.report(0, *range(16, 24), split=[4, 0])
    assert [(t.threads, t.cores) for t in sends(out, Threads)] == [(1, [0])]
    assert not sends(out, Regroup) and not sends(out, Standby)
    assert core.result()["actors"][0]["threads"] == 1 and core.last_change.reason == "rank 0 gives back"


def test_a_member_lent_cores_that_is_lost_is_replaced_on_its_own_and_told_so():
    reb = Changes()
    core = make_core(3, batch=6, epochs=12, window=8, snapshot_every=4, rebalancer=reb,
                     lending=Lending({0: (0,), 1: (1,), 2: (2,)}))
    cluster = Cluster(core, 3)
    cluster.start()
    cluster.report(0, *range(8))
    cluster.report(1, *range(8))
    reb.changes.append(_change((0, 1), (3, 3, 0), "rank 2 to standby"))
    cluster.now = 1.0
    cluster.report(2, *range(8))
    reb.changes.append(_take())   # both members take the lent cores: rank 2's goes round, to rank 0
    cluster.now = 1.5
    out = cluster.report(1, *range(8, 16), split=[3, 3, 0])
    out += cluster.report(0, *range(8, 16), split=[3, 3, 0])
    assert [(t.threads, t.cores) for t in sends(out, Threads)] == [(2, [0, 2])]
    out = core.exited("a0", "exit 9", now=2.0)   # the member lent a core dies: its replacement starts on core 0
    assert [(r.threads, r.cores) for r in sends(out, Regroup)] == [(2, [1, 2])]   # rank 1 alone, with rank 2's core
    assert not [e for e in out if isinstance(e, Pin)]
    cluster.now = 3.0
    out = core.handle(b"id9", Hello(actor_id="a0", pid=900, device="cpu", device_name="cpu", threads=1,
                                    memory_bytes=0, bf16=False), now=3.0)
    if not sends(out, Welcome):
        out += _until(cluster, 1, 16, Welcome, [0, 6, 0])   # to the boundary, where it joins
    # the replacement joins: it was started on its own core, so it is pinned to its share
    # before its Welcome says how many threads (it is idle), and rank 1's Regroup gives the lent core back
    assert [e for e in out if isinstance(e, Pin)] == [Pin("a0", (0, 2))]
    assert [(r.rank, r.cores) for r in sends(out, Regroup)] == [(1, [1])]
    assert next(m for m in sends(out, Welcome)).threads == 2
