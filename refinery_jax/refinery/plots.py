"""Figures of a Refinery run (matplotlib, Agg): GP maps, GMM density, the fine-tuning history.

Each function takes plain arrays (as saved in a results directory's `arrays.npz`), so
the experiment script and the notebook draw the same pictures.
"""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np

from refinery_jax.success_models import GPParams, condition_gp, gmm_log_prob, posterior
from refinery_jax.success_models.gmm import GMMParams

MM = 1000.0


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(low, high, n):
    xs, ys = np.linspace(low[0], high[0], n), np.linspace(low[1], high[1], n)
    xx, yy = np.meshgrid(xs, ys)
    return xs, ys, xx, yy


def _slice_points(xx, yy, z, low, high) -> np.ndarray:
    """θ [n², d] of an x-y grid at θ_z = z; any further coordinates (θ_yaw) at the box's middle."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    rest = np.broadcast_to(0.5 * (low[3:] + high[3:]), (xx.size, len(low) - 3))
    return np.concatenate([np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, z)], axis=1), rest], axis=1)


def _extent(low, high):
    return [MM * low[0], MM * high[0], MM * low[1], MM * high[1]]


def gp_maps(params: GPParams, x, y, low, high, z_values, n: int = 41, weights=None):
    """GP posterior mean and std of success [len(z), n, n] on an x-y grid at each z (data
    `weights` as in `fit_gp`: precision multipliers, 0 for padding)."""
    state = condition_gp(params, x, y, low, high, weights=weights)
    _, _, xx, yy = _grid(low, high, n)
    means, stds = [], []
    for z in z_values:
        query = _slice_points(xx, yy, z, low, high).astype(np.float32)
        mu, sd = posterior(state, jnp.asarray(query))
        means.append(np.asarray(mu).reshape(n, n))
        stds.append(np.asarray(sd).reshape(n, n))
    return np.stack(means), np.stack(stds)


def plot_gp(params: GPParams, x, y, low, high, path, proposals=None, title: str = "", n: int = 41, weights=None):
    """Mean and σ of the GP over θ_x-θ_y at the lowest and highest θ_z, with the data of full
    weight (the round's own evaluations) and the proposals."""
    plt = _pyplot()
    low, high = np.asarray(low), np.asarray(high)
    z_values = (low[2], high[2])
    mean, std = gp_maps(params, x, y, low, high, z_values, n, weights)
    if weights is not None:  # draw the round's own points; earlier rounds only shape the posterior
        own = np.asarray(weights) >= np.max(weights)
        x, y = np.asarray(x)[own], np.asarray(y)[own]
    fig, axes = plt.subplots(2, 2, figsize=(10, 8.5), squeeze=False)
    for col, z in enumerate(z_values):
        for row, (grid, label, cmap, vmax) in enumerate(((mean, "GP mean of success", "viridis", 1.0),
                                                         (std, "GP σ", "magma", None))):
            ax = axes[row][col]
            im = ax.imshow(grid[col], origin="lower", extent=_extent(low, high), cmap=cmap,
                           vmin=0.0 if vmax else None, vmax=vmax, aspect="equal")
            fig.colorbar(im, ax=ax, label=label)
            x_np, y_np = np.asarray(x), np.asarray(y, bool)
            ax.scatter(MM * x_np[y_np, 0], MM * x_np[y_np, 1], s=6, c="white", edgecolors="none", label="success")
            ax.scatter(MM * x_np[~y_np, 0], MM * x_np[~y_np, 1], s=6, c="red", edgecolors="none", label="failure")
            if proposals is not None:
                p = np.asarray(proposals)
                ax.scatter(MM * p[:, 0], MM * p[:, 1], s=30, marker="x", c="cyan", label="proposals")
            ax.set_title(f"{label}, θ_z = {MM * z:.1f} mm (points: all z)")
            ax.set_xlabel("θ_x (mm)")
            ax.set_ylabel("θ_y (mm)")
    axes[0][0].legend(loc="upper right", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def gmm_density_map(gmm: GMMParams, low, high, z, n: int = 61):
    """Log density [n, n] over θ on an x-y grid at θ_z = z (θ_yaw, if any, at the box's middle),
    of a GMM fitted in the unit box of [low, high] (`deployment.fit_success_model`)."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    _, _, xx, yy = _grid(low, high, n)
    query = _slice_points(xx, yy, z, low, high)
    u = ((query - low) / (high - low)).astype(np.float32)
    log_p = np.asarray(gmm_log_prob(gmm, jnp.asarray(u)), np.float64) - np.sum(np.log(high - low))
    return log_p.reshape(n, n)


def plot_gmm(gmm: GMMParams, low, high, chosen, path, fit_inits=None, fit_success=None, title: str = ""):
    """GMM density at the chosen inits' median θ_z, the successes it was fitted to, and the chosen inits."""
    plt = _pyplot()
    low, high, chosen = np.asarray(low), np.asarray(high), np.asarray(chosen)
    z = float(np.median(chosen[:, 2]))
    log_p = gmm_density_map(gmm, low, high, z)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(np.exp(log_p - log_p.max()), origin="lower", extent=_extent(low, high), cmap="Blues",
                   aspect="equal")
    fig.colorbar(im, ax=ax, label=f"GMM density at θ_z = {MM * z:.1f} mm (relative)")
    if fit_inits is not None:
        ok = np.asarray(fit_success, bool)
        ax.scatter(MM * fit_inits[ok, 0], MM * fit_inits[ok, 1], s=4, c="grey", alpha=0.5, label="fitted successes")
    ax.scatter(MM * chosen[:, 0], MM * chosen[:, 1], s=8, c="orange", edgecolors="k", linewidths=0.3,
               label="chosen inits")
    ax.set_xlim(MM * low[0], MM * high[0])
    ax.set_ylim(MM * low[1], MM * high[1])
    ax.set_xlabel("θ_x (mm)")
    ax.set_ylabel("θ_y (mm)")
    ax.legend(loc="upper right", fontsize=7)
    fig.suptitle(title, fontsize=11)  # over the whole figure: a long title would run into the colour bar
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def plot_history(success_rate, rounds, path, title: str = ""):
    """Evaluation success per fine-tuning round, one line per seed. success_rate: [S, R]; rounds: [S]."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for s, (rates, r) in enumerate(zip(np.asarray(success_rate), np.asarray(rounds))):
        ax.plot(np.arange(1, r + 1), rates[:r], marker="o", label=f"seed {s}")
    ax.set_xlabel("round (evaluation before fine-tuning)")
    ax.set_ylabel("success on the round's θ")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def plot_table(table: dict, path, title: str = ""):
    """Bar chart of the comparison: mean success with the 95 % interval, per-seed points."""
    plt = _pyplot()
    names = list(table)
    means = np.array([table[m]["success_mean"] for m in names])
    err = np.array([[m - table[k]["ci95_low"], table[k]["ci95_high"] - m] for k, m in zip(names, means)]).T
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(names, means, yerr=err, capsize=4, color="#7aa6c2")
    for i, k in enumerate(names):
        per_seed = table[k]["per_seed"]
        ax.scatter(np.full(len(per_seed), i), per_seed, c="k", s=10, zorder=3)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("success (fresh trials)")
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def draw_run_figures(run, directory, task: str = "", seed: int = 0) -> dict:
    """All figures of a run (a `results_io.RunData`) into `directory`; returns their paths by name."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    a = run.arrays
    figures = {}
    last = int(a["rounds"][seed]) - 1
    for tag, r in (("first", 0), ("last", last)):
        params, x, y, weights, proposals = run.gp_round(seed, r)
        figures[f"gp_{tag}_round"] = plot_gp(params, x, y, run.low, run.high, directory / f"gp_{tag}_round.png",
                                             proposals=proposals, title=f"{task} GP of success, seed {seed}, round {r + 1}",
                                             weights=weights)
    for which, method in (("baseline", "deployment"), ("finetuned", "refinery")):
        chosen, _ = run.fresh(method, seed)
        figures[f"gmm_{which}"] = plot_gmm(run.gmm(which, seed), run.low, run.high, chosen, directory / f"gmm_{which}.png",
                                           a[f"gmm/{which}/fit_inits"][seed], a[f"gmm/{which}/fit_success"][seed],
                                           title=f"{method}: GMM of the {which} policy's successes, seed {seed}")
    figures["finetune_history"] = plot_history(a["history/success_rate"], a["rounds"],
                                               directory / "finetune_history.png", title=f"{task} BO fine-tuning")
    figures["comparison"] = plot_table(run.results["methods"], directory / "comparison.png",
                                       title=f"{task}, {len(a['rounds'])} seed(s)")
    return figures


def plot_sequence(paper: dict, chained: dict, path, title: str = ""):
    """Like the paper's Fig. 5: per method, success of each stage (paper mode, its own starts) and
    of the whole sequence in the paper's and the chained mode, with 95 % intervals."""
    plt = _pyplot()
    methods = list(dict.fromkeys(list(paper) + list(chained)))
    stages = len((paper or chained)[methods[0]]["stages"])
    groups = [f"stage {k + 1}" for k in range(stages)] + ["sequence\n(paper)", "sequence\n(chained)"]
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(1.3 * len(groups) + 2, 4))
    for i, m in enumerate(methods):
        rows = [paper[m]["stages"][k] if m in paper else None for k in range(stages)]
        rows += [paper[m]["sequence"] if m in paper else None, chained[m]["sequence"] if m in chained else None]
        x = np.arange(len(groups)) + (i - (len(methods) - 1) / 2) * width
        means = np.array([r["success_mean"] if r else np.nan for r in rows])
        err = np.array([[r["success_mean"] - r["ci95_low"], r["ci95_high"] - r["success_mean"]] if r else [0, 0]
                        for r in rows]).T
        ax.bar(x, means, width, yerr=err, capsize=2, label=m)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("success (fresh trials)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=min(len(methods), 5), loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)
