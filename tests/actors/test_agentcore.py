"""The host agent's pure core: what the head says and the actors do in, effects out."""

import pytest

from leptonrt.actors.agentcore import AgentCore, AgentState, Fill, Kill, Leave, Send, Spawn
from leptonrt.errors import InternalError
from leptonrt.messages import ActorExited, CacheDone, HostBeat, HostBye, HostWelcome, KillActor, StartActor

WELCOME = HostWelcome(name="alpha", beat_s=0.5, lost_after_s=5.0)


def serving(now=0.0):
    core = AgentCore(["a0", "a1"], "tcp://head:7420")
    return core, core.welcomed(WELCOME, now)


def test_a_welcome_starts_one_actor_per_device():
    core, out = serving()
    assert out == [Spawn("a0", 0), Spawn("a1", 0)] and core.state == AgentState.SERVING


def test_it_beats_when_due_and_only_then():
    core, _ = serving()
    assert core.tick(0.2, running=2) == []
    assert core.tick(0.5, running=2) == [Send(HostBeat(running=2))]
    assert core.tick(0.7, running=1) == []
    assert core.tick(1.0, running=1) == [Send(HostBeat(running=1))]


def test_the_head_silent_for_longer_than_agreed_makes_it_leave_with_69():
    core, _ = serving()
    core.handle(HostBeat(), now=3.0)         # the head's answer to a beat counts as hearing it
    assert not [e for e in core.tick(8.0, running=2) if isinstance(e, Leave)]
    left = [e for e in core.tick(8.1, running=2) if isinstance(e, Leave)]
    assert left and left[0].code == 69 and "silent for 5.1 s" in left[0].why
    assert core.state == AgentState.LEFT
    assert core.tick(20.0, running=0) == [] and core.handle(HostBeat(), 20.0) == []   # nothing more once gone


def test_the_head_saying_goodbye_makes_it_leave_with_69():
    core, _ = serving()
    [left] = core.handle(HostBye(reason="the broker closed"), 1.0)
    assert left.code == 69 and "closed (the broker closed)" in left.why


def test_a_signal_says_goodbye_then_leaves_with_0():
    core, _ = serving()
    bye, left = core.stop("SIGTERM")
    assert isinstance(bye.message, HostBye) and "SIGTERM" in bye.message.reason
    assert left == Leave(0, "leaving tcp://head:7420 (SIGTERM): stopping this host's actors")
    assert core.stop("SIGINT") == []


def test_starts_and_kills_name_only_its_own_actors():
    core, _ = serving()
    assert core.handle(StartActor(actor_id="a1", incarnation=2), 1.0) == [Spawn("a1", 2)]
    assert core.handle(KillActor(actor_id="a0"), 1.0) == [Kill("a0")]
    assert core.handle(StartActor(actor_id="../a9", incarnation=0), 1.0) == []
    assert core.handle(KillActor(actor_id="b0"), 1.0) == []


def test_exits_are_reported_and_fills_go_to_the_cache():
    core, _ = serving()
    assert core.exited("a1", "exit 1") == [Send(ActorExited(actor_id="a1", how="exit 1"))]
    done = CacheDone(fingerprint="f" * 64)
    assert core.handle(done, 1.0) == [Fill(done)]


def test_welcomed_twice_is_our_bug():
    core, _ = serving()
    with pytest.raises(InternalError, match="agent: event 'welcomed' is not allowed in state 'serving'"):
        core.welcomed(WELCOME, 1.0)
