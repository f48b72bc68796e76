"""Prometheus metrics of a running broker, read from the same snapshot the live view shows.

``families(snapshot)`` turns one ``Snapshot`` into metric families (pure: the same snapshot
gives the same metrics). ``MetricsServer`` serves them over HTTP with ``prometheus_client``:
its collector takes a fresh snapshot at every scrape, on the broker's own event loop (the
HTTP server answers from a thread of its own, and the broker's state belongs to its
loop), so there is no second bookkeeping and nothing to fall out of date.

The endpoint is plain HTTP without authentication: it binds to loopback unless told
otherwise, and the metrics carry counts and times only, never a dataset's spec or a path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import ipaddress
from typing import Callable, Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from ..errors import ConfigError
from .stats import HistogramStats, Snapshot

SCRAPE_TIMEOUT_S = 5.0   # a scrape waits this long for the broker's loop to take a snapshot
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")

# the service's counters (``status --json``, key ``counters``): what each one counts
_COUNTER_HELP = {
    "accepted": "client requests that passed the service's checks",
    "decode_errors": "client requests refused because they did not decode (msgpack, version, kind, field)",
    "invalid_messages": "client requests refused for their frame count or kind",
    "dropped": "client requests dropped unanswered (over the client's rate, or from an ignored client)",
    "clients_disconnected": "clients ignored for a while after repeated bad requests",
    "handler_errors": "client requests whose handling raised (answered, the service went on)",
    "unauthorised": "messages on a TCP connection whose CURVE key was revoked",
    "actor_bad_messages": "messages from actors dropped as not fitting their job",
}


def families(snap: Snapshot) -> Iterator[Metric]:
    """Every metric of one snapshot."""
    totals = snap.totals
    yield _counter("leptonrt_steps_total", "global training steps committed (a step replayed after a loss "
                                           "counts again)", totals.steps)
    yield _counter("leptonrt_samples_total", "training rows in the committed steps", totals.samples)
    yield _histogram("leptonrt_step_seconds", "wall time of a committed step (its slowest member's)",
                     totals.step_seconds)
    yield _histogram("leptonrt_allreduce_seconds", "time of a committed step's gradient sum, for the member "
                                                   "that reached it last (the others also wait there)",
                     totals.allreduce_seconds)
    yield _counter("leptonrt_regroups_total", "times a job's gradient group re-formed", totals.regroups)
    yield _counter("leptonrt_replayed_steps_total", "steps trained again after a loss", totals.replayed_steps)
    yield from _actors(snap)
    jobs = GaugeMetricFamily("leptonrt_jobs", "jobs the broker holds, by state", labels=["state"])
    counts = {"queued": len(snap.queued), "running": int(snap.job is not None), "done": snap.jobs_done,
              "failed": snap.jobs_failed, "cancelled": snap.jobs_cancelled}
    for state in JOB_STATES:
        jobs.add_metric([state], counts[state])
    yield jobs
    for name, value in sorted(snap.counters.items()):
        metric = f"leptonrt_{name}_total" if name.startswith("actor_") else f"leptonrt_service_{name}_total"
        yield _counter(metric, _COUNTER_HELP.get(name, f"the broker's {name} counter"), value)
    yield GaugeMetricFamily("leptonrt_start_time_seconds", "when the broker started, unix time",
                            value=snap.started_at)


def _actors(snap: Snapshot) -> Iterator[Metric]:
    labels = ["actor", "device"]
    share = GaugeMetricFamily("leptonrt_actor_share", "the actor's fraction of the global batch now", labels=labels)
    compute = CounterMetricFamily("leptonrt_actor_compute_seconds_total",
                                  "the actor's compute (before the gradient sum) in committed steps", labels=labels)
    restarts = CounterMetricFamily("leptonrt_actor_restarts_total", "times the actor's process was replaced",
                                   labels=labels)
    memory = GaugeMetricFamily("leptonrt_actor_memory_bytes", "the actor's device memory, as the live view shows "
                                                              "it (GPU actors only)", labels=labels)
    seconds = snap.totals.compute_seconds
    for actor in snap.actors:
        key = [str(actor.rank), actor.device]
        share.add_metric(key, actor.share)
        compute.add_metric(key, seconds[actor.rank] if actor.rank < len(seconds) else 0.0)
        restarts.add_metric(key, actor.restarts)
        if actor.memory_bytes is not None:
            memory.add_metric(key, actor.memory_bytes)
    yield from (share, compute, restarts, memory)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


def _histogram(name: str, help_text: str, stats: HistogramStats) -> HistogramMetricFamily:
    buckets, running = [], 0
    for bound, count in zip(stats.bounds, stats.counts):
        running += count
        buckets.append((repr(float(bound)), running))
    buckets.append(("+Inf", stats.count))   # Prometheus buckets are cumulative, ending at +Inf
    return HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=stats.total)


class SnapshotCollector:
    """Asks for a snapshot at each scrape."""

    def __init__(self, take: Callable[[], Snapshot]) -> None:
        self.take = take

    def collect(self) -> Iterator[Metric]:
        yield from families(self.take())


def on_loop(loop: asyncio.AbstractEventLoop, take: Callable[[], Snapshot]) -> Callable[[], Snapshot]:
    """``take``, callable from any thread: it runs on ``loop`` and the caller waits for it."""
    def call() -> Snapshot:
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(take())
            except BaseException as exc:   # the scrape fails with it (HTTP 500); the broker goes on
                future.set_exception(exc)
        loop.call_soon_threadsafe(run)
        return future.result(SCRAPE_TIMEOUT_S)
    return call


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetricsServer:
    """``http://HOST:PORT/metrics`` (any path answers) from a thread of its own, until closed."""

    def __init__(self, take: Callable[[], Snapshot], host: str, port: int) -> None:
        self.host, self.port = host, port
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(SnapshotCollector(take))
        self._server = self._thread = None

    def start(self) -> "MetricsServer":
        """Bind and serve; a port in use (or any address we cannot bind) is a ConfigError."""
        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self._registry)
        except OSError as exc:
            where = f"{self.host}:{self.port}"
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"--metrics-port {self.port}: {where} is in use; pick another port") from None
            raise ConfigError(f"cannot serve metrics on {where}: {exc.strerror or exc}") from None
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None
