"""During a job, nothing of leptonrt's can be reached from another network namespace, and
nothing of the broker's accepts a connection from another user (the rendezvous store
included: the broker keeps it on its private ipc channel)."""

import os
import socket
import subprocess
import sys
import uuid

import pytest

from leptonrt import Broker, TrainJob

pytestmark = pytest.mark.process

LISTEN = "0A"


def _inodes(pid):
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(target[8:-1])
    except OSError:
        pass
    return out


def listening_tcp(pids):
    """(pid, address, port) of every listening TCP socket the processes hold."""
    owner = {inode: pid for pid in pids for inode in _inodes(pid)}
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN and inode in owner:
                host, port = local.split(":")
                raw = bytes.fromhex(host)
                if family == socket.AF_INET:
                    address = socket.inet_ntop(family, raw[::-1])
                else:
                    address = socket.inet_ntop(family, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
                found.append((owner[inode], address, int(port, 16)))
    return found


@pytest.fixture
def netns():
    """A network namespace joined to this one by a veth pair: (name, our address on the link)."""
    tag = uuid.uuid4().hex[:6]
    name, outside, inside = f"lrt-{tag}", f"lo{tag}", f"li{tag}"
    steps = [["ip", "netns", "add", name], ["ip", "link", "add", outside, "type", "veth", "peer", "name", inside],
             ["ip", "link", "set", inside, "netns", name], ["ip", "addr", "add", "10.213.7.1/24", "dev", outside],
             ["ip", "link", "set", outside, "up"],
             ["ip", "netns", "exec", name, "ip", "addr", "add", "10.213.7.2/24", "dev", inside],
             ["ip", "netns", "exec", name, "ip", "link", "set", inside, "up"],
             ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"]]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=30)
            if done.returncode:
                pytest.skip(f"network namespaces are not available here: {' '.join(step)}: {done.stderr.strip()}")
        yield name, "10.213.7.1"
    finally:
        subprocess.run(["ip", "link", "del", outside], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def _connects_from(netns_name, host, port):
    probe = (f"import socket; s=socket.socket(); s.settimeout(2)\n"
             f"try:\n  s.connect(({host!r}, {port})); print('open')\nexcept OSError: print('closed')")
    out = subprocess.run(["ip", "netns", "exec", netns_name, sys.executable, "-c", probe], capture_output=True,
                         text=True, timeout=30)
    return out.stdout.strip() == "open"


def _as_nobody(code):
    """Run ``code`` with the system's Python as user nobody (the project's may sit in a
    directory nobody can read)."""
    def drop():
        os.setgid(65534)
        os.setuid(65534)
    return subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, timeout=30,
                          preexec_fn=drop, env={"PATH": "/usr/bin:/bin"})


def _during_a_job(check):
    """Run ``check(broker_pid, actor_pids, run_dir)`` while a two-actor job trains."""
    async def main():
        async with Broker(gpus="none", cpu_actors=2) as broker:
            job = await broker.submit(TrainJob(dataset="synthetic:20000,32,4", hidden=(64,), epochs=30,
                                               batch_size=64, rebalance=False))
            import asyncio
            while broker.snapshot().job is None or broker.snapshot().job.step < 20:
                await asyncio.sleep(0.05)
            pids = [a.pid for a in broker.snapshot().actors]
            result = await asyncio.to_thread(check, os.getpid(), pids, broker.pool.run_dir)
            broker._runner.interrupt()   # done looking: stop the job
            try:
                await job.result()
            except Exception:
                pass
            return result
    import asyncio
    return asyncio.run(main())


def test_no_socket_of_a_running_job_is_reachable_from_another_network_namespace(netns, no_leftovers):
    name, our_address = netns

    def check(broker_pid, actor_pids, run_dir):
        listening = listening_tcp([broker_pid, *actor_pids])
        reachable = [(pid, port) for pid, _addr, port in listening if _connects_from(name, our_address, port)]
        return listening, reachable

    listening, reachable = _during_a_job(check)
    assert reachable == []
    assert [entry for entry in listening if entry[0] == os.getpid()] == []   # the broker listens on no TCP port
    assert all(addr in ("127.0.0.1", "::1") for _pid, addr, _port in listening), listening


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="needs root and a system Python to run a probe as another user")
def test_another_user_cannot_reach_the_broker_during_a_job(no_leftovers):
    def check(broker_pid, actor_pids, run_dir):
        code = (f"import socket\ns = socket.socket(socket.AF_UNIX)\n"
                f"try:\n    s.connect('{run_dir}/broker.sock'); print('connected')\n"
                f"except OSError as exc:\n    print('refused', exc.errno)")
        ipc = _as_nobody(code)
        ports = [port for pid, _a, port in listening_tcp([broker_pid])]
        return ipc, ports, os.stat(run_dir).st_mode & 0o777
    ipc, broker_ports, mode = _during_a_job(check)
    assert mode == 0o700 and broker_ports == []
    assert ipc.stdout.startswith("refused"), (ipc.stdout, ipc.stderr)
