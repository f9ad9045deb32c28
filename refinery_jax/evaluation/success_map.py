"""Success maps: success rate on a grid over θ's x-y plane, at a few z slices.

Each cell is evaluated `trials` times (fresh nuisance draws: socket pose, yaw error,
observation noise), so a cell's rate carries binomial noise of about
sqrt(p(1-p)/trials). `summarize` reports the raw spatial standard deviation across
cells, that sampling noise, and a denoised spatial std: the cells' variance minus the
unbiased estimate of the binomial variance, mean(r(1-r)/(trials-1)), floored at 0.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class SuccessMap:
    x: np.ndarray     # [nx] cell centres (m)
    y: np.ndarray     # [ny]
    z: np.ndarray     # [nz]
    rate: np.ndarray  # [nz, ny, nx] success rate per cell
    trials: int       # episodes per cell


def grid_inits(low, high, nx: int, ny: int, nz: int, trials: int):
    """Cell centres of an nx x ny x nz grid over [low, high] and inits [nz*ny*nx*trials, d].

    With nz = 1 the single slice sits at the middle of the z range. Coordinates after z
    (θ_yaw) sit at the middle of their range.
    """
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)

    def centres(lo, hi, n):
        edges = np.linspace(lo, hi, n + 1)
        return 0.5 * (edges[:-1] + edges[1:])

    x, y, z = centres(low[0], high[0], nx), centres(low[1], high[1], ny), centres(low[2], high[2], nz)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    cells = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3)
    cells = np.concatenate([cells, np.broadcast_to(0.5 * (low[3:] + high[3:]), (len(cells), len(low) - 3))], axis=1)
    return x, y, z, np.repeat(cells, trials, axis=0).astype(np.float32)


def success_map(evaluate: Callable, policy, key: jax.Array, low, high, nx: int = 7, ny: int = 7, nz: int = 2,
                trials: int = 4) -> SuccessMap:
    """Evaluate `policy` on the grid (one batched call) and average per cell."""
    x, y, z, inits = grid_inits(low, high, nx, ny, nz, trials)
    success = np.asarray(evaluate(policy, inits, key).success, np.float64)
    return SuccessMap(x=x, y=y, z=z, rate=success.reshape(nz, ny, nx, trials).mean(-1), trials=trials)


def summarize(smap: SuccessMap) -> dict:
    """Mean, spatial std across cells (all slices; raw and denoised), per-slice stds, range, sampling noise."""
    rate = smap.rate
    noise_var = float(np.mean(rate * (1 - rate) / (smap.trials - 1))) if smap.trials > 1 else float("nan")
    return {
        "mean": float(rate.mean()),
        "spatial_std": float(rate.std()),
        "spatial_std_denoised": float(np.sqrt(max(0.0, rate.var() - noise_var))),
        "spatial_std_per_z": [float(s.std()) for s in rate],
        "min_cell": float(rate.min()),
        "max_cell": float(rate.max()),
        "cells": int(rate.size),
        "trials_per_cell": smap.trials,
        "sampling_std": float(np.mean(np.sqrt(rate * (1 - rate) / smap.trials))),
    }


def save_success_map(smap: SuccessMap, directory, stem: str = "success_map", title: str = "") -> dict:
    """Write `{stem}.png` (one heat map per z slice), `{stem}.npz` and `{stem}.json`; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {ext: directory / f"{stem}.{ext}" for ext in ("png", "npz", "json")}
    np.savez(paths["npz"], x=smap.x, y=smap.y, z=smap.z, rate=smap.rate, trials=smap.trials)
    stats = summarize(smap)
    paths["json"].write_text(json.dumps(stats, indent=2))

    nz = len(smap.z)
    fig, axes = plt.subplots(1, nz, figsize=(4.2 * nz + 0.8, 4.0), squeeze=False)
    mm = 1000.0
    dx = (smap.x[1] - smap.x[0]) if len(smap.x) > 1 else 1e-3
    dy = (smap.y[1] - smap.y[0]) if len(smap.y) > 1 else 1e-3
    extent = [mm * (smap.x[0] - dx / 2), mm * (smap.x[-1] + dx / 2), mm * (smap.y[0] - dy / 2),
              mm * (smap.y[-1] + dy / 2)]
    for ax, z, rate in zip(axes[0], smap.z, smap.rate):
        im = ax.imshow(rate, origin="lower", extent=extent, vmin=0.0, vmax=1.0, cmap="viridis", aspect="equal")
        ax.set_title(f"θ_z = {mm * z:.1f} mm")
        ax.set_xlabel("θ_x (mm)")
        ax.set_ylabel("θ_y (mm)")
    fig.colorbar(im, ax=axes[0].tolist(), label="success rate")
    fig.suptitle(title or f"success {stats['mean']:.2f}, spatial std {stats['spatial_std']:.3f} "
                 f"({smap.trials} trials/cell)")
    fig.savefig(paths["png"], dpi=100)
    plt.close(fig)
    return {k: str(v) for k, v in paths.items()}
