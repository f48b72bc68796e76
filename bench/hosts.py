"""One host against two: the same job on two CPU actors in one network namespace, and on one
actor in each of two joined namespaces (`leptonrt join`), in one invocation.

For each link (plain veth, then the private link shaped with `tc ... tbf` at --rate) and
each batch size, it prints one JSON line per job and one per pair: samples/s of each, their
ratio (two hosts over one), the time to fill the joined host's cache (from the broker's
log; 0 when the host held the data already), and the bytes per step that crossed the
joined host's links (gradients on the private link, control on the public one). The
target (issue #23): at 1 Gbit and batch 1024, two hosts >= 0.9x one host.

The namespaces share the machine's cores and memory: "two hosts" here costs what the
network stack and the CURVE control plane add, not what a second machine would bring.
This kernel has no netem: links are rate-limited, never delayed. Needs root (ip netns).
Uses the namespace helpers of the test suite (tests/hosts).

    python bench/hosts.py [--epochs 3] [--batch-sizes 256,1024] [--rate 1gbit]
                          [--dataset synthetic:20000,64,10] [--hidden 256]
                          [--core-per-host] [--data cache|stream]

``--core-per-host`` confines the head's processes to one core and the agent's to another, so
each "host" runs its actor on a core of its own, as two one-core machines would, against the
one-host pair on both cores (1 thread each either way). Without it each namespace sizes its
actor for every core (2 threads), and two "hosts" run 4 threads on 2 cores.
``--data stream`` joins the host with ``join --data stream`` (rows by value each step; the
control bytes per step then include them).

``--costs`` instead measures what one actor message costs the broker to take in, over the
private ipc channel and over CURVE (decrypting, the key's check, decoding), and to send
(a Grant to a 1,000-actor group, encoded once): the per-message figures of the paper
estimate in bench/RESULTS.md. It needs no namespaces.

    python bench/hosts.py --costs [--messages 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hosts.cluster import ADDRESS, Cluster  # noqa: E402
from tests.hosts.conftest import PRIVATE_IFACE, PUBLIC_IFACE, Hosts, _build, _remove  # noqa: E402


def _link_bytes(hosts: Hosts) -> dict[str, int]:
    """Bytes sent and received so far on the agent's public and private links."""
    out = {}
    for iface in (PUBLIC_IFACE["agent"], PRIVATE_IFACE["agent"]):
        total = 0
        for way in ("rx_bytes", "tx_bytes"):
            total += int(hosts.run("agent", "cat", f"/sys/class/net/{iface}/statistics/{way}").stdout)
        out[iface] = total
    return out


def _fill_seconds(cluster: Cluster) -> float | None:
    """The latest cache fill the broker logged (None: none logged)."""
    found = None
    for event in cluster.status()["events"]:
        match = re.search(r"chunks sent in ([0-9.]+) s", event["text"])
        if match:
            found = float(match.group(1))
        elif "hold it already" in event["text"]:
            found = 0.0
    return found


def _job(cluster: Cluster, args, batch: int) -> dict:
    out, result = cluster.train("--dataset", args.dataset, "--epochs", args.epochs, "--batch-size", batch,
                                "--hidden", args.hidden, "--rebalance", "off", json_out=f"job-{os.urandom(4).hex()}.json")
    if out.returncode != 0:
        raise SystemExit(f"the job failed: {out.stderr[-2000:]}")
    return result


def _one_host(hosts: Hosts, root: Path, args, batch: int) -> dict:
    (root / f"one-{batch}").mkdir()
    cluster = Cluster(hosts, root / f"one-{batch}")
    try:
        # alone in its namespace, the pair may pin (a core each), as the two hosts' actors are with --core-per-host
        pin = [] if args.core_per_host else ["--no-pin"]
        cluster.start("head", "up", "--gpus", "none", "--cpu-actors", "2", "--no-tui", *pin, "--listen",
                      ADDRESS, "--keys", cluster.head_keys, "--gradient-iface", PRIVATE_IFACE["head"], log="up.log")
        cluster.wait_actors(2)
        _job(cluster, args, batch)   # warm-up, as the two-host run's first job (which fills the cache)
        return _job(cluster, args, batch)
    finally:
        cluster.stop()


def _two_hosts(hosts: Hosts, root: Path, args, batch: int) -> tuple[dict, float | None, dict[str, int]]:
    """The second of two jobs (the first fills the host's cache: its time is ``fill_s``), and
    the bytes that crossed the host's links during the second."""
    (root / f"two-{batch}").mkdir()
    cluster = Cluster(hosts, root / f"two-{batch}")
    try:
        if args.core_per_host:   # each "host" a core of its own: its actor one thread there
            cluster.prefix = {"head": ["taskset", "-c", str(args.cores[0])], "agent": ["taskset", "-c", str(args.cores[-1])]}
        cluster.up("--no-pin")   # namespaces share the cores: each "host" pinning its own would stack them
        cluster.join("alpha", "agent", None, "--no-pin", "--data", args.data)
        cluster.wait_actors(2)
        _job(cluster, args, batch)
        cluster.wait_actors(2)   # the broker logs the fill once it is idle again
        fill_s = _fill_seconds(cluster)
        before = _link_bytes(hosts)
        result = _job(cluster, args, batch)
        after = _link_bytes(hosts)
        return result, fill_s, {k: after[k] - before[k] for k in after}
    finally:
        cluster.stop()


def _costs(messages: int) -> None:
    """Seconds per message of the broker's receive path (ipc plain, tcp CURVE) and of a Grant's encoding."""
    import time

    import zmq

    from leptonrt import curve, keys
    from leptonrt.messages import ACTOR_LIMITS, Grant, Reports, StepStat, decode, encode

    report = encode(Reports(job_id=1, rank=7, steps=[StepStat(step=5, rows=64, compute_s=0.01, step_s=0.02,
                                                               simulated_s=0.0)], memory_bytes=0, queued=3))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "keys"
        server = keys.init(directory)
        client = keys.KeyPair(*zmq.curve_keypair())
        (Path(tmp) / "c.key").write_text(f'metadata\ncurve\n    public-key = "{client.public.decode()}"\n')
        keys.allow(directory, "alpha", Path(tmp) / "c.key")
        ctx = zmq.Context()
        auth = curve.Authenticator(ctx, keys.AuthorizedKeys(directory / "authorized")).start()
        router = ctx.socket(zmq.ROUTER)
        router.bind(f"ipc://{tmp}/s")
        curve.arm_server(router, server, auth, beside_ipc=True)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        for name, address, armed in (("ipc", f"ipc://{tmp}/s", False), ("curve", f"tcp://127.0.0.1:{port}", True)):
            dealer = ctx.socket(zmq.DEALER)
            dealer.set(zmq.SNDHWM, 0)
            if armed:
                curve.arm_client(dealer, server.public, client)
            dealer.connect(address)
            dealer.send(report)
            router.recv_multipart()   # connected
            for _ in range(messages):
                dealer.send(report)
            t0 = time.perf_counter()
            for _ in range(messages):
                frames = router.recv_multipart(copy=not armed)
                if armed and auth.sender(frames[1]) is None:
                    raise SystemExit("the allowed key was refused")
                decode(frames[1] if not armed else frames[1].bytes, ACTOR_LIMITS)
            print(json.dumps({"bench": "hosts-costs", "receive": name,
                              "us_per_message": 1e6 * (time.perf_counter() - t0) / messages}))
            identity = router.recv_multipart() if dealer.send(report) is None else None
            frame = encode(Grant(job_id=1, first_step=0, end_step=4, split=[1] * 1000))
            t0 = time.perf_counter()
            for _ in range(messages // 10):   # the broker's send of one encoded Grant, per member
                router.send_multipart([identity[0], frame], flags=zmq.NOBLOCK)
            print(json.dumps({"bench": "hosts-costs", "send": f"{name}, Grant of 1000 ranks ({len(frame)} bytes)",
                              "us_per_message": 1e6 * (time.perf_counter() - t0) / (messages // 10)}))
            dealer.close(0)
        grant = Grant(job_id=1, first_step=0, end_step=4, split=[1] * 1000)
        t0 = time.perf_counter()
        for _ in range(1000):
            encode(grant)
        print(json.dumps({"bench": "hosts-costs", "encode": "Grant, 1000 ranks",
                          "us_per_message": 1e6 * (time.perf_counter() - t0) / 1000}))
        router.close(0)
        auth.close()
        ctx.term()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-sizes", default="256,1024")
    p.add_argument("--rate", default="1gbit", help="the shaped link's rate (tc tbf)")
    p.add_argument("--dataset", default="synthetic:20000,64,10")
    p.add_argument("--hidden", default="256")
    p.add_argument("--costs", action="store_true", help="measure the broker's per-message costs, then exit")
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--core-per-host", action="store_true",
                   help="the head's processes on the first core, the agent's on the last (each actor 1 thread)")
    p.add_argument("--data", choices=("cache", "stream"), default="cache", help="the joined host's `join --data`")
    args = p.parse_args()
    if args.costs:
        return _costs(args.messages)
    args.cores = sorted(os.sched_getaffinity(0))
    if args.core_per_host and len(args.cores) < 2:
        raise SystemExit("hosts.py: --core-per-host needs two cores")
    names = {role: f"lrb{os.getpid()}{role[0]}" for role in ("head", "agent", "third")}
    root = Path(tempfile.mkdtemp(prefix="leptonrt-bench-hosts-"))
    _remove(names)
    try:
        _build(names)
        hosts = Hosts(names)
        for n, link in enumerate(("veth", f"tbf {args.rate}")):
            (root / str(n)).mkdir()
            if link != "veth":
                for role in ("head", "agent"):
                    hosts.run(role, "tc", "qdisc", "add", "dev", PRIVATE_IFACE[role], "root", "tbf", "rate",
                              args.rate, "burst", "256kbit", "latency", "50ms")
            for batch in map(int, args.batch_sizes.split(",")):
                one = _one_host(hosts, root / str(n), args, batch)
                two, fill_s, moved = _two_hosts(hosts, root / str(n), args, batch)
                steps = two["steps"] or 1
                for hosts_n, result in ((1, one), (2, two)):
                    print(json.dumps({"bench": "hosts", "link": link, "batch": batch, "hosts": hosts_n, "actors": 2,
                                      "samples_per_s": result["samples_per_s"], "digest": result["history_digest"][:12]}))
                print(json.dumps({"bench": "hosts", "link": link, "batch": batch, "data": args.data,
                                  "core_per_host": args.core_per_host,
                                  "two_over_one": two["samples_per_s"] / one["samples_per_s"],
                                  "fill_s": fill_s, "gradient_bytes_per_step": moved[PRIVATE_IFACE["agent"]] / steps,
                                  "control_bytes_per_step": moved[PUBLIC_IFACE["agent"]] / steps,
                                  "same_digest": one["history_digest"] == two["history_digest"]}), flush=True)
    finally:
        _remove(names)


if __name__ == "__main__":
    main()
