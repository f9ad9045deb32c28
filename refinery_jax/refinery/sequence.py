"""Sequence success for multi-part assemblies, in the paper's mode and chained.

Paper mode: every stage is evaluated from its own sampled starts (the per-stage
comparison), and sequence trial j succeeds iff trial j of every stage does
(`sequence_outcomes`); `summarize_sequence` gives per-stage and sequence success, mean
± 95 % CI over seeds (`stats.summarize_seeds`).

Chained mode: stage i + 1 starts from the physical end state of stage i. The plug of
stage i is released where the hand left it and becomes stage i + 1's last loose part;
the earlier loose parts keep their end-of-stage poses; the base stays where it was
(`chain_start` turns stage i's final `EnvState` into stage i + 1's `StageStart`).
`make_chain_evaluator` runs one policy per stage that way.

Frames: stage i's socket frame sits at part i's goal raised by its depth, so the socket
body of consecutive stages differs by a fixed offset in the base frame. It follows from
the two stage descriptions alone: stage i's plug goal in its socket frame
(`goal_in_socket`) minus part i's assembled position in stage i + 1's socket frame (its
last `free_parts` entry).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from refinery_jax.assets.parts import TwoPartAssembly
from refinery_jax.envs.assembly_env import AssemblyEnv, EnvState, StageStart
from refinery_jax.envs.episodes import Actor, run_episode
from refinery_jax.envs.rotations import rotate
from refinery_jax.envs.samplers import uniform_box
from refinery_jax.ppo.networks import ActorCritic, policy_actor
from refinery_jax.refinery.deployment import SUCCESS_GMM, DeploymentModel, deployment_sampler, fit_success_model
from refinery_jax.refinery.stats import paired_difference, summarize_seeds
from refinery_jax.success_models import DeploymentConfig, GMMConfig

# ------------------------------------------------------------------ paper mode (pure numpy)


def sequence_outcomes(stage_success) -> np.ndarray:
    """[K, N] per-stage outcomes (trial j of each stage) → [N]: sequence trial j succeeds iff all do."""
    stage_success = np.asarray(stage_success, bool)
    if stage_success.ndim != 2 or stage_success.shape[0] == 0:
        raise ValueError(f"stage_success must be [stages, trials], got shape {stage_success.shape}")
    return stage_success.all(axis=0)


def summarize_sequence(stage_success, sequence_success=None) -> dict:
    """Per-seed outcomes [S, K, N] of one method → per-stage and sequence summaries.

    sequence_success [S, N]: the chained mode's own sequence outcomes; by default the
    paper's (`sequence_outcomes` per seed). Also gives `independent_product`: per seed
    the product of the stage rates (what independent stages would give), mean over seeds.
    """
    stage_success = np.asarray(stage_success, bool)
    if stage_success.ndim != 3:
        raise ValueError(f"stage_success must be [seeds, stages, trials], got shape {stage_success.shape}")
    if sequence_success is None:
        sequence_success = np.stack([sequence_outcomes(s) for s in stage_success])
    sequence_success = np.asarray(sequence_success, bool)
    product = stage_success.mean(axis=2).prod(axis=1)
    return {"stages": [summarize_seeds(stage_success[:, k]) for k in range(stage_success.shape[1])],
            "sequence": summarize_seeds(sequence_success),
            "independent_product": float(product.mean()), "independent_product_per_seed": product.tolist()}


SEQUENCE_METHODS = ("baseline", "deployment", "finetune", "refinery")  # the paper's four rows


def paper_sequence_table(stage_results: Sequence, methods: Sequence[str] = SEQUENCE_METHODS) -> dict:
    """Paper mode from per-stage comparisons: `stage_results[k]` is stage k's `ComparisonResult`
    (fresh rows [S, N] per method) → {method: `summarize_sequence` of [S, K, N]}.

    Trial j of every stage is paired into sequence trial j; the stages' fresh trials are
    independent draws, so this is the paper's product of independent stage outcomes.
    """
    table, sequences = {}, {}
    for method in methods:
        success = np.stack([np.asarray(jax.device_get(r.fresh[method].success), bool) for r in stage_results], axis=1)
        table[method] = summarize_sequence(success)
        sequences[method] = success.all(axis=1)
    add_sequence_differences(table, sequences)
    return table


def add_sequence_differences(table: dict, sequence_success: dict, reference: str = "baseline") -> dict:
    """Each method's paired difference of sequence success to `reference` ([S, N] outcomes on
    the same trials), as `table[method]["sequence_vs_baseline"]`."""
    if reference in sequence_success:
        for method, success in sequence_success.items():
            if method != reference:
                table[method][f"sequence_vs_{reference}"] = paired_difference(success, sequence_success[reference])
    return table


# ------------------------------------------------------------------ chained mode


def next_socket_offset(a: TwoPartAssembly, b: TwoPartAssembly) -> np.ndarray:
    """Stage b's socket-body position minus stage a's, in the socket frame, b the stage after a
    (`MultiPartAssembly.stage`): the base is shared, so this keeps it in place."""
    if len(b.free_parts) != len(a.free_parts) + 1 or any(
            p.name != q.name for p, q in zip(a.free_parts, b.free_parts)):
        raise ValueError(f"{b.name} is not the stage after {a.name}: its loose parts must be {a.name}'s plus "
                         f"{a.name}'s plug")
    return np.asarray(a.goal_in_socket, np.float64) - np.asarray(b.free_parts[-1].pos, np.float64)


def chain_start(env: AssemblyEnv, next_env: AssemblyEnv, state: EnvState) -> StageStart:
    """Stage i's final state (one episode, unbatched) → stage i + 1's `StageStart`.

    The socket keeps its orientation and moves by `next_socket_offset` (the base stays
    put); loose parts keep their poses; the plug, released, joins them at its pose (the
    fingertip's orientation, origin at the plug tip). Velocities are not carried: the
    next stage starts at rest.
    """
    offset = jnp.asarray(next_socket_offset(env.assembly, next_env.assembly), jnp.float32)
    socket_pos, socket_quat = env.socket_pose(state.physics)
    pos, quat = env.loose_part_poses(state.physics)
    plug_quat = state.physics.tip_quat
    plug_quat = plug_quat / jnp.linalg.norm(plug_quat)
    return StageStart(socket_pos=socket_pos + rotate(socket_quat, offset), socket_quat=socket_quat,
                      part_pos=jnp.concatenate([pos, env.plug_tip(state.physics)[None]]),
                      part_quat=jnp.concatenate([quat, plug_quat[None]]))


def ppo_act(model: ActorCritic, obs_size: int, obs_clip: float = 5.0, deterministic: bool = True) -> Actor:
    """A PPO policy as a stage's `Actor` whose params are a `Policy`, acting as `evaluation.evaluate`
    does (the mean action by default)."""
    actor = policy_actor(model, obs_size, obs_clip)
    return Actor(start=lambda policy: actor.start((policy, deterministic)),
                 act=lambda policy, carry, state, key: actor.act((policy, deterministic), carry, state, key))


class ChainStage(NamedTuple):
    env: AssemblyEnv
    actor: Actor
    steps: Optional[int] = None  # control steps; default the environment's episode length


class ChainResult(NamedTuple):
    stage_success: np.ndarray     # [K, N] bool: chained trial j got through stages 0..k (false after its first failure)
    sequence_success: np.ndarray  # [N] bool: every stage did
    displacement: np.ndarray      # [K, N] m: largest loose-part displacement from assembled, over stage k's episode
                                  # (NaN where trial j did not reach stage k)
    inits: np.ndarray             # [K, N, 3] the θ each stage started from (reached at reset; asked for where the
                                  # chain did not reach the stage)


def _stage_runner(stage: ChainStage):
    def episode(params, key, init, start):
        out = run_episode(stage.env, stage.actor, params, key, init, start, stage.steps)
        return out.state, out.success, out.displacement, out.state.info.init

    return episode


ChainEvaluator = Callable[[Sequence, jax.Array, jax.Array], ChainResult]  # (params per stage, key, inits [K, N, 3])


def chain_batch_size(trials: int, most: int = 64) -> int:
    """The batch size that splits `trials` chained trials into the fewest near-equal batches
    of at most `most` (200 trials → 4 batches of 50), so that a deep stage few chains reach
    runs few padded lanes. How small a batch still keeps the vmapped step efficient on a
    given device is not measured; 64 is a guess for CPU."""
    if trials < 1:
        raise ValueError(f"need at least one trial, got {trials}")
    batches = -(-trials // most)
    return -(-trials // batches)


def make_chain_evaluator(stages: Sequence[ChainStage], batch_size: int = 256) -> ChainEvaluator:
    """`evaluate(params, key, inits)`: N chained trials of a K-stage sequence.

    params: one pytree per stage, passed to that stage's `act` (e.g. a `Policy`; None for
    a script). inits: [K, N, 3], each stage's θ. Stage 0 starts as usual (socket pose
    from the key, no loose parts); stage k + 1 starts from stage k's end state
    (`chain_start`). A trial that fails a stage has failed the sequence: it counts as
    failed at every later stage, and stage k runs only the chains still going, packed
    into whole batches (deep stages are the slowest and most chains die before them).
    Each stage is jitted once, here, and vmapped over batches of `batch_size` trials
    (padded with copies of a live one whose outcomes are dropped), so calls with other
    params or θ reuse the compiled programs; a small `batch_size` wastes less on stages
    few chains reach. Displacement is measured against the assembled poses in the shared
    base frame, so it includes what earlier stages left behind (a plug not fully home
    counts); it is NaN where the chain did not reach the stage.
    """
    runs, hand_offs = [], []
    for k, stage in enumerate(stages):
        episode = _stage_runner(stage)
        if k == 0:
            runs.append(jax.jit(jax.vmap(lambda p, kk, i, ep=episode: ep(p, kk, i, None), in_axes=(None, 0, 0))))
        else:
            runs.append(jax.jit(jax.vmap(episode, in_axes=(None, 0, 0, 0))))
        if k + 1 < len(stages):
            env, nxt = stage.env, stages[k + 1].env
            hand_offs.append(jax.jit(jax.vmap(lambda s, env=env, nxt=nxt: chain_start(env, nxt, s))))

    def evaluate(params: Sequence, key: jax.Array, inits) -> ChainResult:
        inits = jnp.asarray(inits, jnp.float32)
        d = stages[0].env.theta_size
        if inits.ndim != 3 or inits.shape[0] != len(stages) or inits.shape[2] != d:
            raise ValueError(f"inits must be [{len(stages)}, N, {d}], got shape {inits.shape}")
        if len(params) != len(stages):
            raise ValueError(f"need one params entry per stage ({len(stages)}), got {len(params)}")
        n_stages, n = inits.shape[:2]
        # trial j's key at stage k does not depend on which trials are still going, nor on the batch size
        keys = jax.vmap(lambda k: jax.random.split(k, n))(jax.random.split(key, n_stages))
        success = np.zeros((n_stages, n), bool)
        moved = np.full((n_stages, n), np.nan, np.float32)
        reached = np.array(inits)  # overwritten with the θ reached wherever a stage ran
        going, start = np.arange(n), None  # the chains still going and their starts, in step
        for k in range(n_stages):
            if going.size == 0:  # every chain has failed: the later (slowest) stages are not run
                break
            m = going.size
            # whole batches (one compiled shape), padded with copies of the first chain still going
            slots = np.concatenate([np.arange(m), np.zeros(-m % batch_size, int)])
            oks, disps, thetas, hand_off = [], [], [], []
            for b in range(0, len(slots), batch_size):
                batch = slots[b: b + batch_size]  # positions in `going` (and in `start`)
                args = (params[k], keys[k, going[batch]], inits[k, going[batch]])
                if start is not None:
                    args += (jax.tree.map(lambda x: x[batch], start),)
                state, ok, disp, theta = runs[k](*args)
                oks.append(np.asarray(ok))
                disps.append(np.asarray(disp))
                thetas.append(np.asarray(theta))
                if k + 1 < n_stages:
                    hand_off.append(hand_offs[k](state))
            ok = np.concatenate(oks)[:m]
            success[k, going] = ok
            moved[k, going] = np.concatenate(disps)[:m]
            reached[k, going] = np.concatenate(thetas)[:m]
            if k + 1 < n_stages:
                start = jax.tree.map(lambda *x: jnp.concatenate(x)[:m][ok], *hand_off)
            going = going[ok]
        return ChainResult(stage_success=success, sequence_success=sequence_outcomes(success), displacement=moved,
                           inits=reached)

    return evaluate


# ------------------------------------------------------------------ joint deployment selection


def chain_inits(key: jax.Array, samplers: Sequence[Callable], n: int) -> jax.Array:
    """[K, n, d] θ, stage k's drawn from `samplers[k]` (`key -> θ`), independently."""
    keys = jax.random.split(key, len(samplers))
    return jnp.stack([jax.vmap(s)(jax.random.split(k, n)) for s, k in zip(samplers, keys)])


def fit_joint_model(key: jax.Array, inits, sequence_success, lows, highs,
                    gmm_config: GMMConfig = SUCCESS_GMM) -> DeploymentModel:
    """Algorithm 2 on whole chains: a GMM over the concatenated θ [N, 3K] of the chained
    trials (inits [K, N, 3], stage k's from the box [lows[k], highs[k]]) whose every stage
    succeeded. It captures how one stage's start changes the next stage's odds (through the
    end state it hands over), which per-stage GMMs cannot."""
    inits = jnp.asarray(inits, jnp.float32)
    flat = jnp.moveaxis(inits, 0, 1).reshape(inits.shape[1], -1)
    low, high = (np.concatenate([np.asarray(b, np.float32) for b in box]) for box in (lows, highs))
    return fit_success_model(key, flat, jnp.asarray(sequence_success, bool), low, high, gmm_config)


def joint_sampler(model: DeploymentModel, theta_size: int, config: DeploymentConfig = DeploymentConfig()) -> Callable:
    """`key -> θ [K, theta_size]`: one chain's starts, the highest-density of M joint-GMM samples
    (per `config`), inside every stage's box; uniform when the model is not usable."""
    sample = deployment_sampler(model, config)
    return lambda key: sample(key).reshape(-1, theta_size)


# ------------------------------------------------------------------ chained-mode summaries and Table I


def chained_summary(stage_success, sequence_success, displacement) -> dict:
    """Chained trials of one method, [S, K, N] / [S, N] / [S, K, N] (m) → `summarize_sequence`
    plus what limits the chain: stage k's success among trials whose stages < k all
    succeeded (`conditional_per_stage`, pooled over seeds; NaN when none reached it) and the
    loose parts' largest displacement per stage over the chains that reached it (mm: mean, 95th
    percentile, max). With `make_chain_evaluator`'s outcomes, `stages[k]` is the fraction of
    chains through stage k, so the independent product of `summarize_sequence` means nothing
    here and is left out."""
    stage_success = np.asarray(stage_success, bool)
    out = summarize_sequence(stage_success, sequence_success)
    del out["independent_product"], out["independent_product_per_seed"]
    # trial j reached stage k iff stages < k all succeeded
    reached = np.concatenate([np.ones_like(stage_success[:, :1]), np.logical_and.accumulate(stage_success, axis=1)[:, :-1]],
                             axis=1)
    conditional = [float(stage_success[:, k][reached[:, k]].mean()) if reached[:, k].any() else float("nan")
                   for k in range(stage_success.shape[1])]
    mm = 1000.0 * np.asarray(displacement, np.float64)
    out["conditional_per_stage"] = conditional
    out["reached_per_stage"] = reached.mean(axis=(0, 2)).tolist()
    # only chains that reached the stage: after a failure the released plug may fall off the scene
    nan = {"mean": float("nan"), "p95": float("nan"), "max": float("nan")}
    out["displacement_mm"] = [{"mean": float(d.mean()), "p95": float(np.percentile(d, 95)), "max": float(d.max())}
                              if d.size else nan for d in (mm[:, k][reached[:, k]] for k in range(mm.shape[1]))]
    return out


def format_sequence_table(paper: dict, chained: dict) -> str:
    """Table I of the paper, extended: per method, stage success (paper mode: each stage from its
    own starts), sequence success in both modes, and the chained sequence's paired difference
    to Baseline with its 95 % CI."""
    methods = list(dict.fromkeys(list(paper) + list(chained)))
    stages = len((paper or chained)[methods[0]]["stages"])
    head = f"{'method':<16}" + "".join(f"{'stage ' + str(k + 1):>9}" for k in range(stages))
    lines = [head + f"{'seq paper':>11}{'seq chain':>11}{'Δ chain vs baseline [95% CI]':>31}"]
    for m in methods:  # stage columns are paper mode (own starts); a chained-only row has none
        cells = ("".join(f"{s['success_mean']:9.3f}" for s in paper[m]["stages"]) if m in paper
                 else f"{'-':>9}" * stages)
        seq = lambda t: f"{t[m]['sequence']['success_mean']:11.3f}" if m in t else f"{'-':>11}"  # noqa: E731
        d = chained.get(m, {}).get("sequence_vs_baseline")
        delta = f"{d['difference']:+8.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}]" if d else "-"
        lines.append(f"{m:<16}{cells}{seq(paper)}{seq(chained)}{delta:>31}")
    return "\n".join(lines)


def format_chain_diagnostics(chained: dict) -> str:
    """What limits the chained sequence, per method and stage: success among the chains that
    reached the stage, the fraction that reached it (in brackets) and the 95th percentile of
    the loose parts' displacement over those chains (mm; '-' where none reached it)."""
    methods = list(chained)
    stages = len(chained[methods[0]]["conditional_per_stage"])
    lines = ["chained: success among chains that reached the stage [fraction reached], loose parts' "
             "displacement p95 (mm)",
             f"{'method':<16}" + "".join(f"{'stage ' + str(k + 1):>19}" for k in range(stages))]
    for m in methods:
        row = chained[m]
        cells = [f"{'-':>19}" if np.isnan(c) else f"{c:7.3f} [{r:4.2f}] {d['p95']:4.1f}" for c, r, d in
                 zip(row["conditional_per_stage"], row["reached_per_stage"], row["displacement_mm"])]
        lines.append(f"{m:<16}" + "".join(f"{c:>19}" for c in cells))
    return "\n".join(lines)


# ------------------------------------------------------------------ chained rows of the sequence experiment

CHAINED_METHODS = SEQUENCE_METHODS + ("refinery_joint",)
CHAIN_STREAMS = ("fresh", "fit_joint")  # every chained row shares the fresh stream (common random numbers)


def _seed(tree, s: int):
    return jax.tree.map(lambda a: a[s], tree)


def _stacked(results: Sequence[ChainResult]) -> ChainResult:
    return ChainResult(*(np.stack(field) for field in zip(*results)))


def run_chained(evaluate: ChainEvaluator, stage_runs: Sequence, keys: jax.Array, trials: int, fit_trials: int,
                deployment: DeploymentConfig = DeploymentConfig(), gmm: GMMConfig = SUCCESS_GMM,
                cache: Optional[Callable] = None, progress: Callable = print) -> tuple[dict, list]:
    """The chained rows for S seeds: {method: ChainResult with leading [S]}, and the joint models.

    stage_runs: one `experiment.TaskRun` per stage (its specialists, BO fine-tuned
    policies and per-stage deployment GMMs). evaluate: `make_chain_evaluator` of the
    stages with `ppo_act`. keys: [S], one per seed, split into `CHAIN_STREAMS`.

    Methods: baseline / finetune (their policies, uniform θ at every stage), deployment /
    refinery (θ from each stage's own GMM, chosen independently), and refinery_joint: the
    fine-tuned policies with θ of whole chains from `fit_joint_model`, fitted on
    `fit_trials` chained trials drawn from the per-stage GMMs (so more chains succeed than
    under uniform θ); it is compared with refinery, the independent selection, on fresh trials.
    It costs `fit_trials` more chained episodes per seed than refinery, and where a seed's
    joint model is not usable (too few whole successful chains) that seed's refinery_joint
    row draws θ as refinery does, so the comparison measures the joint model and nothing else.
    cache(name, compute, like): as in `run_comparison`.
    """
    cache = cache or (lambda name, compute, like: compute())
    seeds, stages = keys.shape[0], len(stage_runs)
    streams = [dict(zip(CHAIN_STREAMS, jax.random.split(k, len(CHAIN_STREAMS)))) for k in keys]
    policies = {"baseline": [jax.vmap(r.trainer.policy)(r.baseline) for r in stage_runs],
                "finetuned": [jax.vmap(r.trainer.policy)(r.result.finetune.train) for r in stage_runs]}
    boxes = [(r.trainer.env.init_low, r.trainer.env.init_high) for r in stage_runs]
    d = len(boxes[0][0])  # θ size per stage

    def samplers(which, s):
        if which is None:
            return [uniform_box(lo, hi) for lo, hi in boxes]
        return [deployment_sampler(_seed(r.result.deployment[which], s), deployment) for r in stage_runs]

    def like(n):
        return lambda: ChainResult(jnp.zeros((seeds, stages, n), bool), jnp.zeros((seeds, n), bool),
                                   jnp.zeros((seeds, stages, n), jnp.float32), jnp.zeros((seeds, stages, n, d)))

    def rows(name, policy_set, draw, n, stream="fresh"):
        """Chained trials per seed: draw(key, s) -> θ [K, n, 3]. Rows of one stream share their
        episode keys and θ-sampling keys (the same θ where the sampler is the same)."""
        def compute():
            out = []
            for s in range(seeds):
                k_inits, k_eval = jax.random.split(streams[s][stream])
                out.append(evaluate([_seed(p, s) for p in policies[policy_set]], k_eval, draw(k_inits, s)))
            return _stacked(out)

        progress(f"[chained {name}]")
        return cache(f"chain_{name}", compute, like(n))

    independent = lambda which: lambda key, s: chain_inits(key, samplers(which, s), trials)  # noqa: E731
    out = {"baseline": rows("fresh_baseline", "baseline", independent(None), trials),
           "deployment": rows("fresh_deployment", "baseline", independent("baseline"), trials),
           "finetune": rows("fresh_finetune", "finetuned", independent(None), trials),
           "refinery": rows("fresh_refinery", "finetuned", independent("finetuned"), trials)}

    fit_draw = lambda key, s: chain_inits(key, samplers("finetuned", s), fit_trials)  # noqa: E731
    fit = rows("fit_joint", "finetuned", fit_draw, fit_trials, stream="fit_joint")
    # rows() split each stream in two (θ, episodes); fold_in(., 2) is neither half
    lows, highs = zip(*boxes)
    models = [fit_joint_model(jax.random.fold_in(streams[s]["fit_joint"], 2), fit.inits[s], fit.sequence_success[s],
                              lows, highs, gmm) for s in range(seeds)]

    def joint_draw(key, s):
        if not bool(models[s].usable):  # too few whole successful chains: refinery's own choice, not uniform
            return independent("finetuned")(key, s)
        sample = joint_sampler(models[s], len(lows[0]), deployment)
        return jnp.moveaxis(jax.vmap(sample)(jax.random.split(key, trials)), 0, 1)  # [K, n, d]

    out["refinery_joint"] = rows("fresh_refinery_joint", "finetuned", joint_draw, trials)
    return out, models
