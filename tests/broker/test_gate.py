"""The service's gate: what a client's message must be before anything acts on it."""

import msgpack

from leptonrt import messages
from leptonrt.broker.gate import Gate, GateConfig, Verdict
from leptonrt.messages import Heartbeat, StatusRequest, Submit
from leptonrt.config import TrainJob

STATUS = messages.encode(StatusRequest())


def test_a_valid_request_is_accepted_and_decoded():
    admission = Gate().admit(b"c", [STATUS], now=0.0)
    assert admission.verdict is Verdict.ACCEPT and admission.message == StatusRequest()


def test_garbage_a_wrong_frame_count_and_an_actors_message_are_each_one_counted_rejection():
    gate = Gate()
    verdicts = [gate.admit(b"c", frames, now=0.0).verdict for frames in
                ([b"\xc1"], [STATUS, STATUS], [messages.encode(Heartbeat(rank=0, step=0))])]
    assert verdicts == [Verdict.REJECT] * 3
    stats = gate.statistics()
    assert (stats.decode_errors, stats.invalid_messages, stats.accepted) == (1, 2, 0)


def test_a_frame_of_a_million_empty_arrays_is_rejected_by_the_unpacker_not_built():
    frame = msgpack.packb([[]] * 1_000_000)   # over the client frame cap too: libzmq disconnects first
    assert Gate().admit(b"c", [frame], now=0.0).verdict is Verdict.REJECT


def test_a_client_over_its_rate_is_dropped_and_gets_tokens_back_as_time_passes():
    gate = Gate(GateConfig(rate=10.0, burst=5.0))
    first = [gate.admit(b"c", [STATUS], now=0.0).verdict for _ in range(8)]
    assert first == [Verdict.ACCEPT] * 5 + [Verdict.DROP] * 3
    assert gate.admit(b"c", [STATUS], now=0.1).verdict is Verdict.ACCEPT   # one token a tenth of a second
    assert gate.admit(b"other", [STATUS], now=0.1).verdict is Verdict.ACCEPT   # others are not affected
    assert gate.statistics().dropped == 3


def test_a_client_that_keeps_sending_bad_messages_is_ignored_for_the_cooldown_then_heard_again():
    gate = Gate(GateConfig(rate=1000.0, burst=1000.0, strikes=3, cooldown_s=10.0))
    assert [gate.admit(b"bad", [b"junk"], now=0.0).verdict for _ in range(3)] == [Verdict.REJECT] * 3
    assert gate.admit(b"bad", [STATUS], now=5.0).verdict is Verdict.DROP
    assert gate.admit(b"good", [STATUS], now=5.0).verdict is Verdict.ACCEPT
    assert gate.admit(b"bad", [STATUS], now=10.5).verdict is Verdict.ACCEPT
    assert gate.statistics().clients_disconnected == 1


def test_a_good_message_clears_the_strikes():
    gate = Gate(GateConfig(strikes=3))
    for _ in range(2):
        gate.admit(b"c", [b"junk"], now=0.0)
    gate.admit(b"c", [STATUS], now=0.0)
    for _ in range(2):
        gate.admit(b"c", [b"junk"], now=0.0)
    assert gate.statistics().clients_disconnected == 0


def test_the_clients_remembered_are_bounded():
    gate = Gate(GateConfig(clients=100))
    for i in range(1000):
        gate.admit(str(i).encode(), [STATUS], now=0.0)
    assert len(gate._clients) == 100   # the least recently heard were forgotten


def test_a_submit_with_an_invalid_job_is_rejected_with_the_field_named():
    fields = msgpack.unpackb(messages.encode(Submit(job=TrainJob())))[2]
    fields["job"]["lr"] = float("nan")
    admission = Gate().admit(b"c", [msgpack.packb([messages.VERSION, "Submit", fields])], now=0.0)
    assert admission.verdict is Verdict.REJECT and "job.lr" in admission.reason
