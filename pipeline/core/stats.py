"""The statistics the gate and the reports judge with: paired tests and intervals, exact where
they can be.

Agreement on a few hundred or a thousand images moves by about a point between two equally good
int8 models (the standard error near 97% on 1,000 images is 0.54 points), so a fixed bound on it is
inside the noise. Two models measured on the same images are compared image by image instead:
only the images where they differ carry information, and those are what the tests below count.

- `mcnemar_p`: exact McNemar test (a binomial sign test on the discordant images), one-sided.
- `sign_flip_p`: paired randomization test of a mean difference (per-image KL), one-sided;
  seeded, so the same numbers give the same p.
- `wilson_interval`: the 95% interval of a proportion such as agreement.
"""

import math


def binomial_tail(successes, trials):
    """P(X ≥ successes) for X ~ Binomial(trials, 1/2), exactly (integer arithmetic)."""
    if trials <= 0 or successes <= 0:
        return 1.0
    if successes > trials:
        return 0.0
    tail = sum(math.comb(trials, k) for k in range(successes, trials + 1))
    return tail / 2**trials


def mcnemar_p(worse, better):
    """One-sided exact McNemar p-value that a change is for the worse: `worse` images went from
    right to wrong (agreeing to disagreeing), `better` the other way; under "no change" each
    discordant image is a fair coin. 1.0 when nothing changed."""
    return binomial_tail(worse, worse + better)


def sign_flip_p(differences, rounds=10000, seed=0):
    """One-sided p-value that the mean of paired `differences` (candidate − baseline, per image)
    is above 0: the share of `rounds` random sign flips whose mean is at least the observed one
    (with the observed one counted, so p ≥ 1/(rounds + 1)). Seeded."""
    import numpy as np

    d = np.asarray(differences, np.float64)
    if d.size == 0 or not np.any(d):
        return 1.0
    observed = d.mean()
    rng = np.random.default_rng(seed)
    at_least = 0
    done = 0
    while done < rounds:
        chunk = min(1000, rounds - done)
        signs = rng.integers(0, 2, (chunk, d.size), dtype=np.int8) * 2 - 1
        at_least += int(np.count_nonzero(signs @ d / d.size >= observed - 1e-15 * abs(observed)))
        done += chunk
    return (at_least + 1) / (rounds + 1)


def wilson_interval(successes, trials, z=1.959963984540054):
    """(low, high) 95% interval of a proportion (Wilson score interval)."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))
