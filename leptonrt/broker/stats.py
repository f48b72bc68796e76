"""The broker's statistics snapshot: one immutable value that the live view, ``leptonrt
status --json`` and remote clients all read.

The broker builds a fresh ``Snapshot`` at most a few times a second; readers never see it
change under them. ``to_dict`` gives plain JSON/msgpack-safe data and ``from_dict``
rebuilds (and validates) it on the other side of a socket.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..errors import ProtocolError


@dataclass(frozen=True)
class ActorStats:
    """One actor as the broker last saw it."""

    rank: int
    device: str                      # "cpu" or "cuda:0" (the index on the host)
    device_name: str | None          # e.g. "NVIDIA H100 80GB HBM3"; None until the actor said hello
    pid: int | None
    state: str                       # starting | idle | training | lost | restarting | stopped
    share: float                     # fraction of the global batch (0.0 when idle)
    compute_ms: float | None         # median pure compute per step, recent window
    samples_per_s: float | None      # rows this actor trained per second, recent window
    memory_bytes: int | None         # the device's memory, as the actor said at hello (None on CPU)
    restarts: int = 0
    # what the broker measures of the process and its GPU (at most once a second; None: not known)
    cpu_percent: float | None = None      # CPU time over wall time since the last sample (100 = one core)
    rss_bytes: int | None = None          # resident memory of the process
    gpu_percent: float | None = None      # its GPU's utilisation (NVML; None without NVML or a GPU)
    gpu_memory_bytes: int | None = None   # memory in use on its GPU (NVML)
    gpu_power_w: float | None = None      # its GPU's power draw, watts (NVML)
    host: str = "local"                   # the host it runs on: a joined host's key name, else the head's hostname


@dataclass(frozen=True)
class JobStats:
    """The running job."""

    id: int
    dataset: str
    model: str                       # layer widths, e.g. "784-128-10"
    epoch: int                       # epochs finished
    epochs: int
    step: int                        # committed global steps
    total_steps: int
    samples_per_s: float | None
    train_loss: float | None         # last finished epoch
    test_accuracy: float | None      # last finished epoch
    eta_s: float | None
    started_at: float                # unix time
    simulated: str = ""              # non-empty when a slowdown is SIMULATED, e.g. "rank 1 x2"
    state: str = "running"           # running | stopping (it ends at the next step boundary)
    current_epoch: int = 0           # 1-based: the epoch the committed steps are in (0: not started)
    step_ms: tuple[float, ...] = ()  # the job's step times (ms), oldest first, each the mean of...
    step_ms_every: int = 1           # ...this many committed steps (the history is bounded)
    losses: tuple[float, ...] = ()   # training loss per finished epoch, oldest first (bounded likewise)
    change: str = ""                 # the latest split change and why, e.g. "0.62/0.38 from step 120: ..."


@dataclass(frozen=True)
class FinishedJob:
    """The job that ended last, shown until the next one starts."""

    id: int
    dataset: str
    state: str                       # done | failed | cancelled
    finished_at: float               # unix time
    wall_s: float
    test_accuracy: float | None = None
    samples_per_s: float | None = None
    history_digest: str = ""         # hex digest of the committed history (empty when it failed)
    error: str = ""                  # the first line of why it failed


@dataclass(frozen=True)
class QueuedJob:
    id: int
    dataset: str
    submitted_at: float              # unix time


@dataclass(frozen=True)
class JobEntry:
    """One job the broker was given, whatever its state (``leptonrt jobs``)."""

    id: int
    state: str                       # queued | running | done | failed | cancelled
    dataset: str
    submitted_at: float              # unix time
    step: int = 0                    # global steps committed (for an ended job, when it ended)
    total_steps: int | None = None   # None until the job has started


@dataclass(frozen=True)
class HistogramStats:
    """Observations counted into buckets: ``counts[i]`` fell at or below ``bounds[i]`` and
    above the bound before it; the last count is above every bound."""

    bounds: tuple[float, ...] = ()   # upper bounds, ascending, in the observations' unit
    counts: tuple[int, ...] = (0,)   # one more than bounds
    total: float = 0.0               # the sum of the observations

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class Totals:
    """What the broker has trained since it started, over every job (counts only grow)."""

    steps: int = 0                   # global steps committed (a step replayed after a loss counts again)
    samples: int = 0                 # training rows in those steps
    regroups: int = 0                # times a job's group re-formed
    replayed_steps: int = 0          # steps trained again after a loss
    step_seconds: HistogramStats = HistogramStats()        # a committed step's wall time (its slowest member's)
    allreduce_seconds: HistogramStats = HistogramStats()   # a committed step's gradient sum (its quickest member's)
    compute_seconds: tuple[float, ...] = ()                # by rank: pure compute in committed steps


@dataclass(frozen=True)
class Event:
    at: float                        # unix time
    text: str                        # "actor 1 joined (cuda:1)", "split 0.66/0.34 at step 120", ...


@dataclass(frozen=True)
class Snapshot:
    """Everything the live view shows, at one instant."""

    address: str
    started_at: float                # unix time the broker came up
    now: float                       # unix time of this snapshot
    state: str                       # serving | stopping
    job: JobStats | None
    queued: tuple[QueuedJob, ...] = ()
    actors: tuple[ActorStats, ...] = ()
    throughput: tuple[tuple[float, float], ...] = ()   # (unix time, samples/s), oldest first, last minute
    events: tuple[Event, ...] = ()                      # newest last
    jobs_done: int = 0
    jobs_failed: int = 0
    jobs_cancelled: int = 0
    jobs: tuple[JobEntry, ...] = ()                     # the newest ended jobs and every other one, by id
    totals: Totals = Totals()
    pid: int | None = None                              # the broker's process
    counters: dict = field(default_factory=dict)   # name -> count: rejected, dropped and failed messages, restarts
    cache: dict = field(default_factory=dict)      # the dataset cache: budget, bytes, entries (in use or not)
    last_job: FinishedJob | None = None            # the job that ended last
    starting: QueuedJob | None = None              # the job out of the queue whose data loads, actors join

    @property
    def uptime_s(self) -> float:
        return max(self.now - self.started_at, 0.0)

    def to_dict(self) -> dict:
        """Plain dicts, lists, numbers and strings (JSON and msgpack safe)."""
        out = asdict(self)
        out["throughput"] = [list(p) for p in self.throughput]
        return out

    @classmethod
    def from_dict(cls, data: object) -> "Snapshot":
        """Rebuild a snapshot received from a broker; a malformed one is a ProtocolError."""
        try:
            if not isinstance(data, dict):
                raise TypeError("not a map")
            d = dict(data)
            job, last, starting = d.pop("job", None), d.pop("last_job", None), d.pop("starting", None)
            return cls(
                jobs=tuple(_record(JobEntry, j) for j in d.pop("jobs", ())),
                totals=_totals(d.pop("totals", {})),
                job=_record(JobStats, job) if job is not None else None,
                queued=tuple(_record(QueuedJob, q) for q in d.pop("queued", ())),
                actors=tuple(_record(ActorStats, a) for a in d.pop("actors", ())),
                throughput=tuple((float(t), float(v)) for t, v in d.pop("throughput", ())),
                events=tuple(_record(Event, e) for e in d.pop("events", ())),
                counters={str(k): int(v) for k, v in dict(d.pop("counters", {})).items()},
                cache=dict(d.pop("cache", {})),
                last_job=_record(FinishedJob, last) if last is not None else None,
                starting=_record(QueuedJob, starting) if starting is not None else None,
                **{k: v for k, v in d.items() if k in _SCALARS},
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise ProtocolError(f"malformed status snapshot: {exc}") from None


def _totals(data: dict) -> Totals:
    d = dict(data)
    histograms = {name: HistogramStats(bounds=tuple(float(b) for b in h["bounds"]),
                                       counts=tuple(int(c) for c in h["counts"]), total=float(h["total"]))
                  for name in ("step_seconds", "allreduce_seconds") if (h := d.pop(name, None)) is not None}
    compute = tuple(float(c) for c in d.pop("compute_seconds", ()))
    known = {f.name for f in fields(Totals)}
    return Totals(**histograms, compute_seconds=compute, **{k: int(v) for k, v in d.items() if k in known})


_SCALARS = {f.name for f in fields(Snapshot)} - {"job", "queued", "actors", "throughput", "events", "counters", "cache",
                                                 "jobs", "totals", "last_job", "starting"}


def _record(kind: type, data: object):
    """``kind`` from a received map: lists become tuples, and keys this version does not
    know (a newer broker's additions) are left out rather than refused."""
    if not isinstance(data, dict):
        raise TypeError(f"{kind.__name__}: not a map")
    known = {f.name for f in fields(kind)}
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})


__all__ = ["ActorStats", "Event", "FinishedJob", "HistogramStats", "JobEntry", "JobStats", "QueuedJob", "Snapshot",
           "Totals"]


@dataclass(frozen=True)
class SlotStatistics:
    """One rank of a running job, as its core sees it."""

    rank: int
    actor_id: str
    state: str                       # starting | ready | joining | training | standby | finished | lost
    share: float                     # fraction of the global batch in the current split
    compute_ms: float | None         # median pure compute per step, recent window
    restarts: int
    member: bool                     # in the gradient group
    standby: bool                    # kept out of the group by the rebalancer


@dataclass(frozen=True)
class JobStatistics:
    """A running job's core, at one instant."""

    state: str                       # gathering | running | stopping | done | failed
    generation: int                  # how many times the group has formed again
    committed: int                   # the last committed step
    total_steps: int
    replayed_steps: int
    rebalances: int                  # splits the rebalancer decided
    regroups: int                    # times the group re-formed (losses, rejoins, standby)
    bad_messages: int                # messages from actors dropped as not fitting
    history_digest: str              # hex digest of the committed history
    slots: tuple[SlotStatistics, ...]
    step_ms: tuple[float, ...] = ()  # step times (ms), a bounded history (series.Series) of the whole job...
    step_ms_every: int = 1           # ...each point the mean of this many committed steps
    losses: tuple[float, ...] = ()   # training loss per finished epoch (bounded the same way)
    last_change: Change | None = None   # the latest split or membership change


@dataclass(frozen=True)
class Change:
    """A change of split or membership, and why, for people."""

    step: int                        # the first step of the new split
    split: tuple[int, ...]           # rows per rank (0 for one out of the group)
    reason: str                      # "rank 1 slowed 2.0x", "rank 1 to standby", "rank 0 lost", ...
