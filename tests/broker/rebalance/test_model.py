"""The cost models as estimators: what they recover, what they ignore, when they see a change."""

import gzip
import math
from pathlib import Path

import numpy as np
import pytest

from leptonrt.broker.rebalance.model import CollectiveModel, CostModel, cusum_threshold

A, C = 0.5e-3, 10e-6        # a step of 512 rows: 0.5 ms fixed + 5.1 ms of rows


def _fed(rows, cv=0.10, seed=0, a=A, c=C, model=None):
    """A model fed steps of ``rows`` (one per step) with Gaussian noise of ``cv``."""
    rng = np.random.default_rng(seed)
    model = model or CostModel()
    for r in rows:
        model.update(int(r), (a + c * r) * (1 + cv * rng.standard_normal()))
    return model


def test_varied_rows_recover_the_fixed_cost_and_the_cost_per_row():
    rng = np.random.default_rng(1)
    model = _fed(rng.integers(200, 800, 400))
    a, c, paa, _, pcc = model.state()
    assert abs(a - A) < 4 * math.sqrt(paa) and abs(c - C) < 4 * math.sqrt(pcc)
    assert math.sqrt(pcc) < 0.05 * C          # the slope is known to a few percent
    assert 0.08 < model.noise < 0.12


def test_the_spread_of_the_prediction_covers_the_truth_about_as_often_as_it_says():
    inside = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        model = _fed(rng.integers(200, 800, 150), seed=seed)
        mean, sd = model.predict(512)
        inside += abs(mean - (A + C * 512)) <= 2 * sd
    assert inside >= 50      # 2 sd covers 95% when calibrated; forgetting makes it wider


def test_rows_that_never_vary_pin_the_step_but_not_its_split_into_fixed_and_per_row_cost():
    model = _fed([512] * 400)
    here, here_sd = model.predict(512)
    far, far_sd = model.predict(128)
    assert abs(here - (A + C * 512)) < 0.03 * here and here_sd < 0.02 * here
    assert far_sd > 5 * here_sd              # extrapolating says how little it knows


def test_a_lone_spike_barely_moves_the_fit_and_is_no_change():
    model = _fed([512] * 300)
    before = model.predict(512)[0]
    model.update(512, 10 * before)
    assert not model.changed()
    assert abs(model.predict(512)[0] - before) < 0.01 * before


def test_a_lasting_2x_slowdown_is_detected_within_a_few_steps_and_fitted_at_once():
    model = _fed([512] * 300)
    rng = np.random.default_rng(7)
    for step in range(1, 20):
        model.update(512, 2 * (A + C * 512) * (1 + 0.1 * rng.standard_normal()))
        if model.changed():
            break
    assert step <= 8 and model.changes == 1
    assert model.predict(512)[0] == pytest.approx(2 * (A + C * 512), rel=0.12)
    assert 1.8 < model.last_change < 2.2


def test_a_device_twice_as_slow_is_so_for_its_fixed_cost_too():
    rng = np.random.default_rng(2)
    model = _fed(rng.integers(200, 800, 400))
    a_before = model.a
    _fed([512] * 40, a=2 * A, c=2 * C, model=model, seed=3)
    assert model.changes == 1 and model.a == pytest.approx(2 * a_before, rel=0.25)


def test_false_alarms_on_pure_noise_come_at_roughly_the_stated_rate():
    model = _fed([512] * 20_000, model=CostModel(false_alarm=1e-2))
    assert 0.3 * 200 < model.changes < 3 * 200


def test_the_change_threshold_grows_as_the_false_alarm_rate_shrinks():
    assert cusum_threshold(1e-2) < cusum_threshold(1e-4) < cusum_threshold(1e-6)
    assert cusum_threshold(1e-6) == pytest.approx(12.65, abs=0.05)   # Siegmund, k = 0.5


def test_a_step_with_no_rows_says_nothing_about_compute():
    model = _fed([512] * 50)
    state = model.state()
    model.update(0, 1.0)
    assert model.state() == state and model.observations == 50


def test_what_the_model_knew_fades_toward_its_prior_while_it_is_not_fed():
    model = _fed([512] * 300)
    assert model.predict(512, idle=500)[1] > 5 * model.predict(512)[1]


def test_a_collective_of_one_member_costs_nothing():
    assert CollectiveModel().predict([0]) == (0.0, 0.0)
    assert CollectiveModel().predict([0, 1]) is None


def test_a_slow_collective_step_barely_moves_its_estimate():
    coll = CollectiveModel()
    for _ in range(200):
        coll.update([0, 1], 2e-3)
    coll.update([0, 1], 50e-3)
    assert coll.predict([0, 1])[0] == pytest.approx(2e-3, rel=0.02)


def test_a_group_size_never_seen_is_guessed_from_the_nearest_with_a_wide_spread():
    coll = CollectiveModel()
    for _ in range(100):
        coll.update(range(8), 1e-3)
    mean, sd = coll.predict(range(16))
    assert mean == pytest.approx(1e-3 * 4 / 3) and sd >= 0.5 * (mean - 1e-3)


def test_a_live_run_of_one_actor_with_many_changes_keeps_a_physical_fit():
    """Recorded live (synthetic 20000x64, batch 64, two CPU actors, one of them on standby
    from step 8; the other's compute seconds, in microseconds): its first 6 steps at 32 rows,
    the rest at 64, 73 changes of speed in 25,681 steps. When each change scaled the prior by
    its ratio, the errors compounded: the prior's level drifted a million-fold, the fit went
    along the direction constant rows leave open (a = 2.9 s, c = -0.045 s/row) and at step
    25,629 its information was singular (a ZeroDivisionError that ended the run)."""
    raw = gzip.decompress((Path(__file__).parent / "data" / "one_actor_alone_us.u16.gz").read_bytes())
    seconds = np.frombuffer(raw, dtype="<u2").astype(float) * 1e-6
    model = CostModel()
    for i, t in enumerate(seconds):
        model.update(32 if i < 6 else 64, float(t))
    assert model.changes > 50
    mean, _sd = model.predict(64)
    assert 0.5 * np.median(seconds) < mean < 2 * np.median(seconds)
    assert model.a > -1e-4 and model.c > 0     # a fixed cost near or above 0, and a cost per row
