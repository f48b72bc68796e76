"""The agent's desk and an actor's line to it, on a real ipc socket: a piece comes whole once
its frames are there, credit follows what the actor takes, a regroup starts afresh."""

import numpy as np
import pytest
import zmq

from leptonrt.actors.rows import ENV, Desk, Rows
from leptonrt.data.stream import BatchFeeder
from leptonrt.errors import ConfigError
from leptonrt.messages import BatchCredit

N, D, BATCH = 40, 3, 8
X = np.arange(N * D, dtype=np.float32).reshape(N, D)
Y = np.arange(N, dtype=np.int64)


def order(epoch):
    return np.random.default_rng([2, epoch]).permutation(N)


@pytest.fixture
def desk(tmp_path, monkeypatch):
    ctx = zmq.Context()
    d = Desk(ctx, tmp_path)
    monkeypatch.setenv(ENV, d.endpoint)
    rows = Rows(7, D, BATCH)
    try:
        yield d, rows
    finally:
        rows.close()
        d.close()
        ctx.term()


def patient(polls=200):
    """A shell that waits a bounded while (a test must fail, not hang)."""
    left = [polls]

    def meanwhile():
        left[0] -= 1
        return left[0] > 0
    return meanwhile


def pump(desk, feeder, messages):
    """Credits to the head's feeder, its frames to the desk, until nothing moves."""
    while messages:
        frames = [f for m in messages if isinstance(m, BatchCredit) for f in feeder.handle(m)]
        messages = [c for f in frames for c in desk.frame(f)]


def test_an_actor_waits_for_its_piece_and_gets_exactly_its_rows(desk):
    desk, rows = desk
    feeder = BatchFeeder(7, 1, X, Y, order, BATCH)
    feeder.plan([(0, 5, 8), (1, 5, 8)])
    rows.ask(1, 0, 0, 5, 8)
    assert desk.sock.poll(2000)
    pump(desk, feeder, desk.requests())   # the first credit: the window
    x, y = rows.wait(1, 0, 0, 5, 8, 10, meanwhile=patient())
    idx = order(0)[5:8]
    assert np.array_equal(x, X[idx]) and np.array_equal(y, Y[idx])


def test_waiting_ends_when_the_shell_says_so_and_a_newer_generation_starts_afresh(desk):
    desk, rows = desk
    feeder = BatchFeeder(7, 1, X, Y, order, BATCH)
    rows.ask(1, 0, 0, 5, 8)
    assert desk.sock.poll(2000)
    pump(desk, feeder, desk.requests())   # nothing planned yet: the rows never come
    assert rows.wait(1, 0, 0, 5, 8, 10, meanwhile=lambda: False) is None
    feeder.regroup(1)   # the head moves first...
    feeder.plan([(0, 4, 8)])
    rows.ask(1, 1, 0, 4, 8)   # ...then the actor asks in the new generation
    assert desk.sock.poll(2000)
    pump(desk, feeder, desk.requests())
    x, _y = rows.wait(1, 1, 0, 4, 8, 10, meanwhile=patient())
    assert np.array_equal(x, X[order(0)[4:8]])


def test_an_actor_without_a_rows_socket_is_told_in_one_line(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(ConfigError, match="named no rows socket"):
        Rows(7, D, BATCH)
