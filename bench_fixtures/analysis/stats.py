"""The statistics the gate decides with, in one place: each answers "is this change bigger than what
the measurement itself can show?" in the way that fits how the numbers were taken.

- paired rounds (A/B in one session): drift hits both sides, so the paired ratios are tested
  (one-sided Wilcoxon signed-rank on their logarithms);
- several stored runs (history): the runs' own spread is the noise band;
- an accuracy on N test images: a two-proportion test, and the smallest drop N can resolve;
- a median over a few rounds (the overhead ratios): a distribution-free interval from order statistics.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

NOISE_FACTOR = 2.0  # history: a change must exceed twice the largest deviation identical runs showed


@dataclass(frozen=True)
class Paired:
    """Candidate over baseline, from rounds taken in alternation."""
    pairs: int
    median_ratio: float   # median of candidate/baseline per pair; > 1 = the candidate took longer
    low: float            # smallest and largest ratio seen
    high: float
    p: float              # one-sided: the candidate is slower


def paired(baseline: list[float], candidate: list[float]) -> Paired:
    """BASELINE[i] and CANDIDATE[i] were taken next to each other (same drift)."""
    if len(baseline) != len(candidate) or not baseline:
        raise ValueError("paired rounds need equally many rounds on both sides, at least one")
    ratios = [c / b for b, c in zip(baseline, candidate)]
    logs = [math.log(r) for r in ratios]
    if all(x == 0 for x in logs):
        p = 1.0
    else:
        # exact for the pair counts a session runs (ties included), the normal approximation beyond
        p = float(_st.wilcoxon(logs, alternative="greater", zero_method="zsplit",
                               method="exact" if len(logs) <= 50 else "auto").pvalue)
    return Paired(len(ratios), statistics.median(ratios), min(ratios), max(ratios), p)


def min_paired_p(pairs: int) -> float:
    """The smallest p the signed-rank test can give with PAIRS pairs (all ratios on one side)."""
    return 0.5 ** pairs


def noise(values: list[float], relative: bool) -> float:
    """The largest deviation of VALUES (identical runs) from their median: relative to it, or absolute."""
    mid = statistics.median(values)
    worst = max(abs(v - mid) for v in values)
    return worst / abs(mid) if relative and mid else worst


def accuracy_drop_p(before: float, n_before: int, after: float, n_after: int) -> float:
    """One-sided p that the accuracy really dropped from BEFORE (on N_BEFORE images) to AFTER: the
    pooled two-proportion z-test. 1.0 when it did not drop."""
    if after >= before:
        return 1.0
    pooled = (before * n_before + after * n_after) / (n_before + n_after)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_before + 1 / n_after))
    return 0.0 if se == 0 else float(_st.norm.sf((before - after) / se))


def resolvable_drop(accuracy: float, n: int, alpha: float) -> float:
    """The smallest accuracy drop (a fraction) that N test images can show at level ALPHA, two runs of
    N each: below it the gate cannot tell a real drop from which images happened to be right."""
    p = min(max(accuracy, 1 / n), 1 - 1 / n)
    return float(_st.norm.isf(alpha)) * math.sqrt(2 * p * (1 - p) / n)


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """A confidence interval for the median of VALUES: (low, high, coverage).

    Rounds are few and their times skewed (a neighbour, a clock change), so nothing is assumed about
    their distribution: [x(k), x(n+1-k)] of the sorted values misses the true median only when k or
    more values fall on one side of it, which has probability 2 P(B <= k-1), B ~ Binomial(n, 1/2).
    The narrowest such pair with coverage >= LEVEL; when N is too small to reach LEVEL, the full
    range [min, max] with the coverage it has, 1 - 2 * 0.5**n (0 for one value)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("median_interval needs at least one value")
    if any(math.isnan(x) for x in xs):
        raise ValueError("median_interval: NaN among the values")
    if not 0 < level < 1:
        raise ValueError(f"median_interval: level must lie in (0, 1), not {level}")
    n = len(xs)
    ks = np.arange(1, n // 2 + 1)                        # k < n+1-k: a pair of distinct ranks
    coverage = 1 - 2 * _st.binom.cdf(ks - 1, n, 0.5)     # falls as k rises
    ok = np.nonzero(coverage >= level - 1e-12)[0]
    k = int(ks[ok[-1]]) if ok.size else 1
    cov = float(coverage[k - 1]) if ok.size else 1 - 2 * 0.5 ** n
    return xs[k - 1], xs[n - k], max(cov, 0.0)
