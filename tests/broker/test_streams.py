"""The head's rows by value: a streaming actor's agent gets the rows of exactly the pieces
its grants give it, moved to each new generation before the actor hears of it."""

import numpy as np
import pytest

from leptonrt import messages
from leptonrt.batches import piece, steps_per_epoch
from leptonrt.broker.streams import Streams
from leptonrt.config import TrainJob
from leptonrt.data.stream import BatchReceiver
from leptonrt.errors import ProtocolError
from leptonrt.messages import (ArrayRef, BatchCredit, BatchRows, DatasetInfo, Grant, JobSpec, Regroup, Resplit,
                               Welcome)

N, D, BATCH = 50, 3, 16
X = np.arange(N * D, dtype=np.float32).reshape(N, D)
Y = np.arange(N, dtype=np.int64)
SPE = steps_per_epoch(N, BATCH)


def order(epoch):
    return np.random.default_rng([1, epoch]).permutation(N)


def welcome(rank, generation=0, by_value=N):
    ref = ArrayRef(segment="s", dtype="float32", shape=[N, D])
    data = DatasetInfo(spec="x", n_features=D, n_classes=2, x_train=ref, y_train=ref, x_test=ref, y_test=ref)
    return Welcome(rank=rank, world_size=2, job=JobSpec(job_id=7, job=TrainJob(batch_size=BATCH)), data=data,
                   steps_per_epoch=SPE, threads=1, backend="gloo", collective_timeout_s=5.0, generation=generation,
                   rows_by_value=by_value)


def wire(msg):
    return messages.decode(messages.encode(msg))


def rows_of(streams, receiver, host, wanted):
    """Credit, frames and takes between the head's side and an agent's, until every piece arrived."""
    out, pending = {}, [(host, m) for m in receiver.start()]
    for step, start, stop in wanted:
        while True:
            for _to, frame in (f for h, c in pending for f in streams.credit(h, wire(c))):
                receiver.handle(wire(frame))
            rows, credit = receiver.take(step, start, stop)
            pending = [(host, c) for c in credit]
            if rows is not None:
                out[step] = rows
                break
            assert pending, f"piece of step {step} stalled"
    return out


def test_a_streaming_actor_gets_the_rows_of_its_granted_pieces_across_an_epoch_and_a_short_batch():
    streams = Streams(7, X, Y, order, BATCH, hosts={1: "alpha"})
    assert streams.before(b"local", welcome(0, by_value=0)) == [] and streams.before(b"remote", welcome(1)) == []
    grant = Grant(job_id=7, first_step=0, end_step=2 * SPE, split=[10, 6])
    assert streams.before(b"local", grant) == []   # rank 0 holds its data: nothing streams for it
    assert streams.before(b"remote", grant) == []  # nothing is sent before the agent's credit
    receiver = BatchReceiver(7, 1, D, BATCH)
    wanted = [(g, *piece([10, 6], min(BATCH, N - (g % SPE) * BATCH), 1)) for g in range(2 * SPE)]
    got = rows_of(streams, receiver, "alpha", wanted)
    for g, start, stop in wanted:
        epoch, t = divmod(g, SPE)
        idx = order(epoch)[t * BATCH + start: t * BATCH + stop]
        assert np.array_equal(got[g].x, X[idx]) and np.array_equal(got[g].y, Y[idx])
    assert wanted[SPE - 1][2] - wanted[SPE - 1][1] == 1   # the short last batch: 2 rows, split 1/1


def test_a_regroup_moves_the_feeder_first_and_the_new_grants_follow_the_new_credit():
    streams = Streams(7, X, Y, order, BATCH, hosts={1: "alpha"})
    streams.before(b"remote", welcome(1))
    receiver = BatchReceiver(7, 1, D, BATCH)
    streams.before(b"remote", Grant(job_id=7, first_step=0, end_step=3, split=[10, 6]))
    old_credit = receiver.start()
    streams.before(b"remote", Regroup(job_id=7, generation=1, rank=1, world_size=2, rewind_step=0, source_rank=0))
    assert [f for c in old_credit for f in streams.credit("alpha", wire(c))] == []   # the old generation's
    streams.before(b"remote", Grant(job_id=7, first_step=0, end_step=3, split=[8, 8]))
    frames = [f for c in receiver.regroup(1) for _h, f in streams.credit("alpha", wire(c))]
    assert frames and all(isinstance(f, BatchRows) and f.generation == 1 and (f.start, f.stop) == (8, 16)
                          for f in frames)
    assert streams.before(b"remote", Resplit(job_id=7, generation=1, version=1, split=[4, 12])) == []


def test_a_host_cannot_credit_another_hosts_actor_or_another_job():
    streams = Streams(7, X, Y, order, BATCH, hosts={1: "alpha"})
    for host, credit in (("beta", BatchCredit(job_id=7, rank=1, generation=0, frames=1)),
                         ("alpha", BatchCredit(job_id=7, rank=0, generation=0, frames=1)),
                         ("alpha", BatchCredit(job_id=8, rank=1, generation=0, frames=1))):
        with pytest.raises(ProtocolError, match="not one of its actors'"):
            streams.credit(host, credit)


def test_a_host_that_comes_back_holding_the_data_streams_no_more():
    streams = Streams(7, X, Y, order, BATCH, hosts={1: "alpha"})
    streams.before(b"remote", welcome(1))
    streams.before(b"remote", Grant(job_id=7, first_step=0, end_step=1, split=[10, 6]))
    assert streams.credit("alpha", BatchCredit(job_id=7, rank=1, generation=0, frames=4))
    streams.before(b"back", welcome(1, generation=1, by_value=0))   # its new agent holds the data
    assert streams.before(b"back", Grant(job_id=7, first_step=0, end_step=1, split=[10, 6])) == []
    with pytest.raises(ProtocolError):
        streams.credit("alpha", BatchCredit(job_id=7, rank=1, generation=1, frames=4))
    assert streams.sent_frames() == 1
