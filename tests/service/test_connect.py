"""`leptonrt.connect` against a Service in the same process, over loopback TCP with a token."""

import asyncio
import socket

import pytest

import leptonrt
from leptonrt import Broker, EpochEvent, TrainJob
from leptonrt.broker.service import Service

pytestmark = pytest.mark.process
SECRET = "a-secret-of-enough-length"


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connect_submits_streams_and_returns_the_result_with_the_right_token(no_leftovers):
    address = f"tcp://127.0.0.1:{_port()}"

    async def main():
        async with Broker(gpus="none", cpu_actors=2, address=address) as broker, Service(broker, address, SECRET):
            with pytest.raises(leptonrt.RemoteJobFailed) as refused:
                async with leptonrt.connect(address, secret="wrong"):
                    pass
            async with leptonrt.connect(address, secret=SECRET) as remote:
                job = await remote.submit(TrainJob(dataset="synthetic:600,8,3", hidden=(16,), epochs=2, batch_size=64))
                events = [e async for e in job.events()]
                result = await job.result()
                snapshot = await remote.status()
                with pytest.raises(leptonrt.RemoteJobFailed) as bad:
                    await (await remote.submit(TrainJob(dataset="npz:/nonexistent.npz", epochs=1))).result()
        return refused.value, events, result, snapshot, bad.value

    refused, events, result, snapshot, bad = asyncio.run(main())
    assert refused.exit_code == 78 and "token" in str(refused)
    assert [e.epoch for e in events if isinstance(e, EpochEvent)] == [1, 2]
    assert result["epochs"] == 2 and result["job_id"] == 1
    assert snapshot.address == address and snapshot.jobs_done == 1 and len(snapshot.actors) == 2
    assert bad.exit_code == 66 and "nonexistent" in str(bad)


def test_a_service_refuses_to_listen_beyond_loopback_without_a_token():
    with pytest.raises(leptonrt.ConfigError, match="LEPTONRT_TOKEN"):
        Service(None, "tcp://0.0.0.0:5999", "")
    with pytest.raises(leptonrt.ConfigError, match="LEPTONRT_TOKEN"):
        Service(None, "tcp://10.0.0.1:5999", "short")


def test_connecting_to_nothing_raises_no_device_error_quickly(tmp_path):
    async def main():
        async with leptonrt.connect(f"ipc://{tmp_path}/nobody.sock"):
            pass

    with pytest.raises(leptonrt.NoDeviceError, match="no leptonrt broker is answering"):
        asyncio.run(asyncio.wait_for(main(), 30))
