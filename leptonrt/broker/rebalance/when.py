"""When a decided change of membership is made: once the old group has trained what it was
granted, or at once from the newest snapshot. Pure; the job's core asks it
(``broker.regroup``), and the simulator makes its regroups by it, so it is judged there
against its alternative."""

from __future__ import annotations


def cut_short_pays(step_s: float | None, saving_s: float, waiting: int, replay: int) -> bool:
    """Whether to re-form now, from the newest snapshot.

    Waiting forgoes the change's saving on each of the ``waiting`` steps granted and not yet
    trained; cutting short throws away the ``replay`` steps trained since the snapshot and
    trains them again on the new group, whose step is the measured one (``step_s``) less that
    saving. The change itself was decided on a bounded saving; when to make it is a choice
    between two costs of the same change, so it is made on the expected saving (``saving_s``).
    One with none expected (a trial undone, a memory cap) waits."""
    if step_s is None or saving_s <= 0:
        return False
    return replay * max(step_s - saving_s, 0.0) < waiting * saving_s
