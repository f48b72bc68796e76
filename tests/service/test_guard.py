"""The service against bad and hostile clients, with a fake broker behind it (socket tier:
real zmq on an ipc socket, no actors)."""

import asyncio
import os

import msgpack
import pytest
import zmq
import zmq.asyncio

from leptonrt import messages
from leptonrt.broker.embedded import Job
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leptonrt.broker.gate import GateConfig
from leptonrt.broker.service import Service
from leptonrt.broker.stats import Snapshot
from leptonrt.messages import (SERVICE_LIMITS, Acknowledged, Rejected, StatusReply, StatusRequest, StopRequest,
                               Submit)
from leptonrt.config import TrainJob


class FakeBroker:
    """What the service needs of a broker: snapshots, and jobs it can queue."""

    def __init__(self):
        self.counters = dict
        self.submitted: list[Job] = []
        self.fail_snapshots = 0

    def snapshot(self):
        if self.fail_snapshots:
            self.fail_snapshots -= 1
            raise RuntimeError("a bug in the snapshot")
        return Snapshot(address="fake", started_at=0.0, now=0.0, state="serving", job=None, counters=self.counters())

    def submit_nowait(self, spec, keep_weights=False):
        job = Job(len(self.submitted) + 1, spec, asyncio.get_running_loop())
        self.submitted.append(job)
        return job

    def jobs(self):
        return list(self.submitted)


@pytest.fixture
def address(tmp_path):
    return f"ipc://{tmp_path}/service.sock"


class Client:
    def __init__(self, address):
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)

    async def ask(self, msg, timeout=10.0):
        await self.sock.send(msg if isinstance(msg, bytes) else messages.encode(msg))
        return await self.answer(timeout)

    async def answer(self, timeout=10.0):
        if not await self.sock.poll(int(timeout * 1000)):
            return None
        return messages.decode(await self.sock.recv(), SERVICE_LIMITS)

    def close(self):
        self.sock.close(linger=0)
        self.ctx.term()


def serve(address, check, **options):
    """Run ``check(service, broker, client)`` against a running service."""
    async def main():
        broker = FakeBroker()
        async with Service(broker, address, **options) as service:
            client = Client(address)
            try:
                return await check(service, broker, client)
            finally:
                client.close()
    return asyncio.run(asyncio.wait_for(main(), 60))


def test_a_token_of_old_that_is_not_ascii_is_one_rejection_and_the_service_goes_on(address):
    # on the main of old, this request's token made hmac.compare_digest raise and the service died
    old = msgpack.packb([messages.VERSION, "StatusRequest", {"token": "é"}])

    async def check(service, broker, client):
        return await client.ask(old), await client.ask(StatusRequest())
    refused, again = serve(address, check)
    assert isinstance(refused, Rejected) and refused.exit_code == 70 and "token" in refused.message
    assert isinstance(again, StatusReply)


def test_a_stop_request_is_acknowledged_and_handed_to_whoever_runs_the_service(address):
    asked = []

    async def check(service, broker, client):
        return await client.ask(StopRequest()), await client.ask(StatusRequest())
    stopping, still = serve(address, check, on_stop=lambda: asked.append("stop"))
    assert isinstance(stopping, Acknowledged) and "step boundary" in stopping.message and asked == ["stop"]
    assert isinstance(still, StatusReply)   # stopping is the owner's to do; the service answers meanwhile


def test_a_service_whose_owner_takes_no_stop_requests_refuses_them(address):
    async def check(service, broker, client):
        return await client.ask(StopRequest())
    refused = serve(address, check)
    assert isinstance(refused, Rejected) and refused.exit_code == 78


def test_a_request_whose_handling_raises_is_one_counted_rejection(address):
    async def check(service, broker, client):
        broker.fail_snapshots = 1
        first = await client.ask(StatusRequest())
        second = await client.ask(StatusRequest())
        return first, second, service.statistics()
    first, second, stats = serve(address, check)
    assert isinstance(first, Rejected) and first.exit_code == 70 and "the service goes on" in first.message
    assert isinstance(second, StatusReply) and stats["handler_errors"] == 1


@pytest.mark.parametrize("frame", [b"\xc1", msgpack.packb([messages.VERSION, "Submit", {"token": "", "job": [[]] * 3000}]),
                                   msgpack.packb([1, "Submit", {"token": "", "job_json": "[" * 32000}]),
                                   msgpack.packb([messages.VERSION, "Submit", {"token": "", "job": {"lr": 1e400}}])])
def test_malformed_requests_are_rejected_and_counted(address, frame):
    async def check(service, broker, client):
        bad = await client.ask(frame)
        good = await client.ask(StatusRequest())
        return bad, good, service.statistics()
    bad, good, stats = serve(address, check)
    assert isinstance(bad, Rejected) and bad.exit_code == 70
    assert isinstance(good, StatusReply) and stats["decode_errors"] == 1


def test_a_flood_from_one_client_is_dropped_and_another_client_is_answered(address):
    async def check(service, broker, client):
        status = messages.encode(StatusRequest())
        for _ in range(20_000):
            await client.sock.send(status)
        other = Client(address)
        try:
            answer = await other.ask(StatusRequest(), timeout=20)
        finally:
            other.close()
        return answer, service.statistics()
    answer, stats = serve(address, check)
    assert isinstance(answer, StatusReply)
    assert stats["dropped"] > 0


@pytest.mark.parametrize("job, why", [
    (TrainJob(save="/etc/passwd"), "writes no file"),
    (TrainJob(checkpoint_dir="/root/ckpt", checkpoint_every=5), "keeps no checkpoints"),
])
def test_a_job_that_names_a_path_for_the_broker_to_write_is_refused(address, job, why):
    async def check(service, broker, client):
        return await client.ask(Submit(job=job)), broker.submitted
    reply, submitted = serve(address, check)
    assert isinstance(reply, Rejected) and reply.exit_code == 78 and why in reply.message and submitted == []


def test_checkpoints_go_under_the_root_and_only_by_plain_name(address, tmp_path):
    async def check(service, broker, client):
        bad = await client.ask(Submit(job=TrainJob(checkpoint_dir="../escape", checkpoint_every=5)))
        good = await client.ask(Submit(job=TrainJob(checkpoint_dir="mine", checkpoint_every=5)))
        return bad, good, [j.spec.checkpoint_dir for j in broker.submitted]
    bad, good, dirs = serve(address, check, checkpoint_root=tmp_path / "root")
    assert isinstance(bad, Rejected) and bad.exit_code == 78
    assert good.job_id == 1 and dirs == [str((tmp_path / "root" / "mine").resolve())]


def test_closing_the_service_tells_every_client_following_a_job_that_the_broker_closed(address):
    async def main():
        broker = FakeBroker()
        service = Service(broker, address)
        await service.start()
        client = Client(address)
        try:
            accepted = await client.ask(Submit(job=TrainJob()))
            await service.close()
            return accepted, await client.answer(timeout=5)
        finally:
            client.close()
    accepted, update = asyncio.run(asyncio.wait_for(main(), 60))
    assert accepted.job_id == 1
    assert update.kind == "failed" and update.data["exit_code"] == 75 and "closed" in update.data["message"]


# --- fuzzing a running service: whatever arrives, it keeps answering --------------------

FUZZ_EXAMPLES = int(os.environ.get("LEPTONRT_FUZZ_EXAMPLES", "60"))   # raise it for a longer run


def _mutations(frame: bytes, draw) -> bytes:
    data = bytearray(frame)
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


VALID = [messages.encode(StatusRequest()), messages.encode(Submit(job=TrainJob()))]


def test_a_running_service_answers_after_any_sequence_of_arbitrary_and_mutated_frames(address):
    async def check(service, broker, client):
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def frames_then_status(data):
            batch = data.draw(st.lists(st.binary(max_size=300) | st.sampled_from(VALID).flatmap(
                lambda f: st.builds(lambda d: _mutations(f, d.draw), st.data())), min_size=1, max_size=8))
            sender.add(batch)

        sender = _Sender(client)
        frames_then_status()
        answer = await asyncio.wait_for(sender.flush_and_ask(), 30)
        return answer, service.statistics()

    answer, stats = serve(address, check, gate=GateConfig(rate=1e6, burst=1e6, strikes=10**9))
    assert isinstance(answer, StatusReply)
    assert stats["handler_errors"] == 0


class _Sender:
    """Collects the frames hypothesis draws (its examples run synchronously) and sends them."""

    def __init__(self, client):
        self.client, self.pending = client, []

    def add(self, frames):
        self.pending.extend(frames)

    async def flush_and_ask(self):
        for frame in self.pending:
            await self.client.sock.send(frame)
        # drain whatever came back, then ask once more: the service must still answer
        while await self.client.sock.poll(200):
            await self.client.sock.recv()
        return await self.client.ask(StatusRequest(), timeout=20)
