import math

import pytest

from dd_prompting.stats import mcnemar_exact, paired_counts, wilson_interval


@pytest.mark.parametrize("k, n, low, high", [
    # Newcombe (1998), Statistics in Medicine 17:857, table I (Wilson score method)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_published_values(k, n, low, high):
    got_low, got_high = wilson_interval(k, n)
    assert got_low == pytest.approx(low, abs=1e-4) and got_high == pytest.approx(high, abs=1e-4)


def test_wilson_interval_is_symmetric_and_bounded():
    low, high = wilson_interval(3, 10)
    mirror_low, mirror_high = wilson_interval(7, 10)
    assert low == pytest.approx(1 - mirror_high) and high == pytest.approx(1 - mirror_low)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def brute_force_mcnemar(b, c):
    n = b + c
    probabilities = [math.comb(n, i) / 2 ** n for i in range(n + 1)]
    observed = probabilities[b]
    return min(1.0, sum(p for p in probabilities if p <= observed + 1e-15))


@pytest.mark.parametrize("b, c", [(0, 0), (0, 6), (7, 0), (3, 9), (10, 10), (1, 2), (25, 40)])
def test_exact_mcnemar_is_the_two_sided_binomial_test(b, c):
    assert mcnemar_exact(b, c) == pytest.approx(brute_force_mcnemar(b, c))
    assert mcnemar_exact(b, c) == mcnemar_exact(c, b)


def test_paired_counts_use_only_shared_problems():
    a = {"1": True, "2": True, "3": False, "4": False, "5": True}
    b = {"1": True, "2": False, "3": True, "4": False, "6": True}
    assert paired_counts(a, b) == (1, 1, 1, 1)
