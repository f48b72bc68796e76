"""The actor's schedule: grants, splits and their vote, snapshots, checkpoints, regroups —
with no torch, no sockets and no clock (the replacement of building an Actor by hand)."""

from leptonrt.actors.schedule import ActorSchedule, Place
from leptonrt.messages import CheckpointNow, Grant, Regroup, Release, Resplit, Shutdown, Standby, Stop, Threads


def schedule(rank=0, members=(0, 1), generation=0, snapshot_every=8, checkpoint_every=0):
    return ActorSchedule(job_id=3, place=Place(generation, rank, 2, members, "exchange", 0, None),
                         snapshot_every=snapshot_every, checkpoint_every=checkpoint_every)


def grant(first, end, split=(2, 2), version=0, committed=-1):
    return Grant(job_id=3, first_step=first, end_step=end, split=list(split), committed=committed, version=version)


def test_a_step_uses_its_grants_split_and_an_ungranted_step_has_none():
    plan = schedule()
    plan.receive(grant(0, 4))
    plan.receive(grant(4, 8, split=(3, 1), version=1))
    assert plan.plan_for(2) == (0, [2, 2]) and plan.plan_for(5) == (1, [3, 1]) and plan.plan_for(8) is None


def test_a_newer_split_is_voted_on_and_used_only_from_the_step_after_the_group_agrees():
    plan = schedule()
    plan.receive(grant(0, 16))
    plan.receive(Resplit(job_id=3, generation=0, version=2, split=[3, 1]))
    assert plan.vote(0) == 2   # two versions ahead of the current one
    plan.agree(5, 2)           # the sums showed every member holds version 2
    assert plan.plan_for(5) == (0, [2, 2]) and plan.plan_for(6) == (2, [3, 1])
    assert plan.vote(2) == 0


def test_a_resplit_for_another_generation_or_job_is_ignored():
    plan = schedule()
    plan.receive(Resplit(job_id=3, generation=1, version=2, split=[3, 1]))
    plan.receive(Resplit(job_id=9, generation=0, version=3, split=[3, 1]))
    assert plan.vote(0) == 0


def test_splits_held_for_a_vote_are_bounded():
    plan = schedule()
    for version in range(1, 200):
        plan.receive(Resplit(job_id=3, generation=0, version=version, split=[3, 1]))
    assert len(plan.held) == 64 and min(plan.held) == 136


def test_other_cores_are_taken_from_the_step_the_broker_names_and_a_regroup_voids_them():
    plan = schedule()
    plan.receive(grant(0, 8))
    plan.receive(Threads(job_id=3, generation=1, from_step=8, threads=2, cores=[0, 1]))   # another group's
    assert plan.cores_for(8) is None
    plan.receive(Threads(job_id=3, generation=0, from_step=8, threads=2, cores=[0, 1]))
    assert plan.cores_for(7) is None
    moved = plan.cores_for(8)
    assert (moved.threads, moved.cores) == (2, [0, 1]) and plan.cores_for(9) is None   # once
    plan.receive(Threads(job_id=3, generation=0, from_step=16, threads=1, cores=[0]))
    plan.receive(Regroup(job_id=3, generation=1, rank=0, world_size=2, rewind_step=8, source_rank=0, members=[0]))
    plan.take_place()
    assert plan.cores_for(16) is None   # the new group's Regroup says its cores


def test_a_regroup_breaks_the_group_voids_its_grants_and_gives_the_new_place():
    plan = schedule(rank=1)
    plan.receive(grant(0, 16))
    plan.receive(Regroup(job_id=3, generation=1, rank=1, world_size=2, rewind_step=8, source_rank=1, members=[1]))
    assert plan.broken and plan.plan_for(9) is None
    place = plan.take_place()
    assert not plan.broken and place.rewind_step == 8
    assert plan.place == Place(1, 1, 2, (1,), "allreduce", 8, 1) and plan.place.leader


def test_a_regroup_of_an_older_generation_changes_nothing():
    plan = schedule(generation=2)
    plan.receive(Regroup(job_id=3, generation=2, rank=0, world_size=2, rewind_step=0, source_rank=0, members=[0]))
    assert not plan.broken


def test_standby_leaves_the_group_and_a_later_regroup_takes_the_actor_back():
    plan = schedule(rank=1)
    plan.receive(Standby(job_id=3, generation=1))
    assert isinstance(plan.take_place(), Standby) and plan.place.members == ()
    plan.receive(Regroup(job_id=3, generation=2, rank=1, world_size=2, rewind_step=24, source_rank=0, members=[0, 1]))
    assert plan.take_place().rewind_step == 24 and plan.place.members == (0, 1) and plan.place.source == 0


def test_the_new_groups_grants_wait_for_it_even_when_it_rewinds_behind_this_actor():
    # at step 9 of the old group, a cut-short regroup rewinds to 0 and grants steps 0..4: asked
    # about step 9 (the old group's next) meanwhile, they must not be dropped as done, or the
    # new group would wait for a grant forever (seen live: both sides idle, the actor at step 0)
    plan = schedule(rank=1)
    plan.receive(grant(0, 12))
    assert plan.plan_for(9) is not None
    plan.receive(Regroup(job_id=3, generation=1, rank=1, world_size=2, rewind_step=0, source_rank=1, members=[1],
                         threads=2))
    plan.receive(grant(0, 4, split=[0, 8]))
    assert plan.plan_for(9) is None and plan.plan_for(10) is None   # the old group's steps: none now
    assert plan.take_place().rewind_step == 0
    assert plan.plan_for(0) == (0, [0, 8])


def test_snapshots_are_due_every_few_steps_and_kept_back_to_the_first_uncommitted_one():
    plan = schedule(snapshot_every=8)
    assert [g for g in range(1, 25) if plan.snapshot_due(g)] == [8, 16, 24]
    plan.receive(grant(0, 32, committed=18))
    assert plan.snapshot_floor() == 16   # a rewind goes back no further than the snapshot before step 19


def test_only_the_leader_writes_checkpoints_and_only_when_asked_for():
    leader, other = schedule(rank=0, checkpoint_every=10), schedule(rank=1, checkpoint_every=10)
    assert leader.checkpoint_due(20, writes_checkpoints=True) and not leader.checkpoint_due(21, True)
    assert not other.checkpoint_due(20, True) and not leader.checkpoint_due(20, writes_checkpoints=False)


def test_reports_are_batched_by_count_or_age_and_a_lone_actor_reports_less_often():
    pair, alone = schedule(), schedule(members=(0,))
    assert not pair.report_due(0, now=1.0)
    assert pair.report_due(64, now=0.0) and pair.report_due(1, now=0.011) and not pair.report_due(1, now=0.005)
    assert not alone.report_due(1, now=0.011) and alone.report_due(1, now=0.06)
    pair.reported(1.0)
    assert not pair.report_due(1, now=1.005)


def test_stop_release_checkpoint_requests_and_shutdown_are_taken_in():
    plan = schedule()
    for msg in (Stop(job_id=3, save=True), Release(job_id=3), CheckpointNow(job_id=3, step=40), Shutdown("bye")):
        plan.receive(msg)
    assert plan.stop.save and plan.released and plan.checkpoint_asked.step == 40 and plan.shutdown == "bye"
    other = schedule()
    other.receive(Stop(job_id=99, save=True))   # another job's: a late message of the last one
    assert other.stop is None
