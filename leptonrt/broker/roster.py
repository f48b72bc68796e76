"""Who is who in one job: a slot per rank, the actor process that holds it now, and the group.

Pure: no I/O, no clock. The job core owns one ``Roster``; a slot's state moves only through
``lifecycle.SLOT``. What a group of these devices sums its gradients with is decided here
too, from what the actors said in their hellos.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from statistics import median

from ..messages import Finished, Hello, Message
from .lifecycle import MEMBER_STATES, SlotState
from .stats import SlotStatistics


@dataclass
class Slot:
    """One rank of the job and the actor process that holds it now."""

    actor_id: str
    rank: int
    threads: int
    state: SlotState = SlotState.STARTING
    identity: bytes | None = None
    hello: Hello | None = None
    seen: Hello | None = None  # the last hello this rank ever sent (its device, while a replacement starts)
    last_step: int = -1        # the last step it reported in the current group
    last_heard: float = 0.0
    compute: deque = field(default_factory=lambda: deque(maxlen=64))   # recent compute seconds per step
    restarts: int = 0
    has_state: bool = True     # holds the training state (a replacement: once it has trained a step)
    killed: bool = False       # taken for hung or unreachable; its exit is awaited
    finished: Finished | None = None

    @property
    def member(self) -> bool:
        return self.state in MEMBER_STATES

    def statistics(self, share: float, standby: bool) -> SlotStatistics:
        return SlotStatistics(rank=self.rank, actor_id=self.actor_id, state=self.state.value, share=share,
                              compute_ms=median(self.compute) * 1000 if self.compute else None,
                              restarts=self.restarts, member=self.member, standby=standby)

    def result(self, share: float, threads: int) -> dict:
        """This rank's part of the job's result (``share``: of the batch, at the last step;
        ``threads``: the CPU threads it ran at the end)."""
        fin, hello, seen = self.finished, self.hello, self.seen
        return {
            "rank": self.rank,
            "device": seen.device if seen else None,
            "device_name": seen.device_name if seen else None,
            "pid": hello.pid if hello else None,   # None: its replacement never said hello
            "share": share,
            "samples_per_s": fin.samples / fin.seconds if fin and fin.seconds > 0 else None,
            "restarts": self.restarts,
            "in_group": self.member,
            "standby": self.state == SlotState.STANDBY,
            "threads": threads,
        }


class Roster:
    """The slots of one job, by actor id, by ROUTER identity and by rank."""

    def __init__(self, actor_ids: list[str], threads: list[int], start_step: int) -> None:
        self._slots = [Slot(a, r, t, last_step=start_step - 1) for r, (a, t) in enumerate(zip(actor_ids, threads))]
        self._by_actor = {s.actor_id: s for s in self._slots}
        self._by_identity: dict[bytes, Slot] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def actor(self, actor_id: str) -> Slot | None:
        return self._by_actor.get(actor_id)

    def sender(self, identity: bytes) -> Slot | None:
        return self._by_identity.get(identity)

    def known(self, identity: bytes) -> bool:
        return identity in self._by_identity

    def identities(self) -> list[bytes]:
        """ROUTER identities of every actor that said hello (members and standby alike)."""
        return list(self._by_identity)

    def said_hello(self, slot: Slot, identity: bytes, hello: Hello, now: float) -> None:
        slot.identity, slot.hello, slot.seen, slot.last_heard = identity, hello, hello, now
        self._by_identity[identity] = slot

    def forget(self, slot: Slot) -> None:
        """Its process is gone: it holds no identity and no state until a replacement says hello."""
        if slot.identity is not None:
            self._by_identity.pop(slot.identity, None)
        slot.identity, slot.hello, slot.killed, slot.has_state = None, None, False, False
        slot.compute.clear()

    def ranked(self) -> list[Slot]:
        return list(self._slots)

    def members(self) -> list[Slot]:
        """The gradient group, by rank."""
        return [s for s in self._slots if s.member]

    def leader(self) -> Slot:
        """The lowest member: it evaluates for the job, writes checkpoints and the weights."""
        return self.members()[0]

    def waiting(self, benched: set[int]) -> list[Slot]:
        """Replacements that said hello and may join (not kept out on standby)."""
        return [s for s in self._slots if s.state == SlotState.READY and s.rank not in benched]

    def all_said_hello(self) -> bool:
        return all(s.hello is not None for s in self._slots)

    def any_starting(self) -> bool:
        return any(s.state == SlotState.STARTING for s in self._slots)

    def sender_matches(self, slot: Slot | None, msg: Message, job_id: int) -> bool:
        """The message speaks for the rank and job of the socket it came from."""
        if slot is None:
            return False
        return getattr(msg, "rank", slot.rank) == slot.rank and getattr(msg, "job_id", job_id) == job_id

    def gradient_sync(self) -> str:
        """A group of 2 to 4 CPU actors exchanges gradients point to point (one round of
        messages; gloo's ring all-reduce takes two, and on a few local processes latency is
        what costs); anything else uses the backend's all-reduce."""
        devices = [s.hello.device for s in self.members() if s.hello is not None]
        return "exchange" if 2 <= len(devices) <= 4 and all(d == "cpu" for d in devices) else "allreduce"

    def backend(self) -> str:
        """NCCL when every actor is a GPU; gloo (which also takes CUDA tensors) for mixed groups."""
        devices = [s.hello.device for s in self._slots if s.hello is not None]
        return "nccl" if devices and all(d.startswith("cuda") for d in devices) else "gloo"
