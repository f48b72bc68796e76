"""The committed history of one job: which rows of which epoch each committed step trained.

A step is committed when every member of the gradient group has reported it. Each report
names the piece of the global batch the member trained (positions ``[start, stop)``); at
commit the pieces must tile the batch exactly, no row twice and none left out, or the job
has broken its one promise and fails loudly. The history's digest (``batches.fold``) is
folded over the committed steps in order. A rewind (a lost member: the survivors go back
to a snapshot and train again) truncates the history to the snapshot's step, so the
digest always describes the lineage of the weights the group holds: equal between a run
with losses, regroups, rebalancing or a resume and one without, and different if any row
was trained twice or not at all.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..batches import batch_rows, fold, history_start, steps_per_epoch
from ..errors import InternalError
from ..messages import StepStat


class HistoryBroken(InternalError):
    """A committed step's pieces do not tile its batch: exactly-once would be broken."""


@dataclass(frozen=True)
class Committed:
    """One step every member has reported, with each member's measurement of it."""

    step: int
    stats: dict[int, StepStat]   # rank -> what it reported


class Ledger:
    """Reports in, committed steps out; the digest of the committed history."""

    def __init__(self, *, n_train: int, batch_size: int, seed: int, start_step: int = 0,
                 digest: bytes | None = None, snapshot_every: int = 8) -> None:
        self.n_train, self.batch_size, self.snapshot_every = n_train, batch_size, snapshot_every
        self.steps_per_epoch = steps_per_epoch(n_train, batch_size)
        self.committed = start_step - 1                # the last committed step
        self._digest = digest if digest is not None else history_start(seed, n_train, batch_size)
        self._at = {start_step: self._digest}          # step -> the digest of the history before it
        self._pending: dict[int, dict[int, StepStat]] = {}
        self.high_water = start_step - 1               # the furthest step any member reported

    def record(self, rank: int, stat: StepStat) -> None:
        """A member reported ``stat`` (steps already committed are a replay's, and ignored)."""
        if stat.step > self.committed:
            self._pending.setdefault(stat.step, {})[rank] = stat
            self.high_water = max(self.high_water, stat.step)

    def advance(self, members: list[int]) -> list[Committed]:
        """Commit, in order, every step that each of ``members`` has reported."""
        out = []
        while (reports := self._pending.get(self.committed + 1)) is not None and all(r in reports for r in members):
            step = self.committed + 1
            self._check_tiling(step, {r: reports[r] for r in members})
            self._digest = fold(self._digest, step, self.n_train, self.batch_size)
            self.committed = step
            del self._pending[step]
            if (step + 1) % self.snapshot_every == 0:
                self._at[step + 1] = self._digest   # a snapshot boundary: a rewind may go back to it
            out.append(Committed(step, {r: reports[r] for r in members}))
        return out

    def forget_before(self, step: int) -> None:
        """Boundaries before ``step`` are never rewound to any more."""
        for old in [s for s in self._at if s < step]:
            del self._at[old]

    def rewind(self, step: int) -> None:
        """The group goes back to the snapshot before ``step``: the history is truncated there."""
        if step not in self._at:
            raise InternalError(f"ledger: no boundary at step {step} to rewind to (have {sorted(self._at)})")
        self._digest, self.committed = self._at[step], step - 1
        self._pending.clear()

    def digest(self) -> str:
        """The digest of the committed history, hex."""
        return self._digest.hex()

    def _check_tiling(self, step: int, pieces: dict[int, StepStat]) -> None:
        rows = batch_rows(self.n_train, self.batch_size, step % self.steps_per_epoch)
        edge = 0
        for rank, stat in sorted(pieces.items(), key=lambda item: (item[1].start, item[1].stop)):
            if stat.start != edge or stat.stop < stat.start:
                break
            edge = stat.stop
        else:
            if edge == rows:
                return
        described = ", ".join(f"rank {r} [{s.start}, {s.stop})" for r, s in sorted(pieces.items()))
        raise HistoryBroken(f"step {step}: the members' pieces ({described}) do not tile its {rows} rows")
