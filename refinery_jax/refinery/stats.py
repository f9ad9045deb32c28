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
