"""Batches by value: each remote actor gets exactly the rows of its pieces, in order,
within a bounded window, across regroups; bad frames are refused."""

from collections import deque

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leptonrt import messages
from leptonrt.batches import piece, steps_per_epoch
from leptonrt.data.stream import BatchFeeder, BatchReceiver, rows_per_frame
from leptonrt.errors import ConfigError, InternalError, ProtocolError
from leptonrt.messages import BATCH_FRAME, BATCH_WINDOW, BatchCredit, BatchRows

# Wide rows, so that a piece takes several frames: 8,200 bytes a row, 63 rows a frame.
N, D = 600, 2048
RNG = np.random.default_rng(3)
X, Y = RNG.standard_normal((N, D), dtype=np.float32), RNG.integers(0, 10, N)
SEED = 5
PER_FRAME = rows_per_frame(D)


def order(epoch):
    """A permutation per epoch, as every process derives it (here from numpy, not torch)."""
    return np.random.default_rng([SEED, epoch]).permutation(N)


def pieces(split, rank, batch, steps):
    for step in steps:
        rows = min(batch, N - (step % steps_per_epoch(N, batch)) * batch)
        yield (step, *piece(split, rows, rank))


def expected(step, start, stop, batch):
    epoch, t = divmod(step, steps_per_epoch(N, batch))
    idx = order(epoch)[t * batch + start: t * batch + stop]
    return X[idx], Y[idx]


def wire(msg):
    return messages.decode(messages.encode(msg))


def pair(rank=1, window=4, batch=128):
    feeder = BatchFeeder(7, rank, X, Y, order, batch)
    return feeder, BatchReceiver(7, rank, D, batch, window=window)


def test_an_actor_gets_exactly_the_rows_of_its_pieces_over_two_epochs():
    batch, split = 128, [80, 48]  # two frames, and one
    assert PER_FRAME == 63
    feeder, receiver = pair(rank=0, window=4, batch=batch)
    plan = list(pieces(split, 0, batch, range(2 * steps_per_epoch(N, batch))))
    to_agent = deque(wire(m) for r in receiver.start() for m in feeder.handle(wire(r)))
    to_agent.extend(wire(m) for m in feeder.plan(plan))
    for step, start, stop in plan:
        rows = None
        while rows is None:
            receiver.handle(to_agent.popleft())
            rows, credit = receiver.take(step, start, stop)
            to_agent.extend(wire(m) for c in credit for m in feeder.handle(wire(c)))
        x, y = expected(step, start, stop, batch)
        assert np.array_equal(rows.x, x) and np.array_equal(rows.y, y)
    assert not to_agent and feeder.sent_frames == sum(-(-(b - a) // PER_FRAME) for _, a, b in plan)


@settings(max_examples=50, deadline=None)
@given(window=st.integers(1, 8), schedule=st.lists(st.sampled_from(["deliver", "credit", "take"]), max_size=300))
def test_the_agent_never_holds_more_than_its_window(window, schedule):
    """Any interleaving of deliveries, credits and the actor's takes: the frames on their
    way plus those held never exceed the window, and every piece arrives whole."""
    batch, split = 256, [150, 106]  # three frames a piece: the window is at least four
    feeder, receiver = pair(rank=0, window=window, batch=batch)
    plan = deque(pieces(split, 0, batch, range(6)))
    to_head, to_agent = deque(receiver.start()), deque(feeder.plan(plan))
    moves = iter(schedule)
    while plan:
        move = next(moves, None) or ("deliver" if to_agent else "credit" if to_head else "take")
        if move == "deliver" and to_agent:
            receiver.handle(wire(to_agent.popleft()))
        elif move == "credit" and to_head:
            to_agent.extend(feeder.handle(wire(to_head.popleft())))
        elif move == "take":
            rows, credit = receiver.take(*plan[0])
            to_head.extend(credit)
            if rows is not None:
                assert np.array_equal(rows.x, expected(*plan.popleft(), batch)[0])
        assert len(to_agent) + receiver._held <= max(window, 256 // PER_FRAME + 1) == receiver.window


def rows(generation=0, rank=1, stop=4, first=0, n=1, width=D):
    return BatchRows(job_id=7, rank=rank, generation=generation, step=0, start=0, stop=stop, first=first,
                     x=b"\0" * 4 * width * n, y=b"\0" * 8 * n)


def test_frames_beyond_the_credit_out_of_order_or_misshapen_are_refused():
    feeder, receiver = pair(window=2, batch=64)  # 64 rows: two frames, the least window there is
    receiver.start()
    feeder.handle(BatchCredit(job_id=7, rank=1, generation=0, frames=8))
    frames = feeder.plan([(0, 0, 64), (1, 0, 64)])
    with pytest.raises(ProtocolError, match=r"rows \[0, ...\) of step 1 .* beyond the 2 frames credited"):
        for frame in frames[:3]:
            receiver.handle(frame)
    receiver = BatchReceiver(7, 1, D, 64, window=8)
    with pytest.raises(ProtocolError, match="out of order: expected position 0"):
        receiver.handle(frames[1])
    with pytest.raises(ProtocolError, match="bytes of inputs for 2 rows"):
        receiver.handle(rows(n=2, width=D // 2))
    with pytest.raises(ProtocolError, match="hold 1 rows, not 4"):
        receiver.handle(rows(n=1))
    with pytest.raises(ProtocolError, match="of generation 1; this actor is in 0"):
        receiver.handle(rows(generation=1))
    with pytest.raises(ProtocolError, match="for job 7 rank 2"):
        receiver.handle(rows(rank=2))


def test_a_batch_that_takes_more_frames_than_an_agent_holds_is_refused():
    with pytest.raises(ConfigError, match=f"takes 65 frames to stream; an agent holds at most {BATCH_WINDOW}"):
        BatchReceiver(7, 1, D, PER_FRAME * 64 + 1)


def test_a_frame_whose_rows_leave_its_piece_is_refused_by_the_wire():
    fields = {"job_id": 7, "rank": 1, "generation": 0, "step": 0, "start": 0, "stop": 2, "first": 1,
              "x": b"", "y": b"\0" * 16}
    with pytest.raises(ProtocolError, match=r"rows \[1, 3\) do not lie in the piece \[0, 2\)"):
        messages.decode(msgpack.packb([messages.VERSION, "BatchRows", fields]))


def test_after_a_regroup_old_frames_are_dropped_and_the_new_plan_arrives():
    batch = 128
    feeder, receiver = pair(window=4, batch=batch)
    old = feeder.handle(receiver.start()[0]) + feeder.plan([(3, 0, 100)])
    feeder.regroup(1)
    (credit,) = receiver.regroup(1)
    assert credit.generation == 1 and credit.frames == 4
    assert feeder.handle(BatchCredit(job_id=7, rank=1, generation=0, frames=4)) == []  # a stale credit
    for frame in old:
        assert receiver.handle(frame) == []  # planned before the regroup: dropped
    new = feeder.handle(credit) + feeder.plan([(2, 20, 128)])
    for frame in new:
        receiver.handle(frame)
    got, _ = receiver.take(2, 20, 128)
    assert len(old) == len(new) == 2 and np.array_equal(got.y, expected(2, 20, 128, batch)[1])


def test_pieces_the_actor_moved_past_are_dropped_and_their_frames_credited_back():
    feeder, receiver = pair(window=4, batch=128)
    frames = feeder.handle(receiver.start()[0]) + feeder.plan([(0, 0, 100), (1, 0, 100)])
    for frame in frames:
        receiver.handle(frame)
    got, credit = receiver.take(1, 0, 100)  # step 0 was trained elsewhere (a resplit)
    assert got is not None and credit == [BatchCredit(job_id=7, rank=1, generation=0, frames=4)]
    empty, credit = receiver.take(2, 10, 10)  # no rows for this actor in step 2
    assert empty.x.shape == (0, D) and credit == []


def test_a_piece_outside_its_batch_is_our_bug():
    feeder, _ = pair(batch=128)
    with pytest.raises(InternalError, match=r"piece \[0, 100\) of step 4 is not in its batch of 88 rows"):
        feeder.plan([(4, 0, 100)])  # 600 rows: the fifth batch holds 88


def test_rows_too_wide_for_a_frame_cannot_be_streamed():
    wide = np.zeros((4, BATCH_FRAME // 4), np.float32)
    with pytest.raises(ConfigError, match="too wide to stream"):
        BatchFeeder(1, 0, wide, np.zeros(4, np.int64), lambda e: np.arange(4), 2)
