"""Batch arithmetic: pieces tile every global batch exactly, in every process alike."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from leptonrt.batches import (batch_rows, even_split, fold, history_start, piece, scale_split,
                              split_from_fractions, steps_per_epoch)
from leptonrt.nn.order import epoch_permutation


@given(st.lists(st.integers(0, 500), min_size=1, max_size=8).filter(lambda s: sum(s) > 0), st.data())
def test_pieces_are_contiguous_and_tile_any_batch(split, data):
    rows = data.draw(st.integers(0, sum(split)))
    bounds = [piece(split, rows, r) for r in range(len(split))]
    assert bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert sum(scale_split(split, rows)) == rows


def test_a_full_batch_keeps_the_split_as_given():
    assert scale_split([45, 19], 64) == [45, 19]


def test_a_short_last_batch_is_split_in_proportion():
    assert scale_split([45, 19], 29) == [20, 9]
    assert scale_split([64, 0], 10) == [10, 0]


def test_every_sample_is_used_once_per_epoch_including_a_short_last_batch():
    n, b = 1437, 64
    spe = steps_per_epoch(n, b)
    assert spe == 23 and sum(batch_rows(n, b, t) for t in range(spe)) == n


def test_fraction_shares_become_rows_that_sum_to_the_batch():
    assert split_from_fractions(64, [0.7, 0.3]) == [45, 19]
    assert split_from_fractions(10, [1, 1, 1]) == [4, 3, 3]


def test_even_split_respects_alignment():
    assert even_split(64, 3, align=8) == [24, 24, 16]
    assert sum(even_split(1001, 4, align=8)) == 1001


def test_the_epoch_permutation_depends_only_on_seed_and_epoch():
    assert torch.equal(epoch_permutation(100, 5, 2), epoch_permutation(100, 5, 2))
    assert not torch.equal(epoch_permutation(100, 5, 2), epoch_permutation(100, 5, 3))
    assert sorted(epoch_permutation(100, 5, 2).tolist()) == list(range(100))


def test_the_history_digest_depends_on_the_steps_and_their_order_not_on_anything_else():
    def digest(steps, seed=0):
        d = history_start(seed, 1000, 64)
        for g in steps:
            d = fold(d, g, 1000, 64)
        return d
    assert digest(range(40)) == digest(range(40))
    assert digest(range(40)) != digest([*range(20), 19, *range(20, 40)])   # a step trained twice
    assert digest(range(40)) != digest([*range(19), *range(20, 40)])       # a step lost
    assert digest(range(40)) != digest([1, 0, *range(2, 40)])              # two steps swapped
    assert digest(range(40)) != digest(range(40), seed=1)                  # another data order
