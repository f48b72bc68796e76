"""A service task that dies of a bug is restarted, and one that keeps dying is reported broken."""

import asyncio

from leptonrt.broker.supervise import supervise


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_task_that_dies_a_few_times_is_restarted_and_goes_on():
    clock, runs, broken = Clock(), [], []

    async def serve():
        runs.append(clock.now)
        clock.now += 30.0   # deaths spread out: never more than one within the window
        if len(runs) < 4:
            raise RuntimeError("a bug")

    asyncio.run(supervise(serve, name="t", restarts=1, window_s=20.0, on_broken=broken.append, clock=clock))
    assert len(runs) == 4 and broken == []


def test_a_task_that_keeps_dying_is_reported_broken_once_with_the_reason():
    clock, broken = Clock(), []

    async def serve():
        raise ValueError("always")

    asyncio.run(supervise(serve, name="the loop", restarts=3, window_s=60.0, on_broken=broken.append, clock=clock))
    assert len(broken) == 1 and "the loop died 4 times" in str(broken[0]) and "always" in str(broken[0])
