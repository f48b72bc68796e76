"""The rendezvous store the broker keeps: torch.distributed's operations, within bounds."""

from leptonrt.broker.store import StoreCore
from leptonrt.messages import StoreRequest

NS = "job1/gen0/"


def req(seq, op, *keys, **fields):
    return StoreRequest(seq=seq, op=op, keys=[NS + k for k in keys], **fields)


def store(**bounds):
    core = StoreCore(**bounds)
    core.open_only(NS)
    return core


def test_set_then_get_returns_the_value_to_the_asker():
    core = store()
    assert core.handle(b"a", req(1, "set", "k", value=b"v"))[0][1].ok
    [(to, reply)] = core.handle(b"b", req(2, "get", "k"))
    assert (to, reply.seq, reply.ok, reply.value) == (b"b", 2, True, b"v")


def test_a_waiting_get_is_answered_when_the_key_is_set():
    core = store()
    assert core.handle(b"b", req(5, "get", "k", wait=True)) == []
    out = core.handle(b"a", req(6, "set", "k", value=b"addr"))
    assert [(to, r.seq, r.value) for to, r in out] == [(b"a", 6, b""), (b"b", 5, b"addr")]


def test_add_counts_and_compare_set_follows_torchs_rule_for_a_missing_key():
    core = store()
    assert [core.handle(b"a", req(i, "add", "n", amount=2))[0][1].number for i in range(3)] == [2, 4, 6]
    assert core.handle(b"a", req(9, "compare_set", "c", expected=b"", value=b"x"))[0][1].value == b"x"
    assert core.handle(b"a", req(10, "compare_set", "c", expected=b"y", value=b"z"))[0][1].value == b"x"


def test_keys_outside_the_open_namespace_are_refused():
    core = store()
    [(_, reply)] = core.handle(b"a", StoreRequest(seq=1, op="set", keys=["job2/gen0/k"], value=b"v"))
    assert not reply.ok and "namespace" in reply.message
    assert core.statistics().refused == 1


def test_a_store_past_its_bounds_refuses_instead_of_growing():
    core = store(max_keys=3, max_bytes=1000)
    replies = [core.handle(b"a", req(i, "set", f"k{i}", value=b"x"))[0][1].ok for i in range(5)]
    assert replies == [True, True, True, False, False]
    assert not core.handle(b"a", req(9, "set", "k0", value=b"x" * 2000))[0][1].ok
    assert core.statistics().keys == 3


def test_waiters_are_bounded():
    core = store(max_waiters=2)
    assert core.handle(b"a", req(1, "get", "x", wait=True)) == []
    assert core.handle(b"a", req(2, "get", "y", wait=True)) == []
    [(_, reply)] = core.handle(b"a", req(3, "get", "z", wait=True))
    assert not reply.ok


def test_opening_the_next_generation_drops_the_old_keys_and_refuses_its_waiters():
    core = store()
    core.handle(b"a", req(1, "set", "k", value=b"v"))
    core.handle(b"b", req(2, "get", "never", wait=True))
    out = core.open_only("job1/gen1/")
    assert [(to, r.seq, r.ok) for to, r in out] == [(b"b", 2, False)]
    assert core.statistics().keys == 0 and core.statistics().bytes == 0
    assert core.close() == []
