"""How an actor waits for granted steps: never longer than the broker takes to answer."""

from __future__ import annotations

import os
import types

import pytest
import torch

from leptonrt.actors import main as actor_main
from leptonrt.messages import Grant, Heartbeat, Regroup, Reports, Resplit


class _Link:
    """The broker's end, faked: it answers every batch of reports with a grant, at once."""

    def __init__(self, job_id: int, split: list[int]) -> None:
        self.job_id, self.split = job_id, split
        self.inbox: list = []
        self.sent: list = []
        self.blocking_waits = 0

    def send(self, msg) -> None:
        self.sent.append(msg)
        if isinstance(msg, Reports):
            done = msg.steps[-1].step
            self.inbox.append(Grant(job_id=self.job_id, first_step=done + 1, end_step=done + 5, split=self.split,
                                    committed=done))

    def recv(self, timeout_ms: int):
        if self.inbox:
            return self.inbox.pop(0)
        if timeout_ms > 0:
            self.blocking_waits += 1   # the real link would sit here for timeout_ms
        return None


def _actor(link: _Link) -> actor_main.Actor:
    """An actor with just what waiting for grants uses (no process group, no model)."""
    actor = actor_main.Actor.__new__(actor_main.Actor)
    actor.link, actor.parent_pid = link, os.getppid()
    actor.job = actor.spec = types.SimpleNamespace(job_id=link.job_id)
    actor.w = types.SimpleNamespace(snapshot_every=8)
    actor.rank, actor.world, actor.generation, actor.group_start = 0, 2, 0, 0
    actor.device = torch.device("cpu")
    actor.timer = types.SimpleNamespace(resolve=lambda: [])
    actor.grants, actor.snapshots, actor.last_flush = [], {}, 0.0
    actor.resplits, actor.agreed = {}, None
    actor.stop, actor.released, actor.regroup = None, False, None
    return actor


def test_a_grant_that_answers_the_forced_flush_is_used_at_once():
    link = _Link(job_id=3, split=[512, 512])
    actor = _actor(link)
    actor.pending = [(7, 512, 0.004, 0.005, 0.0, 0)]   # step 7 done, not reported yet; nothing granted past it
    assert actor._wait_granted(8) == [512, 512]
    # the grant came back within the flush's own poll: no wait for another message after it
    assert link.blocking_waits == 0
    assert [type(m) for m in link.sent] == [Reports]


def test_an_actor_with_nothing_to_report_waits_for_the_grant_and_says_it_is_alive():
    link = _Link(job_id=3, split=[512, 512])
    actor = _actor(link)
    actor.pending = []
    link.inbox.append(Grant(job_id=3, first_step=8, end_step=12, split=[256, 768], committed=7))

    def recv(timeout_ms: int):   # the grant arrives only while the actor waits
        if timeout_ms == 0:
            return None
        link.blocking_waits += 1
        return link.inbox.pop(0) if link.inbox else None

    link.recv = recv
    assert actor._wait_granted(8) == [256, 768]
    assert link.blocking_waits == 1
    assert [type(m) for m in link.sent] == [Heartbeat]


def test_a_split_the_group_agreed_on_applies_from_the_next_step_until_a_newer_one_is_granted():
    link = _Link(job_id=3, split=[32, 32])
    actor = _actor(link)
    actor._absorb(Grant(job_id=3, first_step=0, end_step=20, split=[32, 32], version=4))
    assert actor._vote(4) == 0                       # nothing newer held: no vote
    actor._absorb(Resplit(job_id=3, generation=1, version=5, split=[16, 48]))   # another group's: ignored
    actor._absorb(Resplit(job_id=3, generation=0, version=5, split=[48, 16]))
    actor._absorb(Resplit(job_id=3, generation=0, version=6, split=[56, 8]))
    assert actor._vote(4) == 1                       # the next one first, whatever came after it
    actor._agree(7, 5)                               # every member voted 1 at step 7
    assert [actor._plan_for(s) for s in (7, 8, 19)] == [(4, [32, 32]), (5, [48, 16]), (5, [48, 16])]
    assert actor._vote(5) == 1 and list(actor.resplits) == [6]
    actor._absorb(Grant(job_id=3, first_step=20, end_step=30, split=[56, 8], version=6))
    assert actor._plan_for(20) == (6, [56, 8]) and actor._vote(6) == 0   # granted before it was agreed on
    actor._absorb(Resplit(job_id=3, generation=0, version=7, split=[60, 4]))
    with pytest.raises(actor_main.GroupBroken):     # a regroup: what the old group held or agreed is gone
        actor._absorb(Regroup(job_id=3, generation=1, rank=0, world_size=2, rewind_step=16, source_rank=0))
    assert actor.grants == [] and actor.resplits == {} and actor.agreed is None
