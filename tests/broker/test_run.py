"""TrainingRun: the broker's decisions for one job, driven with plain messages and numbers."""

import pytest

from leptonrt.messages import (ArrayRef, DatasetInfo, EpochResult, Failure, Finished, Grant, Hello, JobSpec,
                               Reports, Resplit, StepStat, Stop, TrainJob, Welcome)
from leptonrt.broker.planner import Planner
from leptonrt.broker.run import EpochEvent, SplitChanged, TrainingRun
from leptonrt.errors import InternalError


def _ref(name, dtype="float32", shape=(10, 4)):
    return ArrayRef(segment=f"leptonrt-1x0-{name}", dtype=dtype, shape=list(shape))


DATA = DatasetInfo(spec="synthetic:12,4,3", n_features=4, n_classes=3, x_train=_ref("xt"),
                   y_train=_ref("yt", "int64", (10,)), x_test=_ref("xs", shape=(2, 4)),
                   y_test=_ref("ys", "int64", (2,)))


def make_run(world=2, epochs=2, steps=5, window=4, split=None, batch=None, planner=None, **extra):
    batch = batch or 2 * world
    settings = TrainJob(dataset=DATA.spec, hidden=(8,), epochs=epochs, batch_size=batch, lr=0.1, optimizer="sgd",
                        momentum=0.0, weight_decay=0.0, precision="fp32", seed=1, align=1)
    job = JobSpec(job_id=7, job=settings)
    return TrainingRun(job=job, data=DATA, actor_ids=[f"a{i}" for i in range(world)], threads=[1] * world,
                       split=split or [batch // world] * world,
                       steps_per_epoch=steps, n_train=10, min_window=window, max_window=window,
                       save_path="/tmp/w.safetensors", planner=planner, **extra)


def hello(i):
    return Hello(actor_id=f"a{i}", pid=100 + i, device="cpu", device_name="cpu", threads=1, memory_bytes=0, bf16=False)


def report(rank, *steps, rows=2, compute_s=0.001, version=0):
    return Reports(job_id=7, rank=rank, memory_bytes=0, queued=0,
                   steps=[StepStat(step=s, rows=rows, compute_s=compute_s, step_s=0.002, simulated_s=0.0,
                                   version=version) for s in steps])


def started(world=2, **kw):
    run = make_run(world, **kw)
    outs = []
    for i in range(world):
        outs += run.handle(f"id{i}".encode(), hello(i), now=0.0)
    return run, outs


def test_nothing_is_sent_until_every_actor_has_said_hello():
    run = make_run()
    assert run.handle(b"id0", hello(0), now=0.0) == []
    assert run.state == "gathering"


def test_all_hellos_bring_welcomes_with_ranks_in_spawn_order_and_a_first_grant():
    run, outs = started()
    welcomes = [o for o in outs if isinstance(o.message, Welcome)]
    assert [(o.identity, o.message.rank, o.message.world_size) for o in welcomes] == [(b"id0", 0, 2), (b"id1", 1, 2)]
    grants = [o.message for o in outs if isinstance(o.message, Grant)]
    assert len(grants) == 2 and grants[0] == Grant(job_id=7, first_step=0, end_step=4, split=[2, 2])
    assert run.state == "running"


def test_grants_extend_the_window_as_steps_are_committed_by_every_actor():
    run, _ = started()
    assert run.handle(b"id0", report(0, 0, 1, 2), now=1.0) == []   # rank 1 has committed nothing yet
    outs = run.handle(b"id1", report(1, 0, 1), now=1.0)
    assert [o.message for o in outs] == [Grant(job_id=7, first_step=4, end_step=6, split=[2, 2], committed=1)] * 2
    assert run.committed() == 1


def test_a_duplicate_hello_or_an_unknown_actor_is_dropped_and_counted():
    run = make_run()
    run.handle(b"id0", hello(0), now=0.0)
    assert run.handle(b"id9", hello(0), now=0.0) == []
    assert run.handle(b"id9", Hello(actor_id="zz", pid=1, device="cpu", device_name="", threads=1,
                                    memory_bytes=0, bf16=False), now=0.0) == []
    assert run.bad_messages == 2 and run.state == "gathering"


def test_a_report_claiming_another_actors_rank_is_dropped():
    run, _ = started()
    assert run.handle(b"id0", report(1, 0, 1, 2, 3), now=1.0) == []
    assert run.bad_messages == 1 and run.committed() == -1


def test_a_message_from_an_unknown_identity_is_dropped():
    run, _ = started()
    assert run.handle(b"stranger", report(0, 0), now=1.0) == []
    assert run.bad_messages == 1


def test_the_job_stops_after_the_last_step_and_is_done_when_everyone_finished():
    run, _ = started(epochs=1, steps=3, window=8)
    run.handle(b"id0", report(0, 0, 1, 2), now=1.0)
    outs = run.handle(b"id1", report(1, 0, 1, 2), now=1.0)
    assert [o.message for o in outs] == [Stop(job_id=7, save=True)] * 2
    run.handle(b"id0", EpochResult(job_id=7, rank=0, epoch=0, train_loss=1.0, test_loss=0.9,
                                   test_accuracy=0.5, seconds=0.5), now=1.5)
    for i in range(2):
        run.handle(f"id{i}".encode(), Finished(job_id=7, rank=i, samples=6, seconds=0.5, saved=i == 0), now=2.0)
    assert run.state == "done"
    result = run.result()
    assert result["test_accuracy"] == 0.5 and result["steps"] == 3 and result["wall_s"] == 2.0
    assert [a["share"] for a in result["actors"]] == [0.5, 0.5]
    assert isinstance(run.events[0], EpochEvent) and run.events[0].epoch == 1


def test_an_epoch_result_from_a_rank_other_than_zero_is_ignored():
    run, _ = started()
    run.handle(b"id1", EpochResult(job_id=7, rank=1, epoch=0, train_loss=1.0, test_loss=1.0,
                                   test_accuracy=0.1, seconds=1.0), now=1.0)
    assert run.events == [] and run.bad_messages == 1


def test_an_actor_failure_fails_the_run_with_its_message():
    run, _ = started()
    run.handle(b"id1", Failure(job_id=7, rank=1, message="boom"), now=1.0)
    assert run.state == "failed" and "boom" in run.failure


def test_an_actor_exit_without_a_restart_budget_fails_the_run():
    run, _ = started(max_restarts=0)
    run.actor_exited("a0", "killed by SIGKILL", now=1.0)
    assert run.state == "failed" and "SIGKILL" in run.failure and "rank 0" in run.failure
    assert run.budget_exceeded


def kinds(outs):
    return [(o.identity, type(o.message).__name__) for o in outs]


def test_a_lost_actor_leaves_the_group_the_rest_rewind_to_the_snapshot_before_the_first_uncommitted_step():
    run, _ = started(epochs=4, steps=10, window=16, snapshot_every=4)
    run.handle(b"id0", report(0, *range(0, 11)), now=1.0)    # rank 0 is ahead: 0..10
    run.handle(b"id1", report(1, *range(0, 6)), now=1.0)     # rank 1 reported 0..5, then died
    outs = run.actor_exited("a1", "killed by SIGKILL", now=1.1)
    assert run.state == "running" and run.respawn == ["a1"]
    # rank 0 goes on alone at once: committed = 5, so the first uncommitted step is 6, and
    # the newest snapshot at or before it is 4; it takes the whole batch
    assert kinds(outs) == [(b"id0", "Regroup"), (b"id0", "Grant")]
    regroup, grant = outs[0].message, outs[1].message
    assert (regroup.rewind_step, regroup.source_rank, regroup.members, regroup.generation) == (4, 0, [0], 1)
    assert grant.first_step == 4 and grant.split == [4, 0]
    assert run.replayed_steps == 7                              # steps 4..10 were reported before the loss
    assert run.handle(b"id0", report(0, 11), now=1.2) == []    # the broken group's late steps are ignored
    assert run.result()["actors"][1]["restarts"] == 1 and run.result()["actors"][1]["in_group"] is False
    assert [type(e).__name__ for e in run.events] == ["ActorLost", "Recovered"]


def test_a_replacement_rejoins_at_the_next_snapshot_boundary_without_replaying_anything():
    run, _ = started(epochs=4, steps=10, window=16, snapshot_every=4)
    run.handle(b"id0", report(0, *range(0, 6)), now=1.0)
    run.handle(b"id1", report(1, *range(0, 6)), now=1.0)
    run.actor_exited("a1", "killed by SIGKILL", now=1.1)        # rank 0 alone from step 4, granted to 20
    run.handle(b"id0", Reports(job_id=7, rank=0, memory_bytes=0, queued=0, generation=1,
                               steps=[StepStat(step=s, rows=4, compute_s=0.001, step_s=0.002, simulated_s=0.0)
                                      for s in range(4, 9)]), now=1.2)
    assert run.committed() == 8
    outs = run.handle(b"new1", hello(1), now=2.0)               # the replacement says hello
    assert outs == [] and run._join_at == 20                    # what is granted (up to 20) is trained first
    assert run.state == "running"
    done = Reports(job_id=7, rank=0, memory_bytes=0, queued=0, generation=1,
                   steps=[StepStat(step=s, rows=4, compute_s=0.001, step_s=0.002, simulated_s=0.0)
                          for s in range(9, 20)])
    outs = run.handle(b"id0", done, now=2.5)
    by_kind = {type(o.message).__name__: o for o in outs if not isinstance(o.message, Grant)}
    regroup, welcome = by_kind["Regroup"].message, by_kind["Welcome"].message
    assert by_kind["Regroup"].identity == b"id0" and by_kind["Welcome"].identity == b"new1"
    assert regroup.rewind_step == welcome.start_step == 20 and regroup.source_rank == welcome.source_rank == 0
    assert regroup.members == welcome.members == [0, 1] and regroup.generation == welcome.generation == 2
    grants = [o.message for o in outs if isinstance(o.message, Grant)]
    assert [g.first_step for g in grants] == [20, 20] and grants[0].split == [2, 2]   # the starting shares again
    assert run.replayed_steps == 2                               # the loss replayed steps 4 and 5; the rejoin nothing
    assert [type(e).__name__ for e in run.events] == ["ActorLost", "Recovered", "Recovered"]
    assert run.events[-1].joined == (1,) and "rejoined at step 20" in run.events[-1].describe()
    assert run.result()["actors"][1]["in_group"] is True


def test_a_replacement_that_never_comes_back_costs_only_its_share():
    run, _ = started(epochs=1, steps=10, window=16, snapshot_every=4)
    run.actor_exited("a1", "exit code 9", now=0.5)
    steps = Reports(job_id=7, rank=0, memory_bytes=0, queued=0, generation=1,
                    steps=[StepStat(step=s, rows=4, compute_s=0.001, step_s=0.002, simulated_s=0.0) for s in range(10)])
    outs = run.handle(b"id0", steps, now=1.0)
    assert kinds(outs) == [(b"id0", "Stop")]                      # rank 1 is not waited for
    run.handle(b"id0", EpochResult(job_id=7, rank=0, epoch=0, train_loss=1.0, test_loss=1.0, test_accuracy=0.5,
                                   seconds=1.0, generation=1), now=1.1)
    run.handle(b"id0", Finished(job_id=7, rank=0, samples=10, seconds=1.0, saved=True), now=1.2)
    lost = run.result()["actors"][1]
    assert run.state == "done" and lost["restarts"] == 1
    assert lost["device"] == "cpu" and lost["pid"] is None   # its device is still known; no process holds it


def test_a_lost_rank_zero_makes_the_lowest_survivor_the_leader():
    run, _ = started(world=3, epochs=1, steps=10, window=16, snapshot_every=4)
    outs = run.actor_exited("a0", "killed by SIGKILL", now=0.5)
    regroups = [o.message for o in outs if type(o.message).__name__ == "Regroup"]
    assert [(r.rank, r.members, r.source_rank) for r in regroups] == [(1, [1, 2], 1), (2, [1, 2], 1)]
    assert run.split == [0, 3, 3]
    ok = EpochResult(job_id=7, rank=1, epoch=0, train_loss=1.0, test_loss=1.0, test_accuracy=0.5, seconds=1.0,
                     generation=1)
    run.handle(b"id1", ok, now=1.0)
    assert run.epochs_done == 1 and run.bad_messages == 0


def test_the_restart_budget_counts_losses_within_the_window():
    run, _ = started(max_restarts=1, restart_window_s=10.0)
    run.actor_exited("a1", "exit code 17", now=1.0)
    run.handle(b"new1", hello(1), now=2.0)
    run.actor_exited("a1", "exit code 17", now=3.0)          # the second within 10 s: over budget
    assert run.state == "failed" and run.budget_exceeded and "--max-restarts 1" in run.failure


def test_a_split_that_does_not_sum_to_the_batch_is_our_bug():
    with pytest.raises(InternalError):
        make_run(split=[3, 2])


def test_a_slow_actor_gets_a_smaller_share_from_the_end_of_what_was_already_granted_at_the_latest():
    run, _ = started(epochs=1, steps=100, window=8, batch=64, planner=Planner(2, 64), plan_every_s=0.0,
                     probe_after=10**6)
    for step in range(20):
        run.handle(b"id0", report(0, step, rows=32, compute_s=0.001), now=0.01 * step)
        granted_before = run._granted
        outs = run.handle(b"id1", report(1, step, rows=32, compute_s=0.002), now=0.01 * step)
        if run.rebalances:
            break
    changed = [e for e in run.events if isinstance(e, SplitChanged)]
    assert len(changed) == 1 and changed[0].split[0] > changed[0].split[1]
    assert changed[0].step == granted_before > step     # steps already granted keep their split
    grants = [o.message for o in outs if isinstance(o.message, Grant)]
    assert grants and grants[0].first_step == granted_before and grants[0].split == list(changed[0].split)
    assert run.split_at(granted_before - 1) == [32, 32] and run.split_at(granted_before) == list(changed[0].split)
    assert run.rebalances == 1 and run.result()["rebalances"] == 0   # decided, not used yet
    for rank in (0, 1):
        run.handle(f"id{rank}".encode(), report(rank, *range(step + 1, granted_before + 1), rows=32), now=1.0)
    assert run.result()["rebalances"] == 1 and run.result()["split_changes"][-1]["step"] == granted_before


def test_planning_is_rate_limited_until_a_device_changes_speed_then_it_runs_at_once():
    planner = Planner(2, 64)
    asked = []
    propose = planner.propose
    planner.propose = lambda split, now: asked.append(now) or propose(split, now)
    run, _ = started(epochs=1, steps=200, window=8, batch=64, planner=planner, plan_every_s=10.0,
                     probe_after=10**6)
    for step in range(60):   # equal speeds, then rank 1 slows down 3x at step 40, all within 10 s
        run.handle(b"id0", report(0, step, rows=32, compute_s=0.001), now=0.001 * step)
        run.handle(b"id1", report(1, step, rows=32, compute_s=0.003 if step >= 40 else 0.001), now=0.001 * step)
        if run.rebalances:
            break
    assert run.rebalances == 1 and run.split[0] > run.split[1]
    assert step < 50   # the change of speed is seen after `persist` (5) steps, and planned for at once
    # only once before it (the first report), once when the fit was redrawn
    assert len(asked) <= 3 and asked[0] == 0.0 and all(t >= 0.040 for t in asked[1:])



def test_a_new_split_is_sent_at_once_and_starts_in_the_history_where_the_actors_switched_to_it():
    planner = Planner(2, 64)
    run, _ = started(epochs=1, steps=200, window=16, batch=64, planner=planner, probe_after=10**6)
    outs = []
    for step in range(60):   # rank 1 slows down 3x at step 40
        for rank in (0, 1):
            outs = run.handle(f"id{rank}".encode(), report(rank, step, rows=32, compute_s=0.003 if rank and step >= 40
                                                           else 0.001), now=0.001 * step)
            if run.rebalances:
                break
        if run.rebalances:
            break
    resplits = [o for o in outs if isinstance(o.message, Resplit)]
    assert [o.identity for o in resplits] == [b"id0", b"id1"]
    resplit = resplits[0].message
    assert resplit.split == run.split and resplit.generation == run.generation
    # the grants already out (up to 16 steps ahead) carry older versions; those after it, this one
    granted = [o.message for o in outs if isinstance(o.message, Grant)]
    assert granted and all(g.version == resplit.version and g.split == run.split for g in granted)
    end_of_grants = granted[0].first_step
    # at the latest where the grants end; not counted in the result until a step has used it
    assert run.split_at(end_of_grants - 1) == [32, 32] and run.split_at(end_of_grants) == run.split
    assert run.result()["rebalances"] == 0
    # the actors agreed on it two steps after the report that moved it
    for rank in (0, 1):
        run.handle(f"id{rank}".encode(), report(rank, step + 1, step + 2, rows=32), now=0.1)
        run.handle(f"id{rank}".encode(), report(rank, step + 3, rows=run.split[rank], version=resplit.version), now=0.1)
    assert step + 3 < end_of_grants
    assert run.result()["split_changes"][-1] == {"step": step + 3, "split": run.split, "why": "planner"}
    assert run.result()["rebalances"] == 1
    assert run.split_at(step + 2) == [32, 32] and run.split_at(step + 3) == run.split

def test_without_a_planner_the_split_never_changes():
    run, _ = started(epochs=1, steps=100, window=8, batch=64)
    for step in range(10):
        run.handle(b"id0", report(0, step, rows=32, compute_s=0.001), now=0.01 * step)
        run.handle(b"id1", report(1, step, rows=32, compute_s=0.010), now=0.01 * step)
    assert run.rebalances == 0 and run.split == [32, 32]


def test_an_actor_silent_past_the_hang_bound_while_its_peer_speaks_is_killed_and_replaced():
    run, _ = started()
    run.hang_timeout_s = 3.0
    run.handle(b"id1", report(1, 0), now=0.0)   # both have joined the group and trained a step
    run.handle(b"id0", report(0, 1), now=2.5)
    run.check_liveness(now=2.9)
    assert run.state == "running" and run.kill == []
    run.check_liveness(now=3.5)
    assert run.kill == ["a1"] and run.state == "running"
    run.actor_exited("a1", "killed by SIGKILL", now=3.6)
    assert run.state == "running" and "hung" in run.events[-2].how and run.split == [4, 0]


def test_when_every_actor_is_silent_the_peers_get_time_to_time_out_then_the_run_fails():
    run, _ = started()
    run.hang_timeout_s = 3.0
    run.handle(b"id0", report(0, 0), now=0.0)
    run.handle(b"id1", report(1, 0), now=0.0)
    run.check_liveness(now=3.5)                               # all silent: perhaps one hung, the rest waiting
    assert run.state == "running" and run.kill == []
    run.check_liveness(now=3.0 + run.collective_timeout_s() + 2.5)
    assert run.state == "failed" and "rank(s) 0 " in run.failure and "hung" in run.failure


def test_small_cpu_groups_exchange_gradients_and_any_gpu_member_means_all_reduce():
    _, outs = started(world=2)
    assert {o.message.gradient_sync for o in outs if isinstance(o.message, Welcome)} == {"exchange"}
    run = make_run(world=2)
    gpu = Hello(actor_id="a1", pid=101, device="cuda:0", device_name="H100", threads=1, memory_bytes=0, bf16=True)
    outs = run.handle(b"id0", hello(0), now=0.0) + run.handle(b"id1", gpu, now=0.0)
    assert {o.message.gradient_sync for o in outs if isinstance(o.message, Welcome)} == {"allreduce"}
    _, outs = started(world=5, batch=10)
    assert {o.message.gradient_sync for o in outs if isinstance(o.message, Welcome)} == {"allreduce"}


def test_once_warm_the_planner_sees_rows_vary_one_way_then_the_other_then_even_again():
    run, outs = started(epochs=1, steps=100, window=4, batch=64, planner=Planner(2, 64), probe_after=4, probe_steps=4)
    splits = {}
    for step in range(16):
        for rank in (0, 1):
            for out in run.handle(f"id{rank}".encode(), report(rank, step, rows=32), now=0.001 * step):
                if isinstance(out.message, Grant):
                    splits[out.message.first_step] = out.message.split
    # align 8, 15% of 32 rows rounds to one unit
    assert splits[4] == [40, 24] and splits[8] == [24, 40] and splits[12] == [32, 32]
    assert run.rebalances == 0 and not any(isinstance(e, SplitChanged) for e in run.events)


def test_a_survivors_report_of_a_failed_collective_is_answered_by_the_regroup_that_a_loss_brings():
    from leptonrt.messages import GroupFailed
    run, _ = started(epochs=4, steps=10, window=16, snapshot_every=4)
    run.handle(b"id0", report(0, *range(0, 6)), now=1.0)
    run.handle(b"id1", report(1, *range(0, 6)), now=1.0)
    # rank 1 is killed: its peer's collective fails, and says so before the exit is seen
    run.handle(b"id0", GroupFailed(job_id=7, rank=0, generation=0, message="peer exited"), now=1.05)
    outs = run.actor_exited("a1", "killed by SIGKILL", now=1.1)
    assert kinds(outs)[0] == (b"id0", "Regroup") and run.generation == 1
    run.handle(b"id0", report(0, *range(4, 12)), now=1.2)
    # long past the grace a failure with every actor alive gets: that report is not news
    assert run.check_liveness(now=1.1 + 10 * run._group_failed_grace()) == []
    assert run.generation == 1 and [type(e).__name__ for e in run.events] == ["ActorLost", "Recovered"]
