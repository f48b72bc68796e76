"""Unit tests for the wire protocol: round trips, determinism, and every way a frame can be bad."""

from __future__ import annotations

import dataclasses
import math
import re
import typing

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leptonrt import messages as protocol
from leptonrt.config import Slowdown, TrainJob
from leptonrt.wire import MAX_PLAIN_DEPTH, Plain
from leptonrt.messages import (
    ACTOR_LIMITS,
    CLIENT_LIMITS,
    MAX_REPORT_STEPS,
    VERSION,
    JobUpdate,
    PieceRows,
    Submit,
    StoreRequest,
    ArrayRef,
    CacheArray,
    CacheOffer,
    DatasetInfo,
    EpochResult,
    Failure,
    Finished,
    Grant,
    Heartbeat,
    Hello,
    JobSpec,
    Reports,
    Shutdown,
    StepStat,
    Stop,
    Welcome,
    decode,
    encode,
    validate,
)
from leptonrt.errors import ConfigError, InternalError, ProtocolError

KINDS = typing.get_args(protocol.Message)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- valid instances built from the annotations and metadata ------------------------

# Keep generated strings and lists short: the limits are tested on their own below.
SHORT = 8
HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)


@st.composite
def offered_arrays(draw, n_features=3):
    """The four arrays of a CacheOffer, shaped as one dataset of ``n_features`` columns."""
    out = []
    for x, y in (("x_train", "y_train"), ("x_test", "y_test")):
        rows = draw(st.integers(1, 1000))
        out += [CacheArray(x, "float32", [rows, n_features], rows * n_features * 4, draw(HEX64)),
                CacheArray(y, "int64", [rows], rows * 8, draw(HEX64))]
    return out


# Fields whose generic strategy would almost never pass the record's own check().
OVERRIDES = {(Welcome, "rank"): st.integers(0, 4095), (CacheArray, "sha256"): HEX64,
             (CacheOffer, "n_features"): st.just(3), (CacheOffer, "arrays"): offered_arrays(),
             (PieceRows, "start"): st.just(2), (PieceRows, "stop"): st.just(3),
             (PieceRows, "y"): st.binary(min_size=8, max_size=8)}


PLAIN = st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8), max_size=4).map(Plain)


def train_jobs():
    """Valid jobs: their own rules (align within the batch, and so on) hold."""
    return st.builds(TrainJob, dataset=st.text(min_size=1, max_size=SHORT).filter(lambda s: not s.startswith("py:")),
                     label_column=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1,
                                          max_size=SHORT).filter(str.isprintable),
                     hidden=st.lists(st.integers(1, 65536), min_size=1, max_size=3).map(tuple),
                     epochs=st.integers(1, 1_000_000), batch_size=st.integers(8, 10_000_000),
                     lr=st.floats(1e-12, 10.0), align=st.integers(1, 8), seed=st.integers(0, 2**63 - 1),
                     split=st.none() | st.lists(st.floats(0.01, 1e9), min_size=1, max_size=4).map(tuple),
                     slowdowns=st.lists(st.builds(Slowdown, rank=st.integers(0, 4095), factor=st.floats(1.0, 1000.0),
                                                  from_step=st.integers(0, 100), to_step=st.none()),
                                        max_size=2).map(tuple))


def strategy_for(hint, meta):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return st.none() | strategy_for(inner, meta)
    if origin in (list, tuple):
        item_meta = {"min": meta.get("item_min"), "max": meta.get("item_max")}
        high = min(meta.get("max_len", SHORT), SHORT)
        items = strategy_for(args[0], item_meta)
        lists = st.lists(items, min_size=meta.get("min_len", 0), max_size=high)
        return lists.map(tuple) if origin is tuple else lists
    if hint is TrainJob:
        return train_jobs()
    if hint is Plain:
        return PLAIN
    if hint is bytes:
        return st.binary(min_size=meta.get("min_len", 0), max_size=min(meta.get("max_len", SHORT), SHORT))
    if dataclasses.is_dataclass(hint):
        return record_strategy(hint)
    if "choices" in meta:
        return st.sampled_from(sorted(meta["choices"]))
    if hint is bool:
        return st.booleans()
    if hint is int:
        low, high = meta.get("min"), meta.get("max")
        return st.integers(-(2**63) if low is None else low, 2**64 - 1 if high is None else high)
    if hint is float:
        finite = not meta.get("allow_nonfinite", False)
        low, high = meta.get("min"), meta.get("max")
        return st.floats(low, high, allow_nan=False, allow_infinity=not finite)
    if hint is str:
        low = meta.get("min_len", 0)
        return st.text(min_size=low, max_size=max(low, min(meta.get("max_len", SHORT), SHORT)))
    raise AssertionError(f"no strategy for {hint!r}")


def passes_own_check(record):
    try:
        validate(record)
    except InternalError:
        return False
    return True


def record_strategy(cls):
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: OVERRIDES[cls, f.name] if (cls, f.name) in OVERRIDES
        else strategy_for(hints[f.name], f.metadata)
        for f in dataclasses.fields(cls)
    }
    built = st.builds(cls, **fields)
    return built.filter(passes_own_check) if cls in KINDS else built


ANY_MESSAGE = st.one_of([record_strategy(cls) for cls in KINDS])


def array(segment="seg", dtype="float32", shape=(10, 4)):
    return ArrayRef(segment=segment, dtype=dtype, shape=list(shape))


def job(**changes):
    settings = TrainJob(dataset="blobs:1000x4", hidden=(64, 64), epochs=2, batch_size=256, lr=1e-3,
                        optimizer="adamw", momentum=0.9, weight_decay=0.01, precision="auto", seed=7,
                        slowdowns=(Slowdown(rank=1, factor=2.0, from_step=5, to_step=None),))
    return JobSpec(job_id=3, job=dataclasses.replace(settings, **changes))


def welcome(**changes):
    data = DatasetInfo(
        spec="blobs:1000x4", n_features=4, n_classes=3, x_train=array("xt"),
        y_train=array("yt", "int64", (10,)), x_test=array("xv"), y_test=array("yv", "int64", (2,)),
    )
    base = Welcome(
        rank=1, world_size=2, job=job(), data=data,
        steps_per_epoch=4, threads=2, backend="gloo", collective_timeout_s=5.0,
    )
    return dataclasses.replace(base, **changes)


def frame_of(kind, fields, version=VERSION):
    return msgpack.packb([version, kind, fields])


def frame_with(msg, **changes):
    """A frame of ``msg`` with some wire fields replaced."""
    return frame_of(type(msg).__name__, {**wire_fields(msg), **changes})


HELLO = Hello("a1", 42, "cpu", "", 8, 0, bf16=False)
FINISHED = Finished(job_id=1, rank=0, samples=10, seconds=1.0, saved=True)
EPOCH = EpochResult(1, 0, 4, 0.5, 0.6, 0.9, 2.0)
GRANT = Grant(job_id=1, first_step=0, end_step=1, split=[1])
REPORTS = Reports(job_id=1, rank=0, steps=[], memory_bytes=0, queued=3)


def heartbeat_fields(**changes):
    return {"rank": 0, "step": 5, **changes}


def wire_fields(msg):
    """The field map of a message as it goes on the wire."""
    return msgpack.unpackb(encode(msg))[2]


# --- round trips and determinism ---------------------------------------------------


@pytest.mark.parametrize("cls", KINDS, ids=lambda cls: cls.__name__)
@FAST
@given(data=st.data())
def test_every_message_kind_round_trips(cls, data):
    msg = data.draw(record_strategy(cls))
    assert decode(encode(msg)) == msg


@FAST
@given(msg=ANY_MESSAGE)
def test_encoding_is_deterministic_and_stable_through_a_round_trip(msg):
    frame = encode(msg)
    assert encode(msg) == frame
    assert encode(decode(frame)) == frame


def test_a_frame_is_a_version_kind_and_field_map_with_nested_records_as_maps():
    version, kind, fields = msgpack.unpackb(encode(welcome()))
    assert (version, kind) == (VERSION, "Welcome")
    assert list(fields) == [f.name for f in dataclasses.fields(Welcome)]
    assert fields["data"]["x_train"] == {"segment": "xt", "dtype": "float32", "shape": [10, 4]}


@pytest.mark.parametrize(
    "msg",
    [
        Shutdown("x" * 1024),
        Failure(0, 0, "\u00e9" * 65536),
        Grant(0, 2**64 - 2, 2**64 - 1, [0] * 4096),
        Hello("a" * 64, 1, "c" * 32, "n" * 256, 1, 0, True),
        Stop(0, True),
        EpochResult(0, 0, 0, -math.inf, math.inf, 1.0, 0.0),
        welcome(rank=0, world_size=1, job=job(hidden=[1], lr=10.0, momentum=0.0, weight_decay=0.0, align=1)),
        welcome(
            rank=4095, world_size=4096,
            job=job(hidden=[65536] * 16, lr=1e-12, momentum=1.0, weight_decay=10.0,
                    epochs=1_000_000, batch_size=10_000_000, seed=2**63 - 1),
        ),
    ],
    ids=lambda msg: type(msg).__name__,
)
def test_values_at_the_limits_round_trip(msg):
    assert decode(encode(msg)) == msg


def test_an_integer_where_a_float_is_expected_decodes_as_that_float():
    decoded = decode(frame_with(EPOCH, test_accuracy=1, seconds=3))
    assert type(decoded.test_accuracy) is float and decoded.seconds == 3.0


def test_a_diverged_epoch_can_report_nonfinite_losses():
    sent = EpochResult(1, 0, 4, math.nan, math.inf, 0.1, 2.0)
    received = decode(encode(sent))
    assert math.isnan(received.train_loss) and received.test_loss == math.inf


@pytest.mark.parametrize("save", [False, True])
def test_stop_says_whether_the_leader_saves_the_weights(save):
    assert decode(encode(Stop(job_id=1, save=save))).save == save


def test_the_largest_valid_reports_message_fits_in_one_frame():
    steps = [StepStat(2**64 - 1, 2**64 - 1, 1e300, 1e300, 1e300, 2**64 - 1)] * MAX_REPORT_STEPS
    biggest = Reports(job_id=2**64 - 1, rank=2**64 - 1, steps=steps, memory_bytes=2**64 - 1, queued=2**64 - 1)
    assert len(encode(biggest)) <= ACTOR_LIMITS.frame_bytes


# --- frames that are not msgpack, or not our envelope ---------------------------------


@pytest.mark.parametrize(
    "frame",
    [b"", b"\xc1", b"\xff\xff\xff", b"hello world", b"\x93\x01\xa9Heartbeat\x82\xa4rank\xc1"],
    ids=["empty", "reserved-byte", "negative-fixints", "text", "bad-byte-inside"],
)
def test_garbage_bytes_raise_protocol_error(frame):
    with pytest.raises(ProtocolError):
        decode(frame)


def test_every_truncated_prefix_of_a_valid_frame_raises_protocol_error():
    frame = encode(welcome())
    for end in range(len(frame)):
        with pytest.raises(ProtocolError):
            decode(frame[:end])


def test_extra_data_after_a_valid_frame_raises_protocol_error():
    with pytest.raises(ProtocolError, match="extra data"):
        decode(encode(Heartbeat(rank=0, step=1)) + b"\x00")


@pytest.mark.parametrize("top", [{"a": 1}, 1, "Heartbeat", None, (1, "Heartbeat")])
def test_a_frame_that_is_not_a_three_item_list_raises_protocol_error(top):
    with pytest.raises(ProtocolError, match=r"\[version, kind, fields\]"):
        decode(msgpack.packb(top))


@pytest.mark.parametrize(
    "items", [[], [1], [1, "Heartbeat"], [1, "Heartbeat", heartbeat_fields(), 0]]
)
def test_a_list_of_the_wrong_arity_raises_protocol_error(items):
    with pytest.raises(ProtocolError, match=r"\[version, kind, fields\]"):
        decode(msgpack.packb(items))


def test_an_unknown_version_is_named_in_the_error():
    with pytest.raises(ProtocolError) as caught:
        decode(frame_of("Heartbeat", heartbeat_fields(), version=7))
    assert str(caught.value) == f"unsupported protocol version 7 (this side speaks {VERSION})"


@pytest.mark.parametrize("version", [True, 1.0, "1", None])
def test_a_version_that_only_resembles_1_is_refused(version):
    with pytest.raises(ProtocolError, match="unsupported protocol version"):
        decode(frame_of("Heartbeat", heartbeat_fields(), version=version))


@pytest.mark.parametrize("kind", ["Teleport", "heartbeat", "ArrayRef", "JobSpec", 3, b"Heartbeat"])
def test_an_unknown_kind_is_named_in_the_error(kind):
    with pytest.raises(ProtocolError, match="unknown message kind") as caught:
        decode(frame_of(kind, heartbeat_fields()))
    assert repr(kind) in str(caught.value)


def test_fields_that_are_not_a_map_raise_protocol_error():
    with pytest.raises(ProtocolError, match="expected a map of fields"):
        decode(frame_of("Heartbeat", [0, 5]))


def test_a_missing_field_is_named_in_the_error():
    with pytest.raises(ProtocolError, match="Heartbeat: missing field 'step'"):
        decode(frame_of("Heartbeat", {"rank": 0}))


def test_a_missing_field_of_a_nested_record_names_the_path():
    fields = wire_fields(welcome())
    del fields["job"]["job"]["seed"]
    with pytest.raises(ProtocolError, match="Welcome.job.job: missing field 'seed'"):
        decode(frame_of("Welcome", fields))


@pytest.mark.parametrize("key", ["colour", b"rank"])
def test_an_unknown_field_is_named_in_the_error(key):
    with pytest.raises(ProtocolError, match="unknown field") as caught:
        decode(frame_of("Heartbeat", {**heartbeat_fields(), key: 1}))
    assert repr(key) in str(caught.value)


@pytest.mark.parametrize("key", [1, 1.5, None])
def test_a_map_key_that_is_not_a_string_raises_protocol_error(key):
    with pytest.raises(ProtocolError):
        decode(frame_of("Heartbeat", {**heartbeat_fields(), key: 1}))


def test_a_map_that_repeats_a_key_raises_protocol_error():
    # msgpack.packb cannot repeat a key, so write the map header by hand.
    fields = b"\x83" + msgpack.packb("rank") + b"\x00" + msgpack.packb("step") + b"\x01"
    fields += msgpack.packb("rank") + b"\x02"
    with pytest.raises(ProtocolError, match="repeats a key"):
        decode(b"\x93\x01" + msgpack.packb("Heartbeat") + fields)


def test_text_that_is_not_utf8_raises_protocol_error():
    frame = frame_of("Shutdown", {"reason": "x"}).replace(b"\xa1x", b"\xa1\xff")
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        decode(frame)


# --- wrong types ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "where"),
    [
        (frame_with(Heartbeat(0, 5), rank=True), "Heartbeat.rank"),
        (frame_with(Heartbeat(0, 5), rank="0"), "Heartbeat.rank"),
        (frame_with(Heartbeat(0, 5), step=5.0), "Heartbeat.step"),
        (frame_with(Heartbeat(0, 5), step=None), "Heartbeat.step"),
        (frame_with(Heartbeat(0, 5), step=[5]), "Heartbeat.step"),
        (frame_with(Shutdown(""), reason=b"bytes"), "Shutdown.reason"),
        (frame_with(Shutdown(""), reason=None), "Shutdown.reason"),
        (frame_with(Stop(1, False), save=b"/tmp/x"), "Stop.save"),
        (frame_with(GRANT, split="1"), "Grant.split"),
        (frame_with(GRANT, split=[True]), "Grant.split[0]"),
        (frame_with(GRANT, split={"0": 1}), "Grant.split"),
        (frame_with(FINISHED, saved=1), "Finished.saved"),
        (frame_with(FINISHED, seconds=True), "Finished.seconds"),
        (frame_with(FINISHED, seconds="1.0"), "Finished.seconds"),
        (frame_with(REPORTS, steps=[[0, 1, 0.1, 0.2]]), "Reports.steps[0]"),
    ],
)
def test_a_value_of_the_wrong_type_raises_protocol_error_naming_the_field(frame, where):
    with pytest.raises(ProtocolError, match=f"^{re.escape(where)}: expected"):
        decode(frame)


def test_a_wrong_type_in_a_nested_record_names_the_path():
    fields = wire_fields(welcome())
    fields["data"]["x_test"]["shape"] = [10, "4"]
    with pytest.raises(ProtocolError, match=r"Welcome\.data\.x_test\.shape\[1\]: expected"):
        decode(frame_of("Welcome", fields))


@pytest.mark.parametrize("value", [msgpack.ExtType(5, b"x"), msgpack.Timestamp(0, 0)])
def test_msgpack_extension_types_and_timestamps_raise_protocol_error(value):
    with pytest.raises(ProtocolError):
        decode(frame_of("Shutdown", {"reason": value}))
    with pytest.raises(ProtocolError):
        decode(msgpack.packb(value))


# --- out-of-range values --------------------------------------------------------------


def welcome_fields(**job_changes):
    fields = wire_fields(welcome())
    fields["job"]["job"].update(job_changes)
    return fields


def welcome_frame(**job_changes):
    return frame_of("Welcome", welcome_fields(**job_changes))


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (frame_with(Heartbeat(0, 5), rank=-1), "Heartbeat.rank: -1 is below the minimum 0"),
        (frame_with(Heartbeat(0, 5), step=-(2**63)), "Heartbeat.step: -9223372036854775808 is"),
        (welcome_frame(precision="fp8"), "Welcome.job.job.precision: 'fp8' is not one of"),
        (welcome_frame(lr=math.nan), "Welcome.job.job.lr: nan is not a finite number"),
        (welcome_frame(lr=0.0), "Welcome.job.job.lr: 0.0 is below the minimum"),
        (welcome_frame(lr=11), "Welcome.job.job.lr: 11.0 is above the maximum 10.0"),
        (welcome_frame(hidden=[64, 0]), "Welcome.job.job.hidden[1]: 0 is below the minimum 1"),
        (welcome_frame(hidden=[1] * 17), "Welcome.job.job.hidden: has 17 items, more than"),
        (welcome_frame(seed=2**63), "Welcome.job.job.seed: 9223372036854775808 is above"),
        (frame_with(Shutdown(""), reason="x" * 1025), "Shutdown.reason: has 1025 characters"),
        (frame_with(HELLO, actor_id=""), "Hello.actor_id: has 0 characters, fewer than"),
        (frame_with(EPOCH, test_accuracy=1.5), "EpochResult.test_accuracy: 1.5 is above"),
        (frame_with(FINISHED, seconds=math.inf), "Finished.seconds: inf is not a finite number"),
        (frame_with(GRANT, split=[]), "Grant.split: has 0 items"),
        (frame_with(Hello("a1", 42, "cpu", "", 8, 0, False), actor_id=""), "Hello.actor_id: has 0 characters"),
    ],
)
def test_an_out_of_range_value_raises_protocol_error_naming_kind_field_and_value(frame, expected):
    with pytest.raises(ProtocolError) as caught:
        decode(frame)
    assert str(caught.value).startswith(expected)


@pytest.mark.parametrize(("first", "end"), [(5, 5), (6, 5)])
def test_a_grant_whose_end_step_is_not_above_its_first_step_raises_protocol_error(first, end):
    fields = {"job_id": 1, "first_step": first, "end_step": end, "split": [1], "committed": -1, "version": 0}
    expected = f"Grant: end_step {end} is not above first_step {first}"
    with pytest.raises(ProtocolError, match=expected):
        decode(frame_of("Grant", fields))


@pytest.mark.parametrize("rank", [2, 3])
def test_a_welcome_whose_rank_is_not_below_world_size_raises_protocol_error(rank):
    fields = wire_fields(welcome())
    fields["rank"] = rank
    with pytest.raises(ProtocolError, match=f"Welcome: rank {rank} is not below world_size 2"):
        decode(frame_of("Welcome", fields))


@pytest.mark.parametrize(("members", "expected"), [
    ([1], "rank 0 is not one of the members [1]"),
    ([1, 0], "members [1, 0] are not distinct ascending ranks below world_size 2"),
    ([0, 0], "members [0, 0] are not distinct ascending ranks"),
    ([0, 2], "members [0, 2] are not distinct ascending ranks below world_size 2"),
])
def test_a_welcome_into_a_group_it_is_not_a_member_of_raises_protocol_error(members, expected):
    fields = wire_fields(welcome())
    fields["rank"], fields["members"] = 0, members
    with pytest.raises(ProtocolError, match=re.escape(f"Welcome: {expected}")):
        decode(frame_of("Welcome", fields))


def test_a_regroup_whose_source_is_not_a_member_raises_protocol_error():
    fields = {"job_id": 1, "generation": 2, "rank": 1, "world_size": 3, "rewind_step": 8, "source_rank": 0,
              "members": [1, 2], "gradient_sync": "exchange", "history": "", "threads": 0, "cores": None}
    with pytest.raises(ProtocolError, match=re.escape("Regroup: rank 0 is not one of the members [1, 2]")):
        decode(frame_of("Regroup", fields))
    fields["source_rank"] = 1
    assert decode(frame_of("Regroup", fields)).members == [1, 2]


def test_an_oversize_frame_is_refused_before_it_is_unpacked():
    # Unpacked, these bytes would fail as "extra data"; the size error proves no unpacking ran.
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(bytes(ACTOR_LIMITS.frame_bytes + 1))
    with pytest.raises(ProtocolError, match="extra data"):
        decode(bytes(ACTOR_LIMITS.frame_bytes))


def test_an_error_message_stays_short_whatever_the_value():
    with pytest.raises(ProtocolError) as caught:
        decode(frame_of("Shutdown", {"reason": "x" * 1_000_000}))
    assert len(str(caught.value)) < 200


# --- fuzzing: decode never raises anything but ProtocolError ---------------------------


def decode_or_protocol_error(frame):
    try:
        return decode(frame)
    except ProtocolError:
        return None


@settings(max_examples=300, deadline=None)
@given(frame=st.binary(max_size=256))
def test_decoding_arbitrary_bytes_raises_only_protocol_error(frame):
    result = decode_or_protocol_error(frame)
    assert result is None or isinstance(result, KINDS)


@settings(max_examples=200, deadline=None)
@given(msg=ANY_MESSAGE, data=st.data())
def test_decoding_a_corrupted_valid_frame_raises_only_protocol_error(msg, data):
    frame = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    result = decode_or_protocol_error(bytes(frame))
    assert result is None or isinstance(result, KINDS)


MSGPACK_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(), st.binary()
)
MSGPACK_VALUES = st.recursive(
    MSGPACK_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from([cls.__name__ for cls in KINDS]), data=st.data())
def test_decoding_arbitrary_field_values_raises_only_protocol_error(kind, data):
    names = [f.name for f in dataclasses.fields(getattr(protocol, kind))]
    fields = data.draw(st.fixed_dictionaries({name: MSGPACK_VALUES for name in names}))
    result = decode_or_protocol_error(frame_of(kind, fields))
    assert result is None or isinstance(result, KINDS)


# --- sending: our own invalid messages are our bug ---------------------------------------


@pytest.mark.parametrize(
    "msg",
    [
        Heartbeat(rank=-1, step=0),
        Heartbeat(rank=True, step=0),
        Heartbeat(rank=0, step=2**64),
        Grant(job_id=1, first_step=3, end_step=3, split=[1]),
        Grant(job_id=1, first_step=0, end_step=3, split=(1, 2)),
        welcome(rank=2),
        welcome(data="not a DatasetInfo"),
        Shutdown(reason="\ud800"),
        Stop(job_id=1, save="yes"),
        StoreRequest(seq=0, op="set", keys=["k"], value="not bytes"),
        Reports(job_id=1, rank=0, steps=[Heartbeat(rank=0, step=0)], memory_bytes=0, queued=0),
    ],
    ids=lambda msg: type(msg).__name__,
)
def test_encoding_an_invalid_message_raises_internal_error(msg):
    with pytest.raises(InternalError, match="refusing to send an invalid message"):
        encode(msg)
    with pytest.raises(InternalError):
        validate(msg)


@pytest.mark.parametrize("obj", [job(), array(), StepStat(0, 0, 0.0, 0.0, 0.0), {"rank": 0}, None])
def test_encoding_something_that_is_not_a_message_kind_raises_internal_error(obj):
    with pytest.raises(InternalError, match="not a message kind"):
        encode(obj)


def test_validate_accepts_a_valid_message():
    validate(welcome())
    validate(Failure(job_id=1, rank=0, message=""))
    validate(Finished(job_id=1, rank=0, samples=10, seconds=1, saved=False))
    validate(HELLO)


# --- the job's settings: one set of rules, here and on the wire --------------------------


@pytest.mark.parametrize("changes, named", [
    ({"lr": math.nan}, "lr"), ({"lr": 1e-13}, "lr"), ({"precision": "fp8"}, "precision"),
    ({"split": (math.nan, 1.0)}, "split[0]"), ({"split": (math.inf, 1.0)}, "split[0]"),
    ({"split": (1e308, 1e308)}, "split[0]"), ({"epochs": 2_000_000}, "epochs"),
    ({"batch_size": 20_000_000}, "batch_size"), ({"hidden": (2_000_000,)}, "hidden[0]"), ({"hidden": ()}, "hidden"),
    ({"hang_timeout_s": math.inf}, "hang_timeout_s"), ({"align": 65, "batch_size": 64}, "alignment"),
    ({"resume": True}, "resume needs"), ({"label_column": ""}, "label_column"),
    ({"label_column": "x" * 257}, "label_column"), ({"label_column": "a\nb"}, "control characters"),
    ({"dataset": "py:not a module"}, "takes package.module:callable"),
])
def test_a_job_the_wire_would_refuse_cannot_be_built(changes, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        TrainJob(**changes)


@FAST
@given(spec=train_jobs())
def test_every_job_that_can_be_built_can_be_sent(spec):
    sent = Submit(job=spec)
    assert decode(encode(sent), CLIENT_LIMITS) == sent


def test_a_job_that_breaks_its_own_rules_on_the_wire_is_a_protocol_error():
    fields = wire_fields(Submit(job=TrainJob()))
    fields["job"]["align"] = 1000
    with pytest.raises(ProtocolError, match="alignment"):
        decode(frame_of("Submit", fields), CLIENT_LIMITS)


@pytest.mark.parametrize("field, value, says", [("dataset", "py:../evil.py", "takes package.module:callable"),
                                                ("label_column", "a\x1b[2Jb", "control characters")])
def test_a_dataset_setting_a_client_could_not_build_is_a_protocol_error_on_the_wire(field, value, says):
    fields = wire_fields(Submit(job=TrainJob()))
    fields["job"][field] = value
    with pytest.raises(ProtocolError, match=re.escape(says)):
        decode(frame_of("Submit", fields), CLIENT_LIMITS)


def test_the_label_column_is_part_of_the_fingerprint_and_its_default_leaves_it_unchanged():
    table = TrainJob(dataset="csv:t.csv")
    assert table.fingerprint() != dataclasses.replace(table, label_column="kind").fingerprint()
    # the fingerprint of a job that names no label column is what it was before the field
    # existed, so checkpoints written then still resume
    assert TrainJob().fingerprint() == "dd2c9aa60ac59c73dcd7a0cb6f1ae3b32d1400d4bb7e38d80636ed6bcaa4b9ee"


# --- caps before and while decoding -------------------------------------------------------


def test_a_frame_of_a_million_empty_arrays_is_refused_without_building_them():
    frame = msgpack.packb([[]] * 1_000_000)
    with pytest.raises(ProtocolError):
        decode(frame, dataclasses.replace(CLIENT_LIMITS, frame_bytes=len(frame)))   # even if it were allowed in


def test_a_long_map_is_refused_by_the_unpacker():
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        decode(msgpack.packb([VERSION, "Heartbeat", {str(i): i for i in range(100)}]), CLIENT_LIMITS)


def test_plain_data_deeper_than_the_limit_is_refused():
    deep: dict = {}
    node = deep
    for _ in range(MAX_PLAIN_DEPTH + 1):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(ProtocolError, match="nested deeper"):
        decode(frame_of("JobUpdate", {"job_id": 1, "kind": "epoch", "data": deep}))
    shallow = JobUpdate(job_id=1, kind="epoch", data=Plain({"a": [1, {"b": None}]}))
    assert decode(encode(shallow)) == shallow
