"""JobCore: the broker's decisions for one job, driven with plain messages and numbers."""


import pytest

from leptonrt.batches import fold, history_start, piece
from leptonrt.broker.events import ActorLost, Progress, Recovered, Respawn, Send
from leptonrt.broker.job import JobConfig, JobCore
from leptonrt.broker.lifecycle import JobState
from leptonrt.broker.rebalance import Regroup as Membership
from leptonrt.messages import (ArrayRef, DatasetInfo, EpochResult, Failure, Finished, Grant, Hello, JobSpec,
                               Regroup, Reports, Standby, StepStat, Stop, Welcome)
from leptonrt.config import TrainJob


def _ref(name, dtype="float32", shape=(10, 4)):
    return ArrayRef(segment=f"leptonrt-1x0-{name}", dtype=dtype, shape=list(shape))


DATA = DatasetInfo(spec="synthetic:12,4,3", n_features=4, n_classes=3, x_train=_ref("xt"),
                   y_train=_ref("yt", "int64", (10,)), x_test=_ref("xs", shape=(2, 4)), y_test=_ref("ys", "int64", (2,)))
N_TRAIN = 20


def make_core(world=2, epochs=2, batch=4, window=4, split=None, rebalancer=None, model=None, tally=None,
              lending=None, **config):
    settings = TrainJob(dataset=DATA.spec, hidden=(8,), epochs=epochs, batch_size=batch, lr=0.1, optimizer="sgd",
                        momentum=0.0, precision="fp32", seed=1, align=1, model=model)
    cfg = JobConfig(min_window=window, max_window=window, **config)
    return JobCore(job=JobSpec(job_id=7, job=settings), data=DATA, actor_ids=[f"a{i}" for i in range(world)],
                   threads=[1] * world, split=split or [batch // world] * world, n_train=N_TRAIN,
                   steps_per_epoch=-(-N_TRAIN // batch), config=cfg, rebalancer=rebalancer, save_path="/tmp/w",
                   tally=tally, lending=lending)


def hello(i):
    return Hello(actor_id=f"a{i}", pid=100 + i, device="cpu", device_name="cpu", threads=1, memory_bytes=0, bf16=False)


def sends(effects, kind=None):
    return [e.message for e in effects if isinstance(e, Send) and (kind is None or isinstance(e.message, kind))]


def emitted(effects, kind):
    return [e.event for e in effects if hasattr(e, "event") and isinstance(e.event, kind)]


class Cluster:
    """The actors of one job, faked: they report the pieces their splits give them."""

    def __init__(self, core, world):
        self.core, self.world, self.now = core, world, 0.0
        self.splits = {}   # step -> split in use
        self.generation = 0

    def start(self):
        out = []
        for i in range(self.world):
            out += self.core.handle(f"id{i}".encode(), hello(i), now=self.now)
        return out

    def report(self, rank, *steps, split=None, generation=None, version=0, compute_s=0.001):
        batch = self.core.batch
        stats = []
        for g in steps:
            rows = min(batch, N_TRAIN - (g % self.core.steps_per_epoch) * batch)
            lo, hi = piece(split or self.core.splits.at(g), rows, rank)
            stats.append(StepStat(step=g, rows=hi - lo, compute_s=compute_s, step_s=2 * compute_s, simulated_s=0.0,
                                  version=version, collective_s=compute_s / 2, start=lo, stop=hi))
        msg = Reports(job_id=7, rank=rank, steps=stats, memory_bytes=0, queued=0,
                      generation=self.core.generation if generation is None else generation)
        return self.core.handle(f"id{rank}".encode(), msg, now=self.now)

    def everyone(self, *steps, **kw):
        out = []
        for rank in range(self.world):
            out += self.report(rank, *steps, **kw)
        return out


def started(world=2, **kw):
    core = make_core(world, **kw)
    cluster = Cluster(core, world)
    return core, cluster, cluster.start()


def test_nothing_is_sent_until_every_actor_has_said_hello():
    core = make_core(2)
    assert core.handle(b"id0", hello(0), now=0.0) == []
    assert core.state == JobState.GATHERING


def test_all_hellos_bring_welcomes_in_rank_order_and_a_first_grant():
    core, _c, out = started(2)
    welcomes = sends(out, Welcome)
    assert [w.rank for w in welcomes] == [0, 1] and all(w.members == [0, 1] for w in welcomes)
    assert sends(out, Grant)[0] == Grant(job_id=7, first_step=0, end_step=4, split=[2, 2], committed=-1, version=0)
    assert core.state == JobState.RUNNING


def test_a_users_model_starts_every_member_from_the_lowest_members_weights():
    _core, _c, out = started(2)
    assert [w.source_rank for w in sends(out, Welcome)] == [None, None]      # the MLP: seeded alike
    _core, _c, out = started(2, model="mypkg.models:build")
    assert [w.source_rank for w in sends(out, Welcome)] == [0, 0]            # a factory: handed over


def test_an_actor_that_finds_the_jobs_own_code_unusable_fails_the_job_with_its_one_line():
    core, _c, _ = started(2, model="mypkg.models:build")
    core.handle(b"id1", Failure(job_id=7, rank=1, message="--model mypkg.models:build: the factory failed: boom",
                                exit_code=78), now=1.0)
    assert core.state == JobState.FAILED and core.unusable == "--model mypkg.models:build: the factory failed: boom"
    core, _c, _ = started(2)
    core.handle(b"id1", Failure(job_id=7, rank=1, message="RuntimeError: segfault nearby"), now=1.0)
    assert core.state == JobState.FAILED and core.unusable is None


def test_progress_counts_committed_steps_and_samples_with_the_epoch_1_based():
    core, cluster, _ = started(2, epochs=2, batch=4)   # 20 rows: 5 steps per epoch
    assert core.progress() == Progress(epoch=1, epochs=2, step=0, total_steps=10, samples=0, total_samples=40)
    cluster.everyone(0, 1, 2)
    assert core.progress().step == 3 and core.progress().samples == 12 and core.progress().epoch == 1
    cluster.everyone(3, 4, 5)
    assert core.progress().epoch == 2 and core.progress().samples == 24


def test_a_step_is_committed_only_once_every_member_reported_it_and_grants_follow():
    core, cluster, _ = started(2)
    cluster.report(0, 0, 1, 2)
    assert core.committed() == -1
    out = cluster.report(1, 0, 1)
    assert core.committed() == 1
    assert sends(out, Grant)[0].first_step == 4


def test_the_history_digest_is_folded_over_committed_steps_in_order():
    core, cluster, _ = started(2)
    cluster.everyone(0, 1, 2)
    expected = history_start(1, N_TRAIN, 4)
    for g in range(3):
        expected = fold(expected, g, N_TRAIN, 4)
    assert core.ledger.digest() == expected.hex()


def test_pieces_that_do_not_tile_the_batch_fail_the_job_loudly():
    core, cluster, _ = started(2)
    cluster.report(0, 0, split=[2, 2])
    cluster.report(1, 0, split=[3, 1])   # rank 1 trained rows 3..4, rank 0 rows 0..2: row 2 twice... and row 3? no
    assert core.state == JobState.FAILED and "exactly-once" in core.failure


def test_the_job_stops_after_the_last_step_and_is_done_when_every_member_finished():
    core, cluster, _ = started(2, epochs=1)
    spe = core.steps_per_epoch
    out = cluster.everyone(*range(spe))
    assert sends(out, Stop) == [Stop(job_id=7, save=True)] * 2 and core.state == JobState.STOPPING
    core.handle(b"id0", EpochResult(7, 0, 0, 0.5, 0.6, 0.9, 1.0), now=1.0)
    digest = core.ledger.digest()
    for rank in range(2):
        core.handle(f"id{rank}".encode(), Finished(7, rank, 10, 1.0, rank == 0, digest=digest), now=1.0)
    assert core.state == JobState.DONE and core.result()["history_digest"] == digest


def test_a_member_whose_weights_trained_another_history_fails_the_job():
    core, cluster, _ = started(2, epochs=1)
    cluster.everyone(*range(core.steps_per_epoch))
    core.handle(b"id0", EpochResult(7, 0, 0, 0.5, 0.6, 0.9, 1.0), now=1.0)
    core.handle(b"id0", Finished(7, 0, 10, 1.0, True, digest="ab" * 32), now=1.0)
    assert core.state == JobState.FAILED and "exactly-once" in core.failure


def test_an_epoch_result_from_a_rank_other_than_the_leader_is_dropped():
    core, cluster, _ = started(2)
    core.handle(b"id1", EpochResult(7, 1, 0, 0.5, 0.6, 0.9, 1.0), now=1.0)
    assert core.bad_messages == 1 and core.epochs_done == 0


def test_a_duplicate_hello_an_unknown_actor_and_a_report_claiming_another_rank_are_dropped_and_counted():
    core, cluster, _ = started(2)
    core.handle(b"id0", hello(0), now=0.0)
    core.handle(b"idX", Hello("zz", 9, "cpu", "", 1, 0, False), now=0.0)
    core.handle(b"id0", Reports(job_id=7, rank=1, steps=[], memory_bytes=0, queued=0), now=0.0)
    core.handle(b"nobody", Reports(job_id=7, rank=0, steps=[], memory_bytes=0, queued=0), now=0.0)
    assert core.bad_messages == 4


def test_an_actor_failure_fails_the_job_with_its_message():
    core, _c, _ = started(2)
    core.handle(b"id1", Failure(job_id=7, rank=1, message="boom"), now=1.0)
    assert core.state == JobState.FAILED and "boom" in core.failure


def test_a_lost_member_is_replaced_and_the_rest_rewind_to_the_snapshot_before_the_first_uncommitted_step():
    core, cluster, _ = started(2, epochs=4, snapshot_every=4)
    cluster.everyone(0, 1, 2, 3, 4)
    cluster.report(0, 5, 6)
    out = core.exited("a1", "killed by SIGKILL", now=2.0)
    assert emitted(out, ActorLost)[0].rank == 1 and any(isinstance(e, Respawn) for e in out)
    regroups = sends(out, Regroup)
    assert [(r.rank, r.rewind_step, r.members) for r in regroups] == [(0, 4, [0])]
    recovered = emitted(out, Recovered)[0]
    assert recovered.rewind_step == 4 and recovered.replayed_steps == 3   # steps 4, 5 and 6 again
    assert sends(out, Grant)[-1].split == [4, 0]


def test_a_host_lost_loses_all_its_actors_in_one_regroup_and_spends_its_budget_once():
    core, cluster, _ = started(4, epochs=4, snapshot_every=4, max_restarts=1)
    cluster.everyone(0, 1, 2, 3, 4)
    out = core.host_lost("alpha", ["a2", "a3"], "host alpha lost: silent for 5.1 s", now=2.0)
    assert sorted(e.rank for e in emitted(out, ActorLost)) == [2, 3]
    assert [(r.rank, r.rewind_step, r.members) for r in sends(out, Regroup)] == [(0, 4, [0, 1]), (1, 4, [0, 1])]
    assert core.regroups == 1 and core.state == JobState.RUNNING
    core.exited("a1", "exit code 1", now=2.5)   # rank 1 alone: its own budget, untouched by the host's
    assert core.state == JobState.RUNNING
    for rank in (2, 3):   # the host came back...
        core.handle(f"new{rank}".encode(), hello(rank), now=3.0)
    core.host_lost("alpha", ["a2", "a3"], "host alpha lost again", now=3.5)   # ...and is lost again
    assert core.state == JobState.FAILED and "host alpha was lost 2 times" in core.failure


def test_a_replacement_joins_at_the_next_snapshot_boundary_without_replaying_anything():
    core, cluster, _ = started(2, epochs=4, snapshot_every=4)
    cluster.everyone(0, 1)
    core.exited("a1", "exit code 17", now=1.0)   # the survivor goes back to step 0 and trains 0 and 1 again
    cluster.report(0, 0, 1, 2, 3, 4, 5)
    core.handle(b"new1", hello(1), now=2.0)   # the replacement: nothing is granted past the next boundary
    granted = core.grants.granted
    boundary = -(-granted // 4) * 4
    out, step = [], 6
    while not sends(out, Welcome):
        out = cluster.report(0, step)
        assert sends(out, Welcome) or all(g.end_step <= boundary for g in sends(out, Grant))
        step += 1
    welcome = sends(out, Welcome)[0]
    assert step == boundary and welcome.start_step == boundary
    assert welcome.source_rank == 0 and welcome.members == [0, 1]
    assert sends(out, Regroup)[0].rewind_step == boundary
    assert core.replayed_steps == 2   # the loss's replay (steps 0 and 1); the rejoin replays nothing


class StubRebalancer:
    """The rebalancer's interface, doing nothing; ``configured`` records the thread counts it is told."""

    def __init__(self):
        self.configured = []

    def observe(self, rank, **_):
        pass

    def regrouped(self, cost_s):
        pass

    def set_caps(self, caps):
        pass

    def formed(self, threads, declined=()):
        self.configured += sorted(threads.items())
        self.declined = frozenset(declined)

    def best(self, members):
        return None


class OneChange(StubRebalancer):
    """A rebalancer that asks for one membership change once ``steps_left`` steps are left."""

    def __init__(self, change, steps_left):
        super().__init__()
        self.change, self.steps_left, self.asked = change, steps_left, False

    def decide(self, split, members, *, steps_left, stale=frozenset()):
        if self.asked or steps_left > self.steps_left:
            return None
        self.asked = True
        return self.change


def _standby(saving_s):
    return Membership(members=(0,), split=(4, 0), saving_s=saving_s / 2, horizon=100, cost_s=0.01,
                      reason="rank 1 to standby", expected_s=saving_s)


def test_a_standby_that_saves_more_than_its_replay_costs_cuts_the_granted_window_short():
    # steps take 2 ms; 12 are granted, 0..5 committed: waiting trains 6 more on the old group,
    # cutting short replays 4 and 5 (since the snapshot at 4) on the new one, 0.5 ms each
    core, cluster, _ = started(2, epochs=4, window=12, snapshot_every=4, rebalancer=OneChange(_standby(0.0015), 14))
    cluster.report(0, 0, 1, 2, 3, 4, 5)
    cluster.now = 1.0   # (decisions are spaced out in time)
    out = cluster.report(1, 0, 1, 2, 3, 4, 5)
    assert sends(out, Standby) == [Standby(job_id=7, generation=1)]
    assert [(r.rank, r.rewind_step, r.members) for r in sends(out, Regroup)] == [(0, 4, [0])]
    assert core.replayed_steps == 2 and sends(out, Grant)[-1].split == [4, 0]
    cluster.report(0, 4, 5)            # the old group's steps past 5 are not committed: dropped
    assert cluster.report(1, 6, 7, generation=0) == [] and core.committed() == 5
    cluster.report(0, *range(6, core.total_steps))
    plain, run, _ = started(2, epochs=4)
    run.everyone(*range(plain.total_steps))
    assert core.committed() == plain.committed() and core.ledger.digest() == plain.ledger.digest()


@pytest.mark.parametrize("saving_s,cut_short", [(0.0002, True), (0.0015, False)])
def test_a_standby_waits_for_the_granted_window_when_replay_costs_more_or_cutting_short_is_off(saving_s, cut_short):
    core, cluster, _ = started(2, epochs=4, window=12, snapshot_every=4, cut_short=cut_short,
                               rebalancer=OneChange(_standby(saving_s), 14))
    cluster.report(0, 0, 1, 2, 3, 4, 5)
    cluster.now = 1.0
    out = cluster.report(1, 0, 1, 2, 3, 4, 5)
    assert not sends(out, Standby) and not sends(out, Regroup) and core.grants.boundary == 12
    out = cluster.everyone(*range(6, 12))
    assert sends(out, Standby) and [r.rewind_step for r in sends(out, Regroup)] == [12]
    assert core.replayed_steps == 0


# --- hypothesis: a stream of valid and invalid messages; the invalid ones change nothing ------

import dataclasses  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule  # noqa: E402


def _state(core):
    """What an invalid message must not change (the drop counter aside)."""
    stats = dataclasses.replace(core.statistics(), bad_messages=0)
    return stats, core.splits.history, core.grants.granted, core.state


INVALID = st.sampled_from([
    (b"stranger", Reports(job_id=7, rank=0, steps=[], memory_bytes=0, queued=0)),        # unknown identity
    (b"id0", Reports(job_id=7, rank=1, steps=[], memory_bytes=0, queued=0)),             # someone else's rank
    (b"id0", Reports(job_id=8, rank=0, steps=[], memory_bytes=0, queued=0)),             # another job
    (b"id0", hello(0)),                                                                    # a second hello
    (b"id1", EpochResult(7, 1, 0, 0.5, 0.5, 0.5, 1.0)),                                   # not the leader
    (b"id0", Finished(7, 0, 1, 1.0, False, digest="")),                                   # finished while running
    (b"id1", Stop(job_id=7, save=False)),                                                 # a kind actors never send
])


class MixedTraffic(RuleBasedStateMachine):
    """Valid reports advance the job; every invalid message leaves it exactly as it was."""

    def __init__(self):
        super().__init__()
        self.core, self.cluster, _ = started(2, epochs=50)
        self.next = [0, 0]

    @rule(rank=st.integers(0, 1), count=st.integers(1, 3))
    def a_member_reports_its_next_steps(self, rank, count):
        granted = self.core.grants.granted
        steps = [g for g in range(self.next[rank], self.next[rank] + count) if g < granted]
        if steps:
            self.cluster.report(rank, *steps)
            self.next[rank] = steps[-1] + 1

    @rule(message=INVALID)
    def an_invalid_message_changes_nothing(self, message):
        identity, msg = message
        before, drops = _state(self.core), self.core.bad_messages
        effects = self.core.handle(identity, msg, now=self.cluster.now)
        assert effects == [] and _state(self.core) == before and self.core.bad_messages == drops + 1

    @invariant()
    def committed_is_what_both_members_reported(self):
        assert self.core.committed() == min(self.next) - 1


TestMixedTraffic = MixedTraffic.TestCase
TestMixedTraffic.settings = settings(max_examples=30, stateful_step_count=40, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])


# --- what the live view reads: the step-time and loss histories, the last change and why ------

from leptonrt.broker.rebalance import Move  # noqa: E402
from leptonrt.broker.stats import Change  # noqa: E402


class MovesOnce(StubRebalancer):
    """A rebalancer that decides one move, to (3, 1), and then nothing."""

    def __init__(self):
        super().__init__()
        self.moved = False

    def decide(self, split, members, steps_left, stale):
        if self.moved:
            return None
        self.moved = True
        return Move((3, 1), saving_s=0.001, horizon=100, cost_s=0.0, reason="rank 1 slowed 2.0x")


def test_committed_steps_and_finished_epochs_make_bounded_histories_of_step_time_and_loss():
    core, cluster, _ = started(2, epochs=40)
    spe = core.steps_per_epoch
    for step in range(20 * spe):
        cluster.report(0, step, compute_s=0.001)
        cluster.report(1, step, compute_s=0.002 if step < 10 * spe else 0.004)   # the slowest member counts
        if step % spe == spe - 1:
            core.handle(b"id0", EpochResult(7, 0, step // spe, 1.0 / (step // spe + 1), 0.6, 0.9, 1.0), now=1.0)
    stats = core.statistics()
    assert len(stats.step_ms) <= 60 and stats.step_ms_every >= 2
    assert stats.step_ms[0] == 4.0 and stats.step_ms[-1] == 8.0        # 2 x compute_s of the slowest, in ms
    assert stats.losses == tuple(1.0 / (e + 1) for e in range(20))


def test_the_last_change_says_why_for_a_move_and_for_a_loss():
    core, cluster, _ = started(2, epochs=4, snapshot_every=4, rebalancer=MovesOnce())
    assert core.statistics().last_change is None
    cluster.everyone(0)
    change = core.statistics().last_change
    assert change.split == (3, 1) and change.reason == "rank 1 slowed 2.0x"
    assert change.step == 4   # what was granted by then: the split applies from there
    core.exited("a1", "killed by SIGKILL", now=2.0)
    assert core.statistics().last_change == Change(step=0, split=(4, 0), reason="rank 1 lost")


def test_an_actor_whose_host_holds_only_the_test_split_is_welcomed_to_take_its_rows_by_value():
    streamed = DatasetInfo(spec="synthetic:12,4,3 (test split)", n_features=4, n_classes=3,
                           x_train=_ref("h-xt", shape=(0, 4)), y_train=_ref("h-yt", "int64", (0,)), x_test=_ref("h-xs", shape=(2, 4)),
                           y_test=_ref("h-ys", "int64", (2,)))
    core = make_core()
    core.data_of["a1"] = streamed
    out = Cluster(core, 2).start()
    local, remote = sends(out, Welcome)
    assert (local.rows_by_value, local.data) == (0, DATA)
    assert (remote.rows_by_value, remote.data) == (N_TRAIN, streamed)
