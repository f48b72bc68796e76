"""Which cores a member runs on, where actors on standby lend theirs (``broker.cores``): the
same members at the same split, one of them on other cores, weighed by the rebalancer's one
rule, or tried. A mixin of ``policy.Rebalancer``: the same models (one per rank and thread
count, ``measure.Measurements``), the same rule of saving against cost."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from .bound import bounded_savings, slowest
from .learning import Candidate
from .split import finish_times, finish_vars
from .trial import MIN_JUDGED

_NORMAL = NormalDist()
TRIED = " (a trial: measured before it is kept)"   # what a try adds to its decision's reason


class LentCores:
    """Cores given back or taken (see the module's docstring)."""

    def _best_cores(self, ranks, rows, base, horizon) -> Candidate | None:
        """The same members at the same split, one of them on the other cores it could run on
        (``_other_cores``): the one with the largest bounded saving over the horizon beyond
        what moving onto other cores costs (a member's threads change between two steps; its
        first steps there run slow, measured as a move's are, a move's prior until then).

        Cores change more than compute (the optimizer's step runs on them too, and the broker
        shares the machine), so this is judged by a model of each member's own part of the step:
        all of it but the wait for the others and the collective. The bound needs a model of
        the member on those cores at these rows, and a fair one:
        one measured while the actors shared the machine in a larger group looks slower than
        the member alone is. So other cores are also *tried*: cores never run on, at their
        best case (compute scaling with the cores: more cannot do better), against going there
        and back and the steps until the member is measured there, as much slower as they were
        expected to be faster (as trials are weighed, ``learning.py``); cores run on before, when
        what trying them is expected to gain pays for what it is expected to lose, the saving
        read as Gaussian from the two models (``_try_pays``). Once tried, the member is measured
        on both, alone, at these rows, and the bound decides."""
        own = self._m.own_view(ranks)
        if own is None:
            return None
        base = slowest(ranks, own, rows)   # what the cores change: each member's own part of the step
        best, cost = None, self._m.cores_cost_s()
        lasting = self._lasting(ranks, ranks, base, horizon)
        for declined, rank, threads in self._other_cores(ranks):
            other = self._m.own_view(ranks, self._lending.threads(ranks.tolist(), declined=declined))
            if other is not None:
                chosen = self._known_cores(ranks, rows, base, other, declined, lasting, cost)
            else:
                chosen = self._new_cores(ranks, rows, base, own, declined, rank, threads, lasting, cost)
            if chosen is not None and (best is None or chosen.net() > best.net()):
                best = chosen
        return best

    def _known_cores(self, ranks, rows, base, theta, declined, lasting, cost) -> Candidate | None:
        """Other cores the member ran on before (``theta``: the members' own parts of the
        step there): the bounded saving, or else a try when it pays (``_try_pays``)."""
        saving = float(bounded_savings(base, ranks, theta, rows, rows, self.config.confidence)[0])
        if lasting * saving > cost:
            return Candidate(ranks, rows, saving, cost, lasting, declined=declined)
        if not self._judged(ranks):
            return None
        after = finish_times(theta[0], theta[1], rows)
        slowest_then = int(np.argmax(after))
        mean = base.mean - float(after[slowest_then])
        paid = self._try_pays(mean, math.sqrt(base.var + float(finish_vars(theta, rows)[slowest_then])), lasting, cost)
        return None if paid is None else Candidate(ranks, rows, paid[0], paid[1], lasting, TRIED, declined=declined)

    def _new_cores(self, ranks, rows, base, own, declined, rank, threads, lasting, cost) -> Candidate | None:
        """Cores the member never ran on: a try, at the best case (its own part of the step
        divided by the ratio of the cores), when that pays for a failed one (``_best_cores``)."""
        if not self._judged(ranks):
            return None
        at = int(np.flatnonzero(ranks == rank)[0])
        finish = finish_times(own[0], own[1], rows)
        alone = finish[at] * min((self._m.threads[rank] or 1) / threads, 1.0)
        best_case = base.mean - float(max(np.max(np.delete(finish, at), initial=0.0), alone))
        worst = 2 * cost + self._trials.steps_at_stake(MIN_JUDGED) * best_case
        if lasting * best_case <= worst:
            return None
        return Candidate(ranks, rows, best_case, worst, lasting, TRIED, declined=declined)

    def _judged(self, ranks: np.ndarray) -> bool:
        """Whether every member was measured on the cores it runs on now for as many steps as a
        try runs before it is judged (so no try undoes one unjudged)."""
        return all(self._m.on_threads(r) >= self._trials.steps_at_stake(MIN_JUDGED) for r in ranks.tolist())

    def _try_pays(self, mean: float, sd: float, lasting: int, cost: float) -> tuple[float, float] | None:
        """(gain per step, worst cost) of trying a change whose saving per step is Gaussian
        (``mean``, ``sd``), when it pays: the expected positive part of the saving, kept for
        ``lasting`` steps, beats two moves' ``cost`` and the expected negative part over the
        steps a try runs before it is judged; None otherwise."""
        if sd <= 0:
            return (mean, 2 * cost) if lasting * mean > 2 * cost else None
        z = mean / sd
        gain = mean * _NORMAL.cdf(z) + sd * _NORMAL.pdf(z)     # E[max(saving, 0)]
        loss = gain - mean                                      # E[max(-saving, 0)]
        worst = 2 * cost + self._trials.steps_at_stake(MIN_JUDGED) * loss
        return (gain, worst) if lasting * gain > worst else None

    def _other_cores(self, ranks: np.ndarray) -> list[tuple[frozenset[int], int, int]]:
        """(declined set, rank, its threads then) for each member of ``ranks`` that could run
        on other cores: on lent cores giving them back, or on its own taking those of the
        actors on standby."""
        if self._lending is None or len(ranks) == self.world or self._asked is not None:
            return []   # (not while a change of cores is decided and not yet made)
        members = ranks.tolist()
        now = self._lending.threads(members, declined=self.declined)
        out = []
        for rank in members:
            other = self.declined ^ {rank}
            threads = self._lending.threads(members, declined=other).get(rank)
            if threads is not None and threads != now.get(rank):
                out.append((other, rank, threads))
        return out
