"""`leptonrt.connect` against a Service in the same process, over loopback TCP with CURVE keys."""

import asyncio
import socket

import pytest

import leptonrt
from leptonrt import Broker, EpochEvent, TrainJob, keys
from leptonrt.broker.service import Service

pytestmark = pytest.mark.process


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def keyrings(tmp_path):
    """(the broker's key dir, an allowed client's, a stranger's)."""
    dirs = [tmp_path / name for name in ("broker", "client", "stranger")]
    for d in dirs:
        keys.init(d)
    keys.allow(dirs[0], "client", dirs[1] / "public.key")
    return dirs


def test_an_allowed_key_submits_streams_and_gets_its_weights_back(no_leftovers, keyrings, tmp_path):
    server, client, stranger = keyrings
    address = f"tcp://127.0.0.1:{_port()}"
    save = tmp_path / "w.safetensors"

    async def main():
        async with Broker(gpus="none", cpu_actors=2, address=address) as broker, \
                Service(broker, address, keys=server):
            with pytest.raises(leptonrt.ConfigError, match="refused this key"):
                async with leptonrt.connect(address, server_key=server / "public.key", keys=stranger):
                    pass
            async with leptonrt.connect(address, server_key=server / "public.key", keys=client) as remote:
                job = await remote.submit(TrainJob(dataset="synthetic:600,8,3", hidden=(16,), epochs=2, batch_size=64,
                                                   save=str(save)))
                events = [e async for e in job.events()]
                result = await job.result()
                snapshot = await remote.status()
                with pytest.raises(leptonrt.RemoteJobFailed) as bad:
                    await (await remote.submit(TrainJob(dataset="npz:/nonexistent.npz", epochs=1))).result()
        return events, result, snapshot, bad.value

    events, result, snapshot, bad = asyncio.run(main())
    assert [e.epoch for e in events if isinstance(e, EpochEvent)] == [1, 2]
    assert result["epochs"] == 2 and result["job_id"] == 1
    assert snapshot.jobs_done == 1 and len(snapshot.actors) == 2
    assert bad.exit_code == 66 and "nonexistent" in str(bad)
    assert save.stat().st_size > 0   # written by the client, from the weights the broker sent back


def test_revoking_a_key_cuts_off_its_open_connection(no_leftovers, keyrings):
    server, client, _stranger = keyrings
    address = f"tcp://127.0.0.1:{_port()}"

    async def main():
        async with Broker(gpus="none", cpu_actors=1, address=address) as broker, \
                Service(broker, address, keys=server) as service:
            async with leptonrt.connect(address, server_key=server / "public.key", keys=client) as remote:
                await remote.status()
                keys.revoke(server, "client")
                with pytest.raises(leptonrt.NoDeviceError):
                    await asyncio.wait_for(remote.status(), 30)
            return service.statistics()

    stats = asyncio.run(main())
    assert stats["unauthorised"] >= 1


def test_a_tcp_address_without_the_brokers_key_is_a_clear_error():
    with pytest.raises(leptonrt.ConfigError, match="--server-key"):
        leptonrt.connect("tcp://127.0.0.1:5999")


def test_connecting_to_nothing_raises_no_device_error_quickly(tmp_path):
    async def main():
        async with leptonrt.connect(f"ipc://{tmp_path}/nobody.sock"):
            pass

    with pytest.raises(leptonrt.NoDeviceError, match="no leptonrt broker is answering"):
        asyncio.run(asyncio.wait_for(main(), 30))
