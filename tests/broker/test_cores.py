"""Cores of actors on standby are lent to the members that stay, and given back."""

from leptonrt.broker.cores import Lending
from leptonrt.broker.events import Pin, Send
from leptonrt.broker.rebalance import Regroup as Membership
from leptonrt.messages import Grant, Hello, Regroup, Standby, Welcome

from tests.broker.test_job import Cluster, StubRebalancer, make_core, sends

HOME = {0: (0,), 1: (1,), 2: (2,), 3: (3,)}


def test_the_idle_ranks_cores_go_round_the_members_by_rank():
    lending = Lending(HOME)
    assert lending.cores([0, 1, 2, 3]) == HOME
    assert lending.cores([0, 2]) == {0: (0, 1), 1: (1,), 2: (2, 3), 3: (3,)}
    assert lending.threads([3]) == {0: 1, 1: 1, 2: 1, 3: 4}
    # a rank that is neither a member nor idle (a replacement starting) keeps its core to itself
    assert lending.cores([0, 1], idle=[3]) == {0: (0, 3), 1: (1,), 2: (2,), 3: (3,)}


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


def test_a_standby_lends_its_core_to_the_member_and_a_readmission_takes_it_back():
    reb = Changes()
    core = make_core(2, epochs=6, window=8, snapshot_every=4, rebalancer=reb, lending=Lending({0: (0,), 1: (1,)}))
    cluster = Cluster(core, 2)
    cluster.start()
    cluster.report(0, *range(8))
    reb.changes.append(_change((0,), (4, 0), "rank 1 to standby"))
    cluster.now = 1.0
    out = cluster.report(1, *range(8))
    pins = [e for e in out if isinstance(e, Pin)]
    assert pins == [Pin("a0", (0, 1))] and sends(out, Standby)
    # the pin comes before the Regroup that tells the member how many threads to run
    assert out.index(pins[0]) < next(i for i, e in enumerate(out) if isinstance(e, Send)
                                     and isinstance(e.message, Regroup))
    assert [(r.rank, r.threads) for r in sends(out, Regroup)] == [(0, 2)]
    assert (0, 2) in reb.configured and core.result()["actors"][0]["threads"] == 2
    reb.changes.append(_change((0, 1), (2, 2), "rank 1 re-admitted"))
    cluster.now = 2.0
    out = cluster.report(0, *range(8, 16), split=[4, 0])
    assert [e for e in out if isinstance(e, Pin)] == [Pin("a0", (0,))]
    assert sorted((r.rank, r.threads) for r in sends(out, Regroup)) == [(0, 1), (1, 1)]
    assert reb.configured[-2:] == [(0, 1), (1, 1)] and sends(out, Grant)[-1].split == [2, 2]


def test_a_member_lent_cores_that_is_lost_is_replaced_on_its_own_and_told_so():
    reb = Changes()
    core = make_core(3, batch=6, epochs=6, window=8, snapshot_every=4, rebalancer=reb,
                     lending=Lending({0: (0,), 1: (1,), 2: (2,)}))
    cluster = Cluster(core, 3)
    cluster.start()
    cluster.report(0, *range(8))
    cluster.report(1, *range(8))
    reb.changes.append(_change((0, 1), (3, 3, 0), "rank 2 to standby"))
    cluster.now = 1.0
    out = cluster.report(2, *range(8))
    assert [e for e in out if isinstance(e, Pin)] == [Pin("a0", (0, 2))]   # rank 2's core goes round, to rank 0
    out = core.exited("a0", "exit 9", now=2.0)   # the member lent a core dies: its replacement starts on core 0
    assert [r.threads for r in sends(out, Regroup)] == [2]   # rank 1 alone, with its core and rank 2's
    assert [e for e in out if isinstance(e, Pin)] == [Pin("a1", (1, 2))]
    cluster.now = 3.0
    out = core.handle(b"id9", Hello(actor_id="a0", pid=900, device="cpu", device_name="cpu", threads=1,
                                    memory_bytes=0, bf16=False), now=3.0)
    out += cluster.report(1, *range(8, 16), split=[0, 6, 0])   # to the boundary (16), where it joins
    # the replacement joins: it was started on its own core, so it is pinned to its share
    # before its Welcome says how many threads, and rank 1 gives the lent core back
    pins = [e for e in out if isinstance(e, Pin)]
    assert sorted(pins, key=lambda p: p.actor_id) == [Pin("a0", (0, 2)), Pin("a1", (1,))]
    assert next(m for m in sends(out, Welcome)).threads == 2
