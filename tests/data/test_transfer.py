"""The cache fill's two sides, driven message by message through the real wire encoding:
what arrives is what was offered, flow control bounds what is in flight, and every bad
chunk is refused before a partial dataset could be used."""

import dataclasses
import hashlib
from collections import deque

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leptonrt import messages
from leptonrt.data.loaders import load_dataset
from leptonrt.data.transfer import CHUNK, WINDOW, Receiver, Sender, fingerprint, make_offer, refusal
from leptonrt.errors import ConfigError, DataError, InternalError, ProtocolError
from leptonrt.messages import (CACHE_ARRAYS, CacheChunk, CacheCredit, CacheDone, CacheHave, CacheOffer,
                               CacheRefused, DatasetInfo)

SMALL_CHUNK = 4096  # digits' x_train is 368 KiB: 90 chunks, so windows of 1..16 all matter


class MemorySink:
    """A sink in plain memory: what the receiver wrote, and whether it finished or aborted."""

    def __init__(self, offer: CacheOffer) -> None:
        self.arrays = {a.name: bytearray(a.nbytes) for a in offer.arrays}
        self.offer, self.finished, self.aborted = offer, False, False

    def write(self, array, offset, data):
        self.arrays[array][offset:offset + len(data)] = data

    def finish(self):
        self.finished = True
        refs = {a.name: messages.ArrayRef(segment=f"leptonrt-mem-{a.name}", dtype=a.dtype, shape=list(a.shape))
                for a in self.offer.arrays}
        return DatasetInfo(spec=self.offer.spec, n_features=self.offer.n_features,
                           n_classes=self.offer.n_classes, **refs)

    def abort(self):
        self.aborted = True


def digits_arrays():
    ds = load_dataset("digits")
    return ds, {name: getattr(ds, name) for name in CACHE_ARRAYS}


def digits_offer(chunk_bytes=SMALL_CHUNK):
    ds, arrays = digits_arrays()
    return make_offer("digits", ds.n_features, ds.n_classes, arrays, chunk_bytes=chunk_bytes), arrays


def wire(msg):
    """The message as the other side decodes it."""
    return messages.decode(messages.encode(msg))


def fill(sender, receiver, tamper=lambda msg: msg):
    """Run a whole exchange, each side handling everything the other sent; ``tamper``
    sees every message on its way to the agent."""
    sender.start()
    to_head, to_agent = deque(receiver.start()), deque()
    while to_head or to_agent:
        while to_head:
            to_agent.extend(tamper(wire(m)) for m in sender.handle(wire(to_head.popleft())))
        while to_agent:
            to_head.extend(receiver.handle(to_agent.popleft()))


def test_a_dataset_arrives_byte_for_byte_and_the_head_learns_it_is_held():
    offer, arrays = digits_offer()
    sender, sink = Sender(offer, arrays), MemorySink(offer)
    receiver = Receiver(offer, sink)
    fill(sender, receiver)
    assert sender.done and sink.finished and not sink.aborted
    assert all(bytes(sink.arrays[n]) == arrays[n].tobytes() for n in CACHE_ARRAYS)
    assert receiver.result.spec == "digits" and receiver.result.x_train.shape == list(arrays["x_train"].shape)
    assert sender.sent_chunks == receiver.received_chunks == sum(-(-a.nbytes // SMALL_CHUNK) for a in offer.arrays)


def test_an_offer_names_each_array_with_its_hash_and_a_content_fingerprint():
    offer, arrays = digits_offer()
    x = offer.arrays[0]
    assert (x.name, x.dtype, x.nbytes) == ("x_train", "float32", arrays["x_train"].nbytes)
    assert x.sha256 == hashlib.sha256(arrays["x_train"].tobytes()).hexdigest()
    assert offer.fingerprint == fingerprint("digits", offer.n_features, offer.n_classes, offer.arrays)
    other = make_offer("digits", offer.n_features, offer.n_classes, {**arrays, "y_test": arrays["y_test"][::-1].copy()})
    assert other.fingerprint != offer.fingerprint
    assert wire(offer) == offer


def test_an_agent_that_holds_the_dataset_gets_no_chunk():
    offer, arrays = digits_offer()
    sender = Sender(offer, arrays)
    sender.start()
    assert sender.handle(wire(CacheHave(fingerprint=offer.fingerprint))) == []
    assert sender.done and sender.sent_chunks == 0


@settings(max_examples=60, deadline=None)
@given(window=st.integers(1, WINDOW), schedule=st.lists(st.booleans(), min_size=1, max_size=400))
def test_no_more_than_a_window_of_bytes_is_ever_in_flight(window, schedule):
    """A random interleaving of the two directions: at every point the chunks on their way
    hold at most window * chunk_bytes bytes, and the data still arrives whole."""
    offer, arrays = digits_offer()
    sender = Sender(offer, arrays)
    sink = MemorySink(offer)
    receiver = Receiver(offer, sink, window=window)
    to_agent, to_head = deque(), deque(receiver.start())
    sender.start()
    steps = iter(schedule)
    while to_agent or to_head:
        toward_agent = next(steps, True) if to_agent and to_head else bool(to_agent)
        if toward_agent:
            to_head.extend(receiver.handle(wire(to_agent.popleft())))
        else:
            to_agent.extend(sender.handle(wire(to_head.popleft())))
        assert sum(len(m.data) for m in to_agent if isinstance(m, CacheChunk)) <= window * SMALL_CHUNK
    assert sender.done and sink.finished
    assert all(bytes(sink.arrays[n]) == arrays[n].tobytes() for n in CACHE_ARRAYS)


@settings(max_examples=60, deadline=None)
@given(credits=st.lists(st.integers(1, WINDOW), min_size=1, max_size=120))
def test_the_head_sends_in_order_and_never_beyond_its_credit(credits):
    """Whatever credits an agent hands out, the head sends that many chunks (all it has,
    at most), each the next one, and CacheDone once, right after the last."""
    offer, arrays = digits_offer()
    sender = Sender(offer, arrays)
    sender.start()
    total = sum(-(-a.nbytes // SMALL_CHUNK) for a in offer.arrays)
    granted, out = 0, []
    for chunks in credits:
        granted += chunks
        out += sender.handle(CacheCredit(fingerprint=offer.fingerprint, chunks=chunks))
        sent = [m for m in out if isinstance(m, CacheChunk)]
        assert len(sent) == min(granted, total)
    whole = b"".join(arrays[n].tobytes() for n in CACHE_ARRAYS)
    data = b"".join(m.data for m in sent)
    assert data == whole[:len(data)]
    assert out[len(sent):] == ([CacheDone(fingerprint=offer.fingerprint)] if granted >= total else [])


def chunks_of(offer, arrays):
    """Every chunk of the offer, in order, as an honest head would send them."""
    return [CacheChunk(fingerprint=offer.fingerprint, array=name, offset=o,
                       data=arrays[name].tobytes()[o:o + offer.chunk_bytes])
            for name in CACHE_ARRAYS for o in range(0, arrays[name].nbytes, offer.chunk_bytes)]


def test_a_corrupted_chunk_fails_the_hash_and_nothing_is_used():
    offer, arrays = digits_offer()
    sink = MemorySink(offer)
    receiver = Receiver(offer, sink)

    def flip_a_bit(msg):
        if isinstance(msg, CacheChunk) and msg.offset == 3 * SMALL_CHUNK:
            return dataclasses.replace(msg, data=bytes([msg.data[0] ^ 1]) + msg.data[1:])
        return msg

    with pytest.raises(DataError, match="x_train of dataset 'digits' arrived with SHA-256 [0-9a-f]{12}, the head's"):
        fill(Sender(offer, arrays), receiver, flip_a_bit)
    assert sink.aborted and not sink.finished and receiver.result is None


@pytest.mark.parametrize("change, problem", [
    (lambda c: c[1:], "out of order: expected x_train at offset 0"),
    (lambda c: [c[0], c[0]], "chunk of x_train at offset 0 .* out of order: expected x_train at offset 4096"),
    (lambda c: [dataclasses.replace(c[0], data=c[0].data + b"x")], "runs past the end of x_train .*chunk size"),
    (lambda c: [dataclasses.replace(c[0], data=c[0].data[:-1])], "is short: 4096 bytes expected"),
    (lambda c: [dataclasses.replace(c[0], array="w_train")], "chunk of w_train .* unknown array"),
    (lambda c: [dataclasses.replace(c[0], fingerprint="0" * 64)], "for dataset 000000000000 reached the fill"),
    (lambda c: [CacheDone(fingerprint=c[0].fingerprint)], "CacheDone came before x_train was complete"),
])
def test_a_bad_chunk_is_refused_naming_what_and_the_sink_aborted(change, problem):
    offer, arrays = digits_offer()
    sink = MemorySink(offer)
    receiver = Receiver(offer, sink)
    receiver.start()
    with pytest.raises(ProtocolError, match=problem):
        for msg in change(chunks_of(offer, arrays)):
            receiver.handle(msg)
    assert sink.aborted and not sink.finished
    with pytest.raises(ProtocolError, match="has failed"):
        receiver.handle(CacheDone(fingerprint=offer.fingerprint))


def test_a_chunk_past_the_last_array_is_refused():
    offer, arrays = digits_offer(chunk_bytes=CHUNK)  # four chunks, all credited at once
    receiver = Receiver(offer, MemorySink(offer))
    assert receiver.start() == [CacheCredit(fingerprint=offer.fingerprint, chunks=4)]
    chunks = chunks_of(offer, arrays)
    with pytest.raises(ProtocolError, match="after every array was complete"):
        for chunk in chunks + [chunks[-1]]:
            receiver.handle(chunk)


def test_oversized_and_unknown_chunks_are_refused_by_the_wire_itself():
    offer, _ = digits_offer()

    def frame(**fields):
        base = {"fingerprint": offer.fingerprint, "array": "x_train", "offset": 0, "data": b"x"}
        return msgpack.packb([messages.VERSION, "CacheChunk", {**base, **fields}], use_bin_type=True)

    with pytest.raises(ProtocolError, match="data: has 524289 bytes, more than the maximum 524288"):
        messages.decode(frame(data=b"x" * (CHUNK + 1)), messages.SERVICE_LIMITS)
    with pytest.raises(ProtocolError, match="CacheChunk.array: 'w_train' is not one of"):
        messages.decode(frame(array="w_train"))
    with pytest.raises(InternalError, match="refusing to send"):
        messages.encode(CacheChunk(fingerprint=offer.fingerprint, array="x_train", offset=0, data=b"x" * (CHUNK + 1)))


def test_an_offer_that_does_not_describe_one_dataset_is_refused():
    offer, _ = digits_offer()
    y = offer.arrays[1]
    bad = [
        (dataclasses.replace(offer, arrays=offer.arrays[::-1]), "in that order"),
        (dataclasses.replace(offer, arrays=[offer.arrays[0], dataclasses.replace(y, shape=[3], nbytes=24),
                                            *offer.arrays[2:]]), "are not .* inputs and .* labels"),
        (dataclasses.replace(offer, arrays=[dataclasses.replace(offer.arrays[0], nbytes=5), *offer.arrays[1:]]),
         "cannot hold 5 bytes"),
        (dataclasses.replace(offer, arrays=[offer.arrays[0], dataclasses.replace(y, dtype="float32"),
                                            *offer.arrays[2:]]), "y_train must be int64"),
    ]
    for record, problem in bad:
        frame = msgpack.packb([messages.VERSION, "CacheOffer", _fields(record)], use_bin_type=True)
        with pytest.raises(ProtocolError, match=problem):
            messages.decode(frame)


def _fields(record):
    """A record's wire map, without the checks encode would run."""
    if dataclasses.is_dataclass(record):
        return {f.name: _fields(getattr(record, f.name)) for f in dataclasses.fields(record)}
    return [_fields(v) for v in record] if isinstance(record, (list, tuple)) else record


def test_an_offer_whose_fingerprint_is_not_its_content_is_refused():
    offer, _ = digits_offer()
    forged = dataclasses.replace(offer, spec="mnist:/data")
    sink = MemorySink(forged)
    with pytest.raises(ProtocolError, match="does not match its content"):
        Receiver(forged, sink)
    assert sink.aborted


def test_the_head_refuses_an_agent_that_breaks_the_exchange():
    offer, arrays = digits_offer()
    sender = Sender(offer, arrays)
    sender.start()
    with pytest.raises(ProtocolError, match="CacheCredit.chunks: 17 is above the maximum 16"):
        messages.decode(msgpack.packb([messages.VERSION, "CacheCredit", {"fingerprint": offer.fingerprint,
                                                                         "chunks": WINDOW + 1}]))
    sender.handle(CacheCredit(fingerprint=offer.fingerprint, chunks=1))
    with pytest.raises(ProtocolError, match="in the middle of its fill"):
        sender.handle(CacheHave(fingerprint=offer.fingerprint))
    with pytest.raises(ProtocolError, match="unexpected CacheChunk"):
        sender.handle(chunks_of(offer, arrays)[0])


def test_a_refusal_reaches_the_head_with_its_reason_and_exit_code():
    offer, arrays = digits_offer()
    sender = Sender(offer, arrays)
    sender.start()
    answer = wire(refusal(offer, ConfigError("no room on this host")))
    assert sender.handle(answer) == [] and not sender.done
    assert (sender.refused.message, sender.refused.exit_code) == ("no room on this host", 78)
    with pytest.raises(ProtocolError, match="refused"):
        sender.handle(CacheCredit(fingerprint=offer.fingerprint, chunks=1))
    assert isinstance(answer, CacheRefused)


def test_a_sender_refuses_arrays_that_are_not_its_offers():
    offer, arrays = digits_offer()
    with pytest.raises(InternalError, match="x_train is float64"):
        Sender(offer, {**arrays, "x_train": arrays["x_train"].astype(np.float64)})


def test_an_offer_of_arrays_that_are_not_one_dataset_is_our_bug():
    _, arrays = digits_arrays()
    with pytest.raises(InternalError, match=r"CacheOffer.arrays\[0\].dtype: .float64. is not one of"):
        make_offer("digits", 64, 10, {**arrays, "x_train": arrays["x_train"].astype(np.float64)})


def test_a_test_split_offer_with_no_training_rows_fills_for_a_streaming_host():
    ds, arrays = digits_arrays()
    arrays = {**arrays, "x_train": arrays["x_train"][:0], "y_train": arrays["y_train"][:0]}
    offer = wire(make_offer("digits (test split)", ds.n_features, ds.n_classes, arrays, chunk_bytes=SMALL_CHUNK))
    sender, sink = Sender(offer, arrays), MemorySink(offer)
    fill(sender, Receiver(offer, sink))
    assert sender.done and sink.finished
    assert len(sink.arrays["x_train"]) == 0 and bytes(sink.arrays["x_test"]) == arrays["x_test"].tobytes()
    no_test = [dataclasses.replace(offer.arrays[0], name="x_test"), dataclasses.replace(offer.arrays[1], name="y_test")]
    bad = dataclasses.replace(offer, arrays=[*offer.arrays[:2], *no_test])   # the test split still needs rows
    frame = msgpack.packb([messages.VERSION, "CacheOffer", _fields(bad)], use_bin_type=True)
    with pytest.raises(ProtocolError, match="rows >= 1"):
        messages.decode(frame)
