"""Confidence intervals and paired tests for accuracies measured on the same problems.

>>> low, high = wilson_interval(8, 10)
>>> round(low, 3), round(high, 3)
(0.49, 0.943)
>>> mcnemar_exact(0, 6)   # one strategy right on 6 problems the other got wrong, never the reverse
0.03125
"""

from __future__ import annotations

import math

__all__ = ["wilson_interval", "mcnemar_exact", "paired_counts", "t_quantile_90"]


def wilson_interval(successes: int, total: int, *, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval for a proportion (95% by default); (0, 1) when `total` is 0.

    Unlike the normal approximation it stays inside [0, 1] and behaves at 0% and 100%.
    """
    if total < 0 or not 0 <= successes <= total:
        raise ValueError(f"need 0 <= successes <= total, got {successes} of {total}")
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    # At 0 and n the bound is exactly 0 or 1; floating point would leave it a hair short.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return low, high


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs.

    `only_a` problems were solved by A and not B, `only_b` the reverse. Under the null hypothesis each
    discordant pair is a fair coin, so the p-value is a two-sided binomial test with p = 1/2.
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts must be >= 0, got {only_a} and {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_counts(a: dict[str, bool], b: dict[str, bool]) -> tuple[int, int, int, int]:
    """(both right, only A right, only B right, both wrong) over the problems present in both."""
    common = a.keys() & b.keys()
    both = sum(1 for key in common if a[key] and b[key])
    only_a = sum(1 for key in common if a[key] and not b[key])
    only_b = sum(1 for key in common if b[key] and not a[key])
    return both, only_a, only_b, len(common) - both - only_a - only_b


# Student's t, 90th percentile, by degrees of freedom (standard tables); the normal's beyond 30.
_T90 = {1: 3.078, 2: 1.886, 3: 1.638, 4: 1.533, 5: 1.476, 6: 1.440, 7: 1.415, 8: 1.397, 9: 1.383, 10: 1.372,
        12: 1.356, 15: 1.341, 20: 1.325, 30: 1.310}


def t_quantile_90(df: int) -> float:
    """Student's t at 0.90, the half-width factor of a two-sided 80% interval, for `df` degrees of freedom
    (between tabled values, the next larger one's).

    >>> t_quantile_90(7), t_quantile_90(11), t_quantile_90(100)
    (1.415, 1.356, 1.282)
    """
    return next((value for limit, value in sorted(_T90.items()) if df <= limit), 1.282)
