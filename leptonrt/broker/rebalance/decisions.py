"""What the rebalancer decides (a Move, a Regroup) and what it reports of its models."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Move:
    """A new split inside the same gradient group."""

    split: tuple[int, ...]        # rows per rank, len == world, 0 for non-members; sums to batch
    saving_s: float               # confidence-bounded saving per step it was judged on (s)
    horizon: int                  # steps it was weighed over
    cost_s: float                 # the cost of acting it beat (s)
    reason: str                   # short, for people: "rank 1 slowed 2.0x", "imbalance 12%"


@dataclass(frozen=True)
class Regroup:
    """A change of membership (standby or re-admission)."""

    members: tuple[int, ...]      # ranks of the new gradient group, ascending
    split: tuple[int, ...]        # its split (0 for ranks outside it)
    saving_s: float               # confidence-bounded saving per step it was judged on (s)
    horizon: int                  # steps it was weighed over
    cost_s: float                 # the cost of acting it beat (s): a regroup's and a move's
    reason: str                   # short, for people: "rank 1 to standby", "rank 1 re-admitted"
    expected_s: float = 0.0       # expected saving per step (s): when to act, once acting is decided


@dataclass(frozen=True)
class Cores:
    """The same group and split, with a member on other cores: those of actors on standby
    given back, or taken again (``broker.cores``)."""

    declined: tuple[int, ...]     # members to run on their own cores only, lent none, ascending
    saving_s: float               # confidence-bounded saving per step it was judged on (s)
    horizon: int                  # steps it was weighed over
    cost_s: float                 # the cost of acting it beat (s): moving onto other cores, or a try's
    reason: str                   # short, for people: "rank 0 gives back the cores lent to it"


@dataclass(frozen=True)
class RankStatistics:
    """What the rebalancer knows of one actor's compute."""

    rank: int
    a_s: float                    # fixed seconds per step
    c_s: float                    # seconds per row
    a_sd_s: float                 # sd of a
    c_sd_s: float                 # sd of c
    noise: float                  # relative noise of one step (sd / mean)
    observations: int             # steps fitted
    changes: int                  # changes of regime detected


@dataclass(frozen=True)
class RebalanceStatistics:
    ranks: tuple[RankStatistics, ...]
    collective: tuple[tuple[int, float, float], ...]   # (group size, mean s, sd of the mean s)
    moves: int                    # Moves decided
    regroups: int                 # Regroups decided
    move_cost_s: float            # what a move costs, as now estimated (s)
    regroup_cost_s: float         # what a regroup costs, as now estimated (s)
    steps: int                    # complete steps seen (every member of the group reported)
