"""The records between a broker and its fork server, and their framing on a pipe (unit tier)."""

import struct

import msgpack
import pytest

from leptonrt.actors import forkwire
from leptonrt.actors.forkwire import Exited, Fork, Forked, Pin, Reader, Signal
from leptonrt.errors import InternalError, ProtocolError

FORK = Fork(n=3, actor_id="a1", device="cpu", threads=1, env=("OMP_NUM_THREADS=1", "X=a=b"), log="/run/actor-a1.log",
            unset=("LEPTONRT_SPARE",), cores=(1,))


def test_every_record_comes_out_as_it_went_in_even_a_byte_at_a_time():
    requests = [FORK, Signal(n=3, signum=9), Pin(n=3, cores=(0, 1)), Fork(n=4, actor_id="spare", device="cuda:0",
                                                                         threads=2, env=(), log="/l")]
    stream = b"".join(map(forkwire.encode, requests))
    reader, out = Reader(forkwire.REQUESTS), []
    for i in range(len(stream)):
        out += reader.feed(stream[i:i + 1])
    assert out == requests
    reports = [Forked(n=3, pid=1234), Exited(n=3, code=-9), Exited(n=4, code=17)]
    assert Reader(forkwire.REPORTS).feed(b"".join(map(forkwire.encode, reports))) == reports


def test_a_side_refuses_the_records_only_the_other_side_sends():
    with pytest.raises(ProtocolError, match="unexpected record kind 'Forked'"):
        Reader(forkwire.REQUESTS).feed(forkwire.encode(Forked(n=1, pid=2)))
    with pytest.raises(ProtocolError, match="unexpected record kind 'Fork'"):
        Reader(forkwire.REPORTS).feed(forkwire.encode(FORK))


def test_an_oversized_frame_is_refused_from_its_length_alone():
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        Reader(forkwire.REQUESTS).feed(struct.pack(">I", forkwire.LIMITS.frame_bytes + 1))


@pytest.mark.parametrize("body, problem", [
    (["Signal", {"n": 1}], "missing field 'signum'"),
    (["Signal", {"n": 1, "signum": 0}], "below the minimum"),
    (["Fork", {**{k: getattr(FORK, k) for k in ("n", "actor_id", "device", "threads", "log")},
               "env": ["NOEQUALS"], "unset": [], "cores": None}], "NAME=value"),
    ([1, 2, 3], "a frame must be"),
])
def test_a_malformed_record_is_a_protocol_error_naming_the_problem(body, problem):
    frame = msgpack.packb(body)
    with pytest.raises(ProtocolError, match=problem):
        Reader(forkwire.REQUESTS).feed(struct.pack(">I", len(frame)) + frame)


def test_we_never_send_an_invalid_record():
    with pytest.raises(InternalError, match="signum"):
        forkwire.encode(Signal(n=1, signum=65))
    with pytest.raises(InternalError, match="not a fork server record"):
        forkwire.encode({"n": 1})
