"""The comparison of the Refinery paper, plus the control it does not report.

From trained specialists (one per seed, stacked on a leading axis):

    Baseline          specialist, uniform θ
    Deployment        specialist, θ from its success GMM (Algorithm 2)
    Fine-tune         BO-guided fine-tuning (Algorithm 1), uniform θ
    Refinery          fine-tuned policy, θ from its success GMM
    Uniform fine-tune the same fine-tuning rounds and env steps with uniform resets, uniform θ

Every row is measured on `eval_trials` fresh episodes from one key stream used for
nothing else (not to fit a GMM, not to fit a GP, not to choose a checkpoint), with
common random numbers: trial i of every row has the same episode key (socket pose,
goal and observation noise, action-frame error), the rows with uniform θ (Baseline,
Fine-tune, Uniform fine-tune) the same θ, and the rows with GMM θ (Deployment,
Refinery) the same sampling key. The table gives each row's rate and its paired
difference to Baseline (`stats.paired_difference`). Seeds run as one `vmap` per stage.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from refinery_jax.envs.samplers import uniform_box
from refinery_jax.mesh import in_mesh, to_host
from refinery_jax.ppo.train import Trainer, TrainState
from refinery_jax.refinery.deployment import SUCCESS_GMM, concentration, deployment_sampler, fit_success_model
from refinery_jax.refinery.finetune import FineTune, FineTuneConfig, FineTuneState, make_finetune, share_programs
from refinery_jax.refinery.stats import cell_variance, paired_difference, summarize_seeds
from refinery_jax.success_models import DeploymentConfig, GMMConfig

METHODS = ("baseline", "deployment", "finetune", "refinery", "uniform_finetune")
KEY_STREAMS = ("finetune", "control", "gmm_baseline", "gmm_finetuned", "fresh")


@dataclasses.dataclass(frozen=True)
class ComparisonConfig:
    eval_trials: int = 1000    # fresh episodes per method and seed
    gmm_inits: int = 1000      # N of Algorithm 2
    finetune: FineTuneConfig = FineTuneConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    gmm: GMMConfig = SUCCESS_GMM  # in the unit box of θ (deployment.py)
    cells: int = 3             # θ cells per x-y axis for the spread of success

    def __post_init__(self):
        if min(self.eval_trials, self.gmm_inits, self.cells) < 1:
            raise ValueError(f"counts must be positive: {self}")
        if not self.finetune.guided:
            raise ValueError("ComparisonConfig.finetune is the BO run; the uniform control is derived from it")


class FreshEval(NamedTuple):
    inits: jax.Array    # [N, d] θ reached at reset
    success: jax.Array  # [N] bool
    returns: jax.Array  # [N]


class ComparisonResult(NamedTuple):
    fresh: dict                  # method -> FreshEval, each leaf [S, ...]
    deployment: dict             # "baseline" / "finetuned" -> DeploymentModel [S]
    finetune: FineTuneState      # BO run [S]
    control: FineTuneState       # uniform-reset control [S]


def key_streams(key: jax.Array) -> dict:
    """One independent key per purpose (see KEY_STREAMS), so no data is used twice."""
    return dict(zip(KEY_STREAMS, jax.random.split(key, len(KEY_STREAMS))))


class Comparison(NamedTuple):
    config: ComparisonConfig
    finetune_bo: FineTune
    finetune_uniform: FineTune
    evaluate: Callable          # jit(vmap(evaluate)): (policies [S], θ [S, N, d], keys [S]) -> EvalResult [S, N]
    uniform_inits: Callable     # key -> θ [N, d] (one seed)
    deployment_inits: Callable  # (key, DeploymentModel) -> θ [N, d] (one seed)
    fit_model: Callable         # (key, θ [N, d], success [N]) -> DeploymentModel (Algorithm 2's offline phase)


def make_comparison(config: ComparisonConfig, trainer: Trainer, evaluate: Callable, mesh=None) -> Comparison:
    """The pieces of each stage. Evaluation is one vmapped program, compiled once per number
    of θ and shared by every stage (fresh rows, GMM data, fine-tuning rounds); with a device
    mesh (`refinery_jax.mesh`), its trials split over the mesh."""
    env = trainer.env
    low, high = env.init_low, env.init_high
    uniform = uniform_box(low, high)

    def draw(sampler, key, n):
        return jax.vmap(sampler)(jax.random.split(key, n))

    bo = make_finetune(config.finetune, trainer, evaluate)
    # the control's PPO rounds are the BO run's program with uniform resets (a traced share of 1)
    control = share_programs(make_finetune(dataclasses.replace(config.finetune, guided=False), trainer, evaluate), bo)
    return Comparison(
        config=config,
        finetune_bo=bo,
        finetune_uniform=control,
        evaluate=in_mesh(jax.jit(jax.vmap(evaluate)), mesh, split=(1,), gather=to_host),
        uniform_inits=lambda key, n: draw(uniform, key, n),
        deployment_inits=lambda key, model, n: draw(deployment_sampler(model, config.deployment), key, n),
        fit_model=lambda key, inits, success: fit_success_model(key, inits, success, low, high, config.gmm),
    )


@functools.cache
def batched(fn: Callable, in_axes=0, static_argnums=()) -> Callable:
    """`jit(vmap(fn))`, built once per function: repeated runs (a resumed stage, the same-seed
    check) reuse its compiled programs; the C physics backend's programs cannot come from the
    persistent compilation cache (they call back into Python)."""
    return jax.jit(jax.vmap(fn, in_axes=in_axes), static_argnums=static_argnums)


def _split3(key):
    return jax.random.split(key, 3)


def run_rounds(finetune: FineTune, state: FineTuneState, batch_evaluate: Callable, policy: Callable,
               name: str = "fine-tune", progress: Callable = print, logger=None, tag: str = "finetune") -> FineTuneState:
    """Rounds for a batch of runs [S] until all are done (finished runs are left as they are).

    batch_evaluate: `jax.jit(jax.vmap(evaluate))`; policy: `trainer.policy`. logger: a
    `ScalarLogger` for the per-round evaluation success and training success (mean over seeds).
    """
    from refinery_jax.logging_utils import progress_bar  # noqa: PLC0415

    request, record = batched(finetune.request), batched(finetune.record)
    improve, policies = batched(finetune.improve), batched(policy)
    e = finetune.config.eval_points
    start = int(np.max(np.asarray(state.rounds)))
    with progress_bar(int(np.max(np.asarray(state.max_rounds))), name, "round", initial=start) as bar:
        while not bool(np.all(np.asarray(state.done))):
            inits, keys = request(state)
            before = np.asarray(state.rounds)
            if finetune.config.guided:  # the GP learns from the θ reached at reset
                result = batch_evaluate(policies(state.train), inits, keys)
                inits, success = result.inits, result.success
            else:  # the control evaluates nothing between rounds
                inits, success = jnp.zeros_like(inits), jnp.zeros(inits.shape[:1] + (e,), bool)
            state = improve(record(state, inits, success))
            rounds = np.asarray(state.rounds)
            rows = np.arange(len(rounds)), rounds - 1
            message = f"{name} round {int(rounds.max())}: done {np.asarray(state.done).tolist()}"
            scalars = {f"{tag}/train_success": float(np.mean(np.asarray(state.history.train_success)[rows]))}
            if finetune.config.guided:
                rates = np.asarray(state.history.success_rate)[rows]
                message += f" | eval success per seed {np.round(rates.astype(float), 3).tolist()}"
                scalars[f"{tag}/eval_success"] = float(np.mean(rates))
                failed = np.flatnonzero(np.asarray(state.history.gp_failed)[rows] & (rounds > before))
                if failed.size:  # never silent: the run records it, and the log says it
                    message += f" | GP fit NOT finite for seed(s) {failed.tolist()}: uniform proposals this round"
            if logger is not None:
                logger.log(int(rounds.max()), scalars)
            bar.update(1)
            progress(message)
    return state


def run_comparison(comparison: Comparison, trainer: Trainer, keys: jax.Array, baseline: TrainState,
                   progress: Callable = print, cache: Optional[Callable] = None, logger=None) -> ComparisonResult:
    """All five rows for S seeds. keys: [S] seed keys; baseline: TrainState with leading axis [S].

    cache(name, compute, like) -> compute() lets a caller store and reuse stage results
    (resume); `like` is a traceable zero-argument function with the result's structure
    (`jax.eval_shape(like)` gives a restore template). By default every stage is computed.
    logger: a `ScalarLogger` for each row's success (`eval/<row>`) and the fine-tuning rounds.
    """
    cache = cache or (lambda name, compute, like: compute())
    c, cfg = comparison, comparison.config
    streams = jax.vmap(key_streams)(keys)
    policies, split = batched(trainer.policy), batched(_split3)
    uniform_inits = batched(c.uniform_inits, (0, None), 1)
    deployment_inits = batched(c.deployment_inits, (0, 0, None), 2)
    fit_model = batched(c.fit_model)

    # common random numbers: every row's trial i shares its episode key, and its θ (uniform
    # rows) or its θ-sampling key (GMM rows); see the module docstring
    fresh_keys = split(streams["fresh"])
    k_uniform, k_gmm_draw, k_episodes = fresh_keys[:, 0], fresh_keys[:, 1], fresh_keys[:, 2]

    def fresh(name, train_state, model=None):
        """A reported row: the shared fresh θ (uniform, or drawn from this row's GMM) and episodes."""
        def compute():
            inits = (uniform_inits(k_uniform, cfg.eval_trials) if model is None
                     else deployment_inits(k_gmm_draw, model, cfg.eval_trials))
            result = c.evaluate(policies(train_state), inits, k_episodes)
            return FreshEval(inits=result.inits, success=result.success, returns=result.returns)

        progress(f"[{name}] {cfg.eval_trials} fresh trials per seed")
        out = cache(f"fresh_{name}", compute, compute)
        if logger is not None:
            logger.log(0, {f"eval/{name}": float(np.mean(np.asarray(out.success)))})
        return out

    def deployment_model(name, train_state):
        """Algorithm 2's offline phase on its own N uniform θ."""
        def compute():
            ks = split(streams[name])
            k_inits, k_eval, k_gmm = ks[:, 0], ks[:, 1], ks[:, 2]
            result = c.evaluate(policies(train_state), uniform_inits(k_inits, cfg.gmm_inits), k_eval)
            return fit_model(k_gmm, result.inits, result.success)  # the θ reached, not the θ asked for

        progress(f"[{name}]")
        return cache(name, compute, compute)

    fresh_baseline = fresh("baseline", baseline)
    deploy_base = deployment_model("gmm_baseline", baseline)
    fresh_deployment = fresh("deployment", baseline, deploy_base)

    bo_init = lambda: batched(c.finetune_bo.init)(streams["finetune"], baseline)  # noqa: E731
    progress("[finetune]")
    bo = cache("finetune", lambda: run_rounds(c.finetune_bo, bo_init(), c.evaluate, trainer.policy,
                                              "fine-tune (BO)", progress, logger, "finetune"), bo_init)
    # the control gets exactly the BO run's rounds, hence the same PPO updates and env steps
    control_init = lambda: batched(c.finetune_uniform.init)(streams["control"], baseline, bo.rounds)  # noqa: E731
    progress("[uniform_finetune]")
    control = cache("uniform_finetune", lambda: run_rounds(c.finetune_uniform, control_init(), c.evaluate,
                                                           trainer.policy, "fine-tune (uniform control)", progress,
                                                           logger, "uniform_finetune"), control_init)

    fresh_finetune = fresh("finetune", bo.train)
    deploy_tuned = deployment_model("gmm_finetuned", bo.train)
    fresh_refinery = fresh("refinery", bo.train, deploy_tuned)
    fresh_control = fresh("uniform_finetune", control.train)
    return ComparisonResult(
        fresh=dict(baseline=fresh_baseline, deployment=fresh_deployment, finetune=fresh_finetune,
                   refinery=fresh_refinery, uniform_finetune=fresh_control),
        deployment=dict(baseline=deploy_base, finetuned=deploy_tuned), finetune=bo, control=control)


def comparison_table(result: ComparisonResult, low, high, cells: int = 3) -> dict:
    """Per method: mean, std across seeds, 95 % CI, per-seed rates, the paired difference to
    Baseline (`vs_baseline`), spread of success over θ cells."""
    table = {}
    reference = np.asarray(jax.device_get(result.fresh["baseline"].success))
    for method in METHODS:
        ev = jax.device_get(result.fresh[method])
        row = summarize_seeds(np.asarray(ev.success))
        if method != "baseline":
            row["vs_baseline"] = paired_difference(np.asarray(ev.success), reference)
        cell_stats = [cell_variance(i, s, low, high, cells) for i, s in zip(ev.inits, ev.success)]
        row["cell_variance_per_seed"] = [cs["variance"] for cs in cell_stats]
        row["cell_variance_denoised_per_seed"] = [cs["variance_denoised"] for cs in cell_stats]
        row["cells_used_per_seed"] = [cs["cells_used"] for cs in cell_stats]
        used = [v for v in row["cell_variance_per_seed"] if not np.isnan(v)]
        row["cell_variance"] = float(np.mean(used)) if used else float("nan")
        if method in ("deployment", "refinery"):
            row["init_concentration_per_seed"] = [concentration(i, low, high) for i in ev.inits]
        table[method] = row
    for name, state in (("finetune", result.finetune), ("uniform_finetune", result.control)):
        table[name]["rounds_per_seed"] = np.asarray(state.rounds).tolist()
        table[name]["converged_per_seed"] = np.asarray(state.converged).tolist()
        steps = np.asarray(state.history.env_steps)
        table[name]["finetune_env_steps_per_seed"] = [int(s[r - 1]) for s, r in zip(steps, np.asarray(state.rounds))]
    table["finetune"]["gp_failures_per_seed"] = np.asarray(result.finetune.history.gp_failed).sum(axis=1).tolist()
    for name, model in result.deployment.items():
        table["deployment" if name == "baseline" else "refinery"]["gmm"] = {
            "fit_successes_per_seed": np.asarray(model.num_successes).tolist(),
            "components_per_seed": np.asarray(model.gmm.num_components).tolist(),
            "usable_per_seed": np.asarray(model.usable).tolist()}
    return table


def format_table(table: dict, reference: str = "baseline") -> str:
    """Rows of rates, then each row's paired difference to `reference` (its `vs_<reference>`
    entry; '-' for rows without one) with its 95 % CI and McNemar p-value."""
    key = f"vs_{reference}"
    lines = [f"{'method':<18} {'success':>8} {'± std':>7} {'95% CI':>17} {'cell var':>9} "
             f"{'Δ vs ' + reference:>17} {'95% CI of Δ':>17} {'McNemar p':>9}  per seed"]
    for method, row in table.items():
        # rows measured on fresh uniform trials only (the ablation's arms) have no cell variance
        cell = f"{row['cell_variance']:9.4f}" if "cell_variance" in row else f"{'-':>9}"
        if key in row:
            d = row[key]
            paired = f"{d['difference']:+17.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}] {d['mcnemar_p']:9.3g}"
        else:
            paired = f"{'-':>17} {'-':>17} {'-':>9}"
        lines.append(f"{method:<18} {row['success_mean']:8.3f} {row['success_std']:7.3f} "
                     f"[{row['ci95_low']:.3f}, {row['ci95_high']:.3f}] {cell} {paired}  "
                     f"{np.round(row['per_seed'], 3).tolist()}")
    return "\n".join(lines)
