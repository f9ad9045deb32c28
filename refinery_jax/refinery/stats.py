"""Summary statistics for the comparison table: means, confidence intervals, spread over θ."""

from __future__ import annotations

import math

import numpy as np

# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (then the normal's 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(dof: int) -> float:
    if dof < 1:
        raise ValueError(f"need at least 1 degree of freedom, got {dof}")
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    if trials < 1:
        raise ValueError("trials must be positive")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize_seeds(success: np.ndarray) -> dict:
    """Per-seed outcomes [S, N] (bool) → mean, std across seeds, 95 % CI, per-seed rates.

    With S >= 2 the interval is Student's t over the seeds' rates (seed-to-seed
    variation: training is the dominant noise); with one seed it is the Wilson
    interval of that seed's N trials (evaluation noise only). `ci_method` says which.
    """
    success = np.asarray(success, bool)
    if success.ndim != 2 or success.shape[1] == 0:
        raise ValueError(f"success must be [seeds, trials], got shape {success.shape}")
    rates = success.mean(axis=1)
    s = len(rates)
    mean = float(rates.mean())
    if s >= 2:
        std = float(rates.std(ddof=1))
        half = t_quantile_975(s - 1) * std / math.sqrt(s)
        low, high, method = max(0.0, mean - half), min(1.0, mean + half), f"student_t_over_{s}_seeds"
    else:
        std = 0.0
        low, high = wilson_interval(int(success.sum()), success.size)
        method = f"wilson_over_{success.size}_trials"
    return {"success_mean": mean, "success_std": std, "ci95_low": low, "ci95_high": high, "ci_method": method,
            "per_seed": rates.tolist(), "trials_per_seed": int(success.shape[1])}


def cell_variance(inits: np.ndarray, success: np.ndarray, low, high, cells: int = 3, min_trials: int = 10) -> dict:
    """Variance of the success rate across an x-y grid of θ cells (cells x cells).

    Only cells with at least `min_trials` trials count (GMM deployment concentrates
    its trials in few cells). `variance_denoised` subtracts the binomial sampling
    variance of the cell means, mean(r(1 - r) / (n - 1)), floored at 0.
    """
    inits, success = np.asarray(inits, np.float64), np.asarray(success, np.float64)
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    ij = np.floor((inits[:, :2] - low[:2]) / (high[:2] - low[:2]) * cells).astype(int).clip(0, cells - 1)
    flat = ij[:, 0] * cells + ij[:, 1]
    counts = np.bincount(flat, minlength=cells * cells)
    sums = np.bincount(flat, weights=success, minlength=cells * cells)
    used = counts >= min_trials
    if not used.any():
        return {"variance": float("nan"), "variance_denoised": float("nan"), "cells_used": 0, "cells": cells * cells}
    rates, n = sums[used] / counts[used], counts[used]
    noise = float(np.mean(rates * (1 - rates) / np.maximum(n - 1, 1)))
    var = float(rates.var())
    return {"variance": var, "variance_denoised": max(0.0, var - noise), "cells_used": int(used.sum()),
            "cells": cells * cells, "min_cell": float(rates.min()), "max_cell": float(rates.max())}


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar test: p-value of b vs c discordant pairs under H0 (each
    discordant pair goes either way with probability 1/2), i.e. a binomial test."""
    if min(b, c) < 0:
        raise ValueError(f"discordant counts must be non-negative, got {(b, c)}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integers until this one division


def paired_difference(success: np.ndarray, reference: np.ndarray) -> dict:
    """Paired difference of success rates, row minus reference, from outcomes [S, N] (bool)
    measured on the same trials (same θ or the same draw keys, same nuisance keys).

    The interval: with S >= 2 seeds, Student's t over the seeds' paired differences (as
    `summarize_seeds`); with one seed, the Wald interval of a paired difference of
    proportions with Agresti and Min's (2005) +1/2 in every cell of the 2x2 table, which
    stays informative when no pair is discordant. `mcnemar_p` is the exact McNemar test on
    the discordant pairs pooled over seeds; `row_only` / `reference_only` count them.
    """
    success, reference = np.asarray(success, bool), np.asarray(reference, bool)
    if success.shape != reference.shape or success.ndim != 2 or success.shape[1] == 0:
        raise ValueError(f"need two [seeds, trials] arrays of one shape, got {success.shape} and {reference.shape}")
    seeds, n = success.shape
    per_seed = success.mean(axis=1) - reference.mean(axis=1)
    b, c = int(np.sum(success & ~reference)), int(np.sum(~success & reference))
    mean = float(per_seed.mean())
    if seeds >= 2:
        half = t_quantile_975(seeds - 1) * float(per_seed.std(ddof=1)) / math.sqrt(seeds)
        low, high, method = mean - half, mean + half, f"student_t_over_{seeds}_seeds"
    else:
        b_, c_, n_ = b + 0.5, c + 0.5, n + 2.0
        diff = (b_ - c_) / n_
        half = 1.96 * math.sqrt(max((b_ + c_) - (b_ - c_) ** 2 / n_, 0.0)) / n_
        low, high, method = diff - half, diff + half, f"agresti_min_wald_over_{n}_pairs"
    return {"difference": mean, "ci95_low": max(-1.0, low), "ci95_high": min(1.0, high), "ci_method": method,
            "per_seed": per_seed.tolist(), "row_only": b, "reference_only": c, "mcnemar_p": mcnemar_exact_p(b, c)}
