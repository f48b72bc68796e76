"""Broker <-> actors: the messages of a job's lifecycle, and the rendezvous store's."""

from __future__ import annotations

from dataclasses import dataclass

from leptonrt.errors import ProtocolError
from leptonrt.wire import given, required

from .records import MAX_REPORT_STEPS, DatasetInfo, JobSpec, StepStat

# "allreduce": torch.distributed.all_reduce; "exchange": every member sends its gradients to
# every other (point-to-point) and all sum them in rank order (small CPU groups)
_SYNCS = frozenset({"allreduce", "exchange"})


@dataclass(frozen=True, slots=True)
class Hello:
    """Actor -> broker, the first message an actor sends."""
    actor_id: str = required(min_len=1, max_len=64)  # the actor's name for itself
    pid: int = required(min=1)  # OS process id of the actor
    device: str = required(min_len=1, max_len=32)  # device it runs on, e.g. "cpu", "cuda:0"
    device_name: str = required(max_len=256)  # human-readable device name; may be empty
    threads: int = required(min=1)  # CPU threads available to the actor
    memory_bytes: int = required(min=0)  # device memory in bytes
    bf16: bool  # whether the device computes in bf16


@dataclass(frozen=True, slots=True)
class Welcome:
    """Broker -> actor: the actor's place in a job."""
    rank: int = required(min=0)  # this actor's rank, below world_size
    world_size: int = required(min=1, max=4096)  # number of ranks in the job
    job: JobSpec  # what to train
    data: DatasetInfo  # where the dataset lies in shared memory
    steps_per_epoch: int = required(min=1)  # global steps in one epoch
    threads: int = required(min=1)  # CPU threads the actor should use
    backend: str = required(choices=frozenset({"gloo", "nccl"}))  # torch.distributed backend of the group
    collective_timeout_s: float = required(min=0.1, max=3600.0)  # a collective waiting this long fails
    generation: int = given(0, min=0)  # how many times the group has been re-formed
    start_step: int = given(0, min=0)  # first global step to train
    source_rank: int | None = given(None, min=0)  # rank that sends weights and optimizer state; None: init/resume
    resume_from: str | None = given(None, min_len=1, max_len=4096)  # the checkpoint (its step directory) to load first
    history: str = given("", max_len=64)  # hex digest of the history before start_step (a resumed job's)
    snapshot_every: int = given(8, min=1, max=1_000_000)  # in-memory snapshot every this many steps
    members: list[int] | None = given(None, min_len=1, max_len=4096, item_min=0)  # ranks in the gradient group; None: all
    gradient_sync: str = given("allreduce", choices=_SYNCS)  # how the group sums gradients
    save_path: str | None = given(None, min_len=1, max_len=4096)  # the leader writes the weights here at the end
    rows_by_value: int = given(0, min=0)  # >0: training rows (this many) come from its agent, data holds the test split

    def check(self) -> None:
        """A rank must index into the world, and belong to the group it is told to join."""
        if self.rank >= self.world_size:
            raise ProtocolError(f"rank {self.rank} is not below world_size {self.world_size}")
        _check_members(self.members, self.rank, self.world_size)


def _check_members(members: list[int] | None, rank: int, world_size: int) -> None:
    if members is None:
        return
    if members != sorted(set(members)) or members[-1] >= world_size:
        raise ProtocolError(f"members {members} are not distinct ascending ranks below world_size {world_size}")
    if rank not in members:
        raise ProtocolError(f"rank {rank} is not one of the members {members}")


@dataclass(frozen=True, slots=True)
class Grant:
    """Broker -> actors: steps [first_step, end_step) use this split of the global batch."""
    job_id: int = required(min=0)  # job the grant belongs to
    first_step: int = required(min=0)  # first global step covered
    end_step: int = required(min=1)  # one past the last global step covered
    split: list[int] = required(min_len=1, max_len=4096, item_min=0)  # rows per rank, by rank
    committed: int = given(-1, min=-1)  # the last step every actor has reported (older snapshots may go)
    version: int = given(0, min=0)  # the broker numbers its splits; a newer one wins (see Resplit)

    def check(self) -> None:
        """An empty or backwards step range is never meant."""
        if self.end_step <= self.first_step:
            raise ProtocolError(
                f"end_step {self.end_step} is not above first_step {self.first_step}"
            )


@dataclass(frozen=True, slots=True)
class Reports:
    """Actor -> broker: measurements of the steps since the last report."""
    job_id: int = required(min=0)  # job the steps belong to
    rank: int = required(min=0)  # rank that measured them
    steps: list[StepStat] = required(max_len=MAX_REPORT_STEPS)  # one entry per step, oldest first
    memory_bytes: int = required(min=0)  # device memory in use now (0 on CPU: not tracked)
    queued: int = required(min=0)  # granted steps not yet run
    generation: int = given(0, min=0)  # the group generation the steps ran in


@dataclass(frozen=True, slots=True)
class EpochResult:
    """Actor (rank 0) -> broker: the outcome of one epoch."""
    job_id: int = required(min=0)  # job the epoch belongs to
    rank: int = required(min=0)  # rank that reports it
    epoch: int = required(min=0)  # epoch index, from 0
    train_loss: float = required(allow_nonfinite=True)  # mean training loss; NaN if diverged
    test_loss: float = required(allow_nonfinite=True)  # mean test loss; NaN if diverged
    test_accuracy: float = required(min=0.0, max=1.0)  # fraction of test rows right
    seconds: float = required(min=0.0)  # wall time of the epoch
    generation: int = given(0, min=0)  # the group generation it ran in


@dataclass(frozen=True, slots=True)
class Stop:
    """Broker -> actors: finish the job now."""
    job_id: int = required(min=0)  # job to stop
    save: bool = given(False)  # the leader writes the weights to the Welcome's save_path


@dataclass(frozen=True, slots=True)
class Finished:
    """Actor -> broker: the actor has stopped working on the job."""
    job_id: int = required(min=0)  # job that finished
    rank: int = required(min=0)  # rank that reports it
    samples: int = required(min=0)  # training rows this rank processed
    seconds: float = required(min=0.0)  # wall time this rank spent on the job
    saved: bool  # whether this rank wrote the weights
    digest: str = given("", max_len=64)  # hex digest of the history its weights trained (batches.fold)


@dataclass(frozen=True, slots=True)
class Failure:
    """Actor -> broker: the job failed on this actor."""
    job_id: int = required(min=0)  # job that failed
    rank: int = required(min=0)  # rank it failed on
    message: str = required(max_len=65536)  # what went wrong, for a person to read
    exit_code: int = given(1, min=1, max=255)  # 78: the job's own settings or code are unusable (no restart helps)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Actor -> broker: still alive and where it is."""
    rank: int = required(min=0)  # rank of the sender
    step: int = required(min=0)  # global step it is working on


@dataclass(frozen=True, slots=True)
class GroupFailed:
    """Actor -> broker: my collective failed though nobody told me of a loss; regroup us."""
    job_id: int = required(min=0)
    rank: int = required(min=0)
    generation: int = required(min=0)  # the generation whose collective failed
    message: str = required(max_len=4096)


@dataclass(frozen=True, slots=True)
class Resplit:
    """Broker -> the group's actors: a new split, sooner than the granted steps end. The
    members switch to it together, from the step after the one whose gradient sum shows
    that every member has it (until then, and for any member that missed it, the grants'
    splits stand)."""
    job_id: int = required(min=0)
    generation: int = required(min=0)  # the group it is for
    version: int = required(min=1)  # above every version granted before it
    split: list[int] = required(min_len=1, max_len=4096, item_min=0)  # rows per rank, by rank


@dataclass(frozen=True, slots=True)
class Threads:
    """Broker -> one member: from step ``from_step`` on, run this many CPU threads on these
    cores (lent by actors on standby, or given back). The step it names was not granted when
    this was sent, so every step the broker sees from it on ran on them."""
    job_id: int = required(min=0)
    generation: int = required(min=0)  # the group it is for
    from_step: int = required(min=0)  # the first step to run on them
    threads: int = required(min=1, max=4096)  # torch intra-op threads
    cores: list[int] = required(min_len=1, max_len=4096, item_min=0)  # the cores to run on


@dataclass(frozen=True, slots=True)
class Regroup:
    """Broker -> surviving actors: form the group again and go on from ``rewind_step``."""
    job_id: int = required(min=0)
    generation: int = required(min=1)  # prefix of the new group's rendezvous keys
    rank: int = required(min=0)  # this actor's rank in the new group
    world_size: int = required(min=1, max=4096)
    rewind_step: int = required(min=0)  # restore the snapshot taken before this step and train from it
    source_rank: int = required(min=0)  # the rank whose state everybody takes after the restore
    members: list[int] | None = given(None, min_len=1, max_len=4096, item_min=0)  # ranks in the new group; None: all
    gradient_sync: str = given("allreduce", choices=_SYNCS)  # how the new group sums gradients
    history: str = given("", max_len=64)  # hex digest of the committed history before rewind_step
    threads: int = given(0, min=0, max=4096)  # CPU threads to run from now (cores lent or given back); 0: as before
    cores: list[int] | None = given(None, min_len=1, max_len=4096, item_min=0)  # the cores to run on from now; None: where it is

    def check(self) -> None:
        """The receiver and the source must both be in the new group."""
        if self.rank >= self.world_size:
            raise ProtocolError(f"rank {self.rank} is not below world_size {self.world_size}")
        _check_members(self.members, self.rank, self.world_size)
        _check_members(self.members, self.source_rank, self.world_size)


@dataclass(frozen=True, slots=True)
class Standby:
    """Broker -> an actor: leave the gradient group at once (it re-forms without you, from a
    snapshot), and wait, alive, until a Regroup takes you back (or the job ends)."""
    job_id: int = required(min=0)
    generation: int = required(min=1)  # the generation of the group that goes on without you


@dataclass(frozen=True, slots=True)
class CheckpointNow:
    """Broker -> rank 0, the job stopped at a step boundary: write a checkpoint of it."""
    job_id: int = required(min=0)
    step: int = required(min=0)  # steps done at the boundary


@dataclass(frozen=True, slots=True)
class Checkpointed:
    """Rank 0 -> broker: the answer to CheckpointNow."""
    job_id: int = required(min=0)
    rank: int = required(min=0)
    step: int = required(min=0)
    path: str = required(max_len=4096)  # the checkpoint directory written; empty if none
    message: str = required(max_len=4096)  # why not, if not


@dataclass(frozen=True, slots=True)
class Adopt:
    """Broker -> the idle spare actor: you are ``actor_id`` now; say hello as it."""
    actor_id: str = required(min_len=1, max_len=64)


@dataclass(frozen=True, slots=True)
class Release:
    """Broker -> actor: the job is over; leave its group, say hello again and wait for the next."""
    job_id: int = required(min=0)  # the job that ended


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Broker -> actors: exit the process."""
    reason: str = required(max_len=1024)  # why, for the log


# --- the rendezvous store: actors -> broker (torch.distributed forms groups through it) ---

_STORE_OPS = frozenset({"set", "get", "add", "check", "compare_set", "delete", "num_keys"})


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """Actor -> broker: one operation on the rendezvous store (see leptonrt/actors/store.py)."""
    seq: int = required(min=0)  # echoed in the reply, so a late answer to a timed-out wait is recognised
    op: str = required(choices=_STORE_OPS)
    keys: list[str] = required(max_len=64)  # the key(s) it concerns
    value: bytes = given(b"", max_len=256 * 1024)  # set: the value; compare_set: the desired value
    expected: bytes = given(b"", max_len=256 * 1024)  # compare_set: the value expected now
    amount: int = given(0, min=-(2**62), max=2**62)  # add: the increment
    wait: bool = given(False)  # get/check: answer only once every key exists


@dataclass(frozen=True, slots=True)
class StoreReply:
    """Broker -> actor: the answer to a StoreRequest."""
    seq: int = required(min=0)
    ok: bool  # False: refused (the message says why)
    value: bytes = given(b"", max_len=256 * 1024)  # get / compare_set: the value now
    number: int = given(0, min=-(2**63), max=2**63 - 1)  # add: the new value; num_keys; check: 1 if all exist
    message: str = given("", max_len=1024)
