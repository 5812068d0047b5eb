"""The WFN clustering in numpy: centres, the greedy rounds and their threshold, the statistics."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.passes.wfn.clustering import PAPER_SCHEDULE, CodebookStats, candidates, fix_round, power_terms, threshold


def test_candidates_are_zero_and_signed_powers_of_two_from_gamma0_down_order_plus_one():
    c = candidates(2.0**-5, 0.7, 0)
    positive = c[c > 0]
    np.testing.assert_array_equal(positive, [2.0**n for n in range(-6, 1)])  # 2^-6 .. 2^0, the first >= 0.7
    np.testing.assert_array_equal(c, np.concatenate([-positive[::-1], [0.0], positive]))
    assert c.dtype == np.float32
    with_sums = candidates(2.0**-5, 0.7, 1)
    assert set(positive) < set(with_sums)
    assert 0.75 in with_sums and 2.0**-7 + 2.0**-6 in with_sums  # sums of two distinct powers
    assert set(power_terms(with_sums[with_sums > 0])) == {1, 2}
    assert np.all(np.diff(with_sums) > 0)


def test_power_terms_counts_the_powers_of_two_a_value_sums():
    np.testing.assert_array_equal(power_terms(np.array([0.0, 0.5, -0.25, 0.75, 0.625, 0.875, 3.0])),
                                  [0, 1, 1, 2, 2, 3, 2])


def test_threshold_shrinks_to_delta():
    rounds = len(PAPER_SCHEDULE)
    limits = [threshold(t, rounds, 0.015) for t in range(rounds)]
    assert limits[0] == pytest.approx(0.015 * 9) and limits[7] == pytest.approx(0.015 * 2)
    assert limits[8] == limits[9] == pytest.approx(0.015)
    assert all(a >= b for a, b in zip(limits, limits[1:]))


def test_a_round_fixes_its_share_onto_centres_and_leaves_free_weights_alone():
    rng = np.random.default_rng(0)
    w = rng.laplace(0, 0.1, 5000).astype(np.float32)
    start = w.copy()
    fixed = np.zeros(w.size, bool)
    fix_round(w, fixed, 3000, 0.15, 2.0**-5, 0)
    assert fixed.sum() == 3000
    centres = candidates(2.0**-5, float(np.abs(start).max()), 0)
    assert np.isin(w[fixed], centres).all()
    np.testing.assert_array_equal(w[~fixed], start[~fixed])
    tiny = np.abs(start) < 2.0**-5
    assert (w[tiny & fixed] == 0).all()
    # Every fixed weight sits on the centre nearest to it, within the threshold on average per centre.
    moved = fixed & ~tiny
    rel = np.abs(start[moved] - w[moved]) / np.abs(start[moved])
    for c in np.unique(w[moved]):
        assert rel[w[moved] == c].mean() <= 0.15 + 1e-6


def test_tiny_weights_go_to_zero_smallest_first_when_the_target_is_short():
    w = np.array([0.001, -0.02, 0.004, 0.5, -0.25], np.float32)
    fixed = np.zeros(5, bool)
    fix_round(w, fixed, 2, 0.1, 2.0**-5, 0)
    np.testing.assert_array_equal(fixed, [True, False, True, False, False])
    np.testing.assert_array_equal(w, np.array([0.0, -0.02, 0.0, 0.5, -0.25], np.float32))


def test_a_tight_threshold_stalls_short_of_the_target_and_the_last_round_forces_the_rest():
    rng = np.random.default_rng(1)
    w = rng.uniform(0.1, 0.9, 2000).astype(np.float32)  # far from powers of two on average
    start = w.copy()
    fixed = np.zeros(w.size, bool)
    fix_round(w, fixed, 1900, 0.001, 2.0**-5, 0)
    assert 0 < fixed.sum() < 1900
    fix_round(w, fixed, w.size, 0.001, 2.0**-5, 0, force_rest=True)
    centres = candidates(2.0**-5, 0.9, 0)
    assert fixed.all() and np.isin(w, centres).all()
    nearest = centres[np.abs(start[:, None] - centres[None, :]).argmin(axis=1)]
    np.testing.assert_array_equal(w, nearest)  # order 0: each on its nearest power of two
    # With order 1 the forced rest lands on the finer grid of sums of two powers.
    w1, fixed1 = start.copy(), np.zeros(w.size, bool)
    fix_round(w1, fixed1, w.size, 0.001, 2.0**-5, 1, force_rest=True)
    assert fixed1.all() and np.isin(w1, candidates(2.0**-5, 0.9, 1)).all()
    assert np.abs(w1 - start).mean() < np.abs(w - start).mean()


def test_order_one_uses_sums_of_two_powers_only_where_single_powers_do_not_fit():
    w = np.array([0.75, 0.76, 0.74, 0.5, 0.5001], np.float32)
    fixed = np.zeros(5, bool)
    fix_round(w, fixed, 5, 0.01, 2.0**-5, 1)
    assert fixed.all()
    np.testing.assert_array_equal(w, [0.75, 0.75, 0.75, 0.5, 0.5])


def test_codebook_stats_by_hand():
    values = np.array([0, 0, 0.5, -0.25, 0.75, 0.75], np.float32)
    s = CodebookStats.of(values)
    assert (s.weights, s.unique) == (6, 4)
    assert s.zeros == pytest.approx(2 / 6)
    assert (s.power_of_two, s.sum_of_two) == (pytest.approx(0.5), pytest.approx(0.5))
    p = np.array([2, 1, 1, 2]) / 6
    assert s.entropy_bits == pytest.approx(-(p * np.log2(p)).sum())
    q = np.array([1, 1, 2]) / 4
    assert s.entropy_nonzero_bits == pytest.approx(-(q * np.log2(q)).sum())
    assert s.codebook == (-0.25, 0.0, 0.5, 0.75)
    assert CodebookStats.of(np.zeros(3, np.float32)).entropy_bits == 0.0
