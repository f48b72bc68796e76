"""What a job's core hands its shell: typed effects, and the events a job's owner sees.

The core decides; the shell only carries out its effects, in order: ``Send`` a message to
an actor, ``Kill`` a process taken for hung, ``Respawn`` a lost actor, ``Pin`` an actor to
cores (lent while others are on standby), ``Emit`` an event to whoever follows the job (``job.events()``, the live view, a remote client).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..messages import Message


@dataclass(frozen=True)
class Send:
    identity: bytes   # ROUTER identity of the receiver
    message: Message


@dataclass(frozen=True)
class Kill:
    actor_id: str     # SIGKILL it (taken for hung, or unreachable); its exit follows as usual


@dataclass(frozen=True)
class Respawn:
    actor_id: str     # start it again (adopt the spare if one fits)


@dataclass(frozen=True)
class Pin:
    actor_id: str            # move every thread of it onto these cores (before its Regroup
    cores: tuple[int, ...]   # tells it how many threads to run)


@dataclass(frozen=True)
class Emit:
    event: object     # an EpochEvent, Progress, SplitChanged, ActorLost, Recovered or Benched


Effect = Union[Send, Kill, Respawn, Pin, Emit]


@dataclass(frozen=True)
class EpochEvent:
    """An epoch finished: its metrics, as the group's leader measured them."""

    epoch: int               # 1-based
    epochs: int              # total epochs of the job
    train_loss: float        # mean loss over the epoch's training samples
    test_loss: float         # mean loss on the test split
    test_accuracy: float     # fraction correct on the test split
    seconds: float           # wall time of the epoch's training steps
    samples_per_s: float     # training samples per second in this epoch
    shares: tuple[float, ...]  # fraction of the global batch each rank trained


@dataclass(frozen=True)
class Progress:
    """How far the job is, between epochs: what the committed steps trained (a progress bar's)."""

    epoch: int               # 1-based: the epoch under way (or, at its last step, just ended)
    epochs: int              # total epochs of the job
    step: int                # steps committed
    total_steps: int         # steps in the whole job
    samples: int             # training samples in the committed steps
    total_samples: int       # training samples in the whole job


@dataclass(frozen=True)
class SplitChanged:
    """The rebalancer moved rows between actors; the new split applies from ``step`` on
    (sooner if the members agree on it before their grants end)."""

    step: int                  # first global step that may use the new split
    split: tuple[int, ...]     # rows per rank
    predicted_gain: float      # fraction of step time it is expected to save, at least
    reason: str = ""           # why, for people: "rank 1 slowed 2.0x", "imbalance 12%"


@dataclass(frozen=True)
class ActorLost:
    """An actor died or hung during the job; a replacement is being started."""

    rank: int
    how: str                   # "exit code 17", "killed by SIGKILL", "taken for hung, then killed by SIGKILL"
    committed: int             # the last committed step when it was lost

    def describe(self) -> str:
        return f"rank {self.rank} lost ({self.how}) after step {self.committed}; the rest go on, a replacement is starting"


@dataclass(frozen=True)
class Recovered:
    """The group re-formed; training goes on from ``rewind_step``: without a lost actor
    (the survivors replay what was not committed), with a replacement that rejoins, or with
    the members the rebalancer chose."""

    generation: int
    rewind_step: int
    replayed_steps: int        # steps some actor had done that are trained again (the job's total so far)
    members: tuple[int, ...] = ()   # ranks in the new group
    joined: tuple[int, ...] = ()    # ranks that (re)joined it at this boundary

    def describe(self) -> str:
        ranks = ",".join(map(str, self.members))
        if self.joined:
            return (f"rank {','.join(map(str, self.joined))} joined at step {self.rewind_step} "
                    f"(ranks {ranks} train)")
        return (f"regrouped as ranks {ranks}; replaying from step {self.rewind_step} "
                f"({self.replayed_steps} steps trained again in all)")


@dataclass(frozen=True)
class Benched:
    """The rebalancer took actors out of the gradient group (standby): what their rows save
    is less than what their place in the collective costs everyone."""

    step: int                  # the boundary it takes effect at
    ranks: tuple[int, ...]     # the actors on standby from then on
    members: tuple[int, ...]   # the group that trains on
    reason: str

    def describe(self) -> str:
        return f"rank {','.join(map(str, self.ranks))} on standby from step {self.step} ({self.reason})"
