"""The rebalancer's parameters: six, each a statement with a unit (the alignment is the user's)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RebalanceConfig:
    forgetting: float = 0.99      # per-step weight of the past in every fit: the fit's memory is
                                  # about 1 / (1 - forgetting) = 100 steps
    false_alarm: float = 1e-6     # probability per actor and step that the change test fires on
                                  # pure noise (its average run length is 1 / false_alarm steps)
    confidence: float = 0.99      # probability that a decision saves at least the bounded saving
                                  # it was judged on (jointly over the actors involved)
    horizon: int = 1000           # steps a decision's saving is counted over, at most (what is
                                  # left of the job, when less)
    move_cost_steps: float = 0.2  # prior cost of a move, in steps at the current split, until
                                  # moves are measured (counts as one measurement)
    regroup_cost_s: float = 0.5   # prior wall cost of a regroup (s), until the broker measures
                                  # one (forming the first group is the first measurement)
