"""What a job's owner reads of its core: how far it is, one statistics record, the result.

Pure, like the core it is part of (a mixin of ``JobCore``: it reads the core's roster,
ledger, splits and epochs, and changes nothing).
"""

from __future__ import annotations

from ..messages import EpochResult
from .events import Progress
from .lifecycle import JobState
from .stats import JobStatistics


class JobFigures:
    """The ``JobCore``'s queries."""

    def committed(self) -> int:
        """The last step every member of the group has reported (start_step - 1 before any)."""
        return self.ledger.committed

    def drained(self) -> bool:
        """Every member has trained every step it was granted (meaningful once interrupted)."""
        return self.state == JobState.RUNNING and self.committed() + 1 >= self.grants.granted

    def identities(self) -> list[bytes]:
        """ROUTER identities of every actor that said hello (members and standby alike)."""
        return self.roster.identities()

    @property
    def failure(self) -> str | None:
        return "; ".join(self.problems) or None

    @property
    def epochs_done(self) -> int:
        return len(self._epochs)

    @property
    def last_epoch(self) -> EpochResult | None:
        return self._epochs[-1] if self._epochs else None

    def samples_done(self) -> int:
        """Training samples in the committed steps."""
        epochs, steps = divmod(self.committed() + 1, self.steps_per_epoch)
        return epochs * self.n_train + min(steps * self.batch, self.n_train)

    def progress(self) -> Progress:
        """How far the committed steps have come (the shell reports it every so often)."""
        done = self.committed() + 1
        epochs = self.job.job.epochs
        return Progress(epoch=min(done // self.steps_per_epoch + 1, epochs), epochs=epochs, step=done,
                        total_steps=self.total_steps, samples=self.samples_done(),
                        total_samples=epochs * self.n_train)

    def statistics(self) -> JobStatistics:
        """One immutable record of the job now (the live view, status --json and tests read it)."""
        slots = tuple(s.statistics(self.splits.current[s.rank] / self.batch, s.rank in self._benched)
                      for s in self.roster.ranked())
        return JobStatistics(state=self.state.value, generation=self.generation, committed=self.committed(),
                             total_steps=self.total_steps, replayed_steps=self.replayed_steps,
                             rebalances=self.rebalances, regroups=self.regroups, bad_messages=self.bad_messages,
                             history_digest=self.ledger.digest(), slots=slots, step_ms=self.step_ms.points(),
                             step_ms_every=self.step_ms.every, losses=self.losses.points(),
                             last_change=self.last_change)

    def result(self) -> dict:
        """The job's final figures (meaningful once done)."""
        last = self._epochs[-1] if self._epochs else None
        steady = self._epochs[1:] or self._epochs  # the first epoch pays for warm-up
        seconds = sum(e.seconds for e in steady)
        trained = self.committed() + 1
        changes = self.splits.changes(trained)
        final = self.splits.at(max(trained - 1, self.start_step))
        return {
            "test_accuracy": last.test_accuracy if last else None,
            "test_loss": last.test_loss if last else None,
            "train_loss": last.train_loss if last else None,
            "epochs": len(self._epochs),
            "steps": trained,
            "wall_s": (self.ended_at or 0.0) - (self.started_at or 0.0),
            "samples_per_s": self.n_train * len(steady) / seconds if seconds > 0 else None,
            "rebalances": sum(c.why == "rebalance" for c in changes),
            "regroups": self.regroups,
            "cores_changes": self.cores_changes,
            "replayed_steps": self.replayed_steps,
            "history_digest": self.ledger.digest(),
            "split_changes": [{"step": c.first, "split": list(c.split), "why": c.why} for c in changes],
            "actors": [s.result(final[s.rank] / self.batch, len(self._pinned.get(s.rank, ())) or s.threads)
                       for s in self.roster.ranked()],
        }
