"""The grant window and the restart budget, alone."""

from leptonrt.broker.grants import Grants
from leptonrt.broker.restarts import RestartBudget


def grants(**kw) -> Grants:
    return Grants(window_s=0.03, min_window=4, max_window=256, granted=0, **kw)


def test_the_window_covers_its_time_of_work_within_its_bounds_and_far_when_nothing_can_change():
    g = grants()
    assert g.window(far=False) == 4            # nothing measured yet: the least
    g.stepped(0.001)
    assert g.window(far=False) == 30           # 30 ms of 1 ms steps
    g.stepped(1.0)
    assert g.window(far=False) == 4
    assert g.window(far=True) == 256
    g.boundary = 8
    assert g.window(far=True) == 4             # a regroup is coming: short again


def test_grants_stop_at_the_boundary_and_at_the_end_and_wait_while_enough_is_out():
    g = grants(step_s=0.001)
    assert g.next(-1, 100, far=False, topped_up=True) == (0, 30)
    assert g.next(0, 100, far=False, topped_up=True) is None        # 29 still out: enough
    assert g.next(20, 100, far=False, topped_up=True) == (30, 51)
    g.boundary = 56
    assert g.next(40, 100, far=False, topped_up=True) == (51, 56)
    assert g.next(55, 100, far=False, topped_up=True, force=True) is None   # nothing past the boundary
    g.boundary = None
    assert g.next(90, 100, far=False, topped_up=True) == (56, 100)
    assert g.next(99, 100, far=False, topped_up=True, force=True) is None   # nothing left


def test_the_restart_budget_counts_losses_within_its_window_only():
    budget = RestartBudget(max_restarts=2, window_s=60)
    assert budget.spend(1, 0.0) is None and budget.spend(1, 10.0) is None
    assert budget.spend(0, 11.0) is None                           # per rank
    assert "rank 1 was lost 3 times within 60 s" in budget.spend(1, 20.0)
    assert budget.spend(1, 100.0) is None                          # the old ones aged out
