"""The broker's ROUTER socket: non-blocking I/O and a wait on its file descriptor (socket tier)."""

from __future__ import annotations

import asyncio

import pytest
import zmq

from leptonrt.broker.channel import Channel, PeerGone


@pytest.fixture
def pair(tmp_path):
    channel = Channel(f"ipc://{tmp_path}/broker.sock", 1 << 20)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"ipc://{tmp_path}/broker.sock")
    yield channel, dealer
    dealer.close(linger=0)
    ctx.term()
    channel.close()


def _roundtrip(channel: Channel, dealer: zmq.Socket) -> bytes:
    dealer.send(b"hello")
    frames = None
    while frames is None:
        frames = channel.recv_nowait()
    identity, payload = frames
    assert payload == b"hello"
    return identity


def test_a_wait_with_nothing_queued_ends_after_its_timeout(pair):
    channel, _dealer = pair

    async def main():
        return await channel.wait_readable(30)

    assert asyncio.run(main()) is False
    assert channel.recv_nowait() is None


def test_a_message_that_arrives_during_a_wait_ends_it_and_can_be_received(pair):
    channel, dealer = pair

    async def main():
        asyncio.get_running_loop().call_later(0.02, dealer.send, b"report")
        return await channel.wait_readable(10_000), channel.recv_nowait()

    ready, frames = asyncio.run(main())
    assert ready is True
    assert frames[1] == b"report"


def test_a_message_queued_before_the_wait_is_seen_without_waiting(pair):
    channel, dealer = pair
    identity = _roundtrip(channel, dealer)   # the connection is up
    dealer.send(b"first")
    dealer.send(b"second")
    assert dealer.poll(0, zmq.POLLOUT)

    async def main():
        got = []
        while len(got) < 2:
            assert await channel.wait_readable(10_000)
            got.append(channel.recv_nowait()[1])
        # with nothing queued, a zero timeout does not wait at all
        return got, await channel.wait_readable(0)

    assert asyncio.run(main()) == ([b"first", b"second"], False)
    assert channel.send_nowait(identity, b"grant")
    assert dealer.poll(5000) and dealer.recv() == b"grant"


def test_an_idle_channel_does_not_wake_the_loop_over_and_over(pair):
    """The descriptor is cleared by reading EVENTS; without that a level-triggered loop spins."""
    channel, dealer = pair
    _roundtrip(channel, dealer)
    calls = 0
    on_change = channel._on_change

    def counted():
        nonlocal calls
        calls += 1
        on_change()

    channel._on_change = counted

    async def main():
        dealer.send(b"one")
        assert await channel.wait_readable(10_000)
        channel.recv_nowait()
        return await channel.wait_readable(200)

    assert asyncio.run(main()) is False
    assert calls <= 5   # a spinning loop calls it thousands of times in 200 ms


def test_the_channel_follows_its_caller_from_one_event_loop_to_the_next(pair):
    channel, dealer = pair

    async def one(payload: bytes):
        asyncio.get_running_loop().call_later(0.01, dealer.send, payload)
        assert await channel.wait_readable(10_000)
        return channel.recv_nowait()[1]

    assert asyncio.run(one(b"a")) == b"a"
    assert asyncio.run(one(b"b")) == b"b"
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(one(b"c")) == b"c"


def test_sending_to_a_peer_that_is_not_connected_says_so(pair):
    channel, _dealer = pair
    with pytest.raises(PeerGone):   # ROUTER_MANDATORY: nothing vanishes silently
        channel.send_nowait(b"\x00nobody", b"grant")



def test_a_second_wait_at_the_same_time_is_refused_and_a_cancelled_wait_leaves_no_trace(pair):
    channel, dealer = pair

    async def main():
        first = asyncio.ensure_future(channel.wait_readable(10_000))
        await asyncio.sleep(0.01)
        try:
            await channel.wait_readable(10_000)
        except RuntimeError as exc:
            refused = str(exc)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        asyncio.get_running_loop().call_later(0.01, dealer.send, b"after")
        return refused, await channel.wait_readable(10_000)

    refused, ready = asyncio.run(main())
    assert "already being awaited" in refused
    assert ready is True and channel.recv_nowait()[1] == b"after"
