"""Lifecycles as tables (``tables.Table``): the job's, and each actor slot's within a job.

::

    job:   gathering --all_said_hello--> running --last_step_committed--> stopping
           stopping --all_finished--> done
           gathering | running | stopping --failed--> failed

    slot:  starting --said_hello--> ready --welcomed--> joining --reported--> training
           joining | training --regrouped--> joining      (the group re-forms with it)
           joining | training --benched--> standby        (out of the group: it costs more than it gives)
           ready | standby --welcomed--> joining           (a replacement, or a re-admission)
           joining | training --stopped--> finished
           any state but lost --exited--> lost --respawned--> starting
"""

from __future__ import annotations

from enum import Enum

from ..tables import Table


class JobState(Enum):
    GATHERING = "gathering"   # waiting for every actor's hello
    RUNNING = "running"       # granting and committing steps
    STOPPING = "stopping"     # every step committed; waiting for the members to finish
    DONE = "done"
    FAILED = "failed"


class SlotState(Enum):
    STARTING = "starting"     # its process is starting (or a replacement's is)
    READY = "ready"           # said hello; not in the group yet
    JOINING = "joining"       # welcomed or regrouped: forming the group (silent meanwhile)
    TRAINING = "training"     # a member that has reported since it joined
    STANDBY = "standby"       # alive and in the job, out of the gradient group
    FINISHED = "finished"     # a member that stopped at the job's end
    LOST = "lost"             # its process ended (a replacement may follow)


_ALIVE = (SlotState.STARTING, SlotState.READY, SlotState.JOINING, SlotState.TRAINING, SlotState.STANDBY,
          SlotState.FINISHED)

JOB = Table("job", {
    (JobState.GATHERING, "all_said_hello"): JobState.RUNNING,
    (JobState.RUNNING, "last_step_committed"): JobState.STOPPING,
    (JobState.STOPPING, "all_finished"): JobState.DONE,
    **{(state, "failed"): JobState.FAILED for state in (JobState.GATHERING, JobState.RUNNING, JobState.STOPPING)},
})

SLOT = Table("actor slot", {
    (SlotState.STARTING, "said_hello"): SlotState.READY,
    (SlotState.READY, "welcomed"): SlotState.JOINING,
    (SlotState.STANDBY, "welcomed"): SlotState.JOINING,
    (SlotState.JOINING, "reported"): SlotState.TRAINING,
    (SlotState.TRAINING, "reported"): SlotState.TRAINING,
    (SlotState.JOINING, "regrouped"): SlotState.JOINING,
    (SlotState.TRAINING, "regrouped"): SlotState.JOINING,
    (SlotState.JOINING, "benched"): SlotState.STANDBY,
    (SlotState.TRAINING, "benched"): SlotState.STANDBY,
    (SlotState.JOINING, "stopped"): SlotState.FINISHED,
    (SlotState.TRAINING, "stopped"): SlotState.FINISHED,
    (SlotState.LOST, "respawned"): SlotState.STARTING,
    **{(state, "exited"): SlotState.LOST for state in _ALIVE},
})

MEMBER_STATES = frozenset({SlotState.JOINING, SlotState.TRAINING, SlotState.FINISHED})
