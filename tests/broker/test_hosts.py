"""The table of joined hosts (pure): who a host is comes from its key, and losing it loses all its actors."""

from leptonrt.broker.events import Send
from leptonrt.broker.hosts import HostJoined, HostLost, HostTable, RemoteExit
from leptonrt.messages import ActorExited, HostActor, HostBeat, HostBye, HostHello, HostRefused, HostWelcome


def hello(*ids):
    return HostHello(pid=7, actors=[HostActor(i, "cpu", 1) for i in ids], memory_bytes=1 << 30,
                     versions=("leptonrt 0.1.0",), gradient_iface="eth1")


def test_a_host_is_named_by_its_key_and_its_actors_get_ids_under_that_name():
    table = HostTable()
    out = table.handle(b"A", "alpha", hello("a0", "a1"), now=0.0)
    assert isinstance(out[0], Send) and out[0].message == HostWelcome(name="alpha", beat_s=0.5, lost_after_s=5.0)
    assert [a.actor_id for a in out[1].actors] == ["alpha/a0", "alpha/a1"]
    assert table.agent_of("alpha/a1") == b"A" and table.agent_of("beta/a0") is None


def test_a_message_from_another_connection_or_key_than_the_agents_is_dropped():
    table = HostTable()
    table.handle(b"A", "alpha", hello("a0"), now=0.0)
    assert table.handle(b"B", "alpha", ActorExited(actor_id="a0", how="exit code 1"), now=1.0) == []
    assert table.handle(b"A", "beta", HostBye(reason="x"), now=1.0) == []
    assert table.bad_messages == 2 and "alpha" in table.hosts


def test_an_actor_exit_names_the_host_and_a_beat_is_answered():
    table = HostTable()
    table.handle(b"A", "alpha", hello("a0"), now=0.0)
    assert table.handle(b"A", "alpha", HostBeat(running=1), now=1.0) == [Send(b"A", HostBeat())]
    [exit_] = table.handle(b"A", "alpha", ActorExited(actor_id="a0", how="killed by SIGKILL"), now=1.0)
    assert exit_ == RemoteExit("alpha/a0", "killed by SIGKILL (on host alpha)")


def test_a_silent_host_is_lost_with_all_its_actors_at_once():
    table = HostTable(lost_after_s=5.0)
    table.handle(b"A", "alpha", hello("a0", "a1"), now=0.0)
    assert table.tick(4.0) == []
    [lost] = table.tick(6.0)
    assert isinstance(lost, HostLost) and lost.actors == ("alpha/a0", "alpha/a1") and "silent" in lost.why
    assert table.hosts == {}


def test_the_same_key_joining_again_replaces_the_host_it_came_back_as():
    table = HostTable()
    table.handle(b"A", "alpha", hello("a0"), now=0.0)
    out = table.handle(b"B", "alpha", hello("a0"), now=2.0)
    assert isinstance(out[0], HostLost) and out[0].actors == ("alpha/a0",)
    assert isinstance(out[-1], HostJoined) and table.agent_of("alpha/a0") == b"B"


def test_no_host_joins_a_head_that_refuses_hosts_and_it_says_why():
    table = HostTable(refuse="no interface for gradients")
    assert table.handle(b"A", "alpha", hello("a0"), now=0.0) == [Send(b"A", HostRefused(
        message="no interface for gradients"))]
    assert table.hosts == {}
