"""Sequence success for multi-part assemblies, in the paper's mode and chained.

Paper mode: every stage is evaluated from its own sampled starts (the per-stage
comparison), and sequence trial j succeeds iff trial j of every stage does
(`sequence_outcomes`); `summarize_sequence` gives per-stage and sequence success, mean
± 95 % CI over seeds (`stats.summarize_seeds`).

Chained mode: stage i + 1 starts from the physical end state of stage i. The plug of
stage i is released where the hand left it and becomes stage i + 1's last loose part;
the earlier loose parts keep their end-of-stage poses; the base stays where it was
(`chain_start` turns stage i's final `EnvState` into stage i + 1's `StageStart`).
`evaluate_chain` runs one policy per stage that way.

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
from refinery_jax.envs.rotations import rotate
from refinery_jax.ppo.networks import ActorCritic, Policy, policy_action
from refinery_jax.refinery.stats import summarize_seeds

Act = Callable[[EnvState, jax.Array], jax.Array]  # (state, key) -> action [6]

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
    table = {}
    for method in methods:
        success = np.stack([np.asarray(jax.device_get(r.fresh[method].success), bool) for r in stage_results], axis=1)
        table[method] = summarize_sequence(success)
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
    socket_pos, socket_quat = env.socket_pose(state.data)
    pos, quat = env.loose_part_poses(state.data)
    plug_quat = state.data.xquat[env.fingertip_body]
    plug_quat = plug_quat / jnp.linalg.norm(plug_quat)
    return StageStart(socket_pos=socket_pos + rotate(socket_quat, offset), socket_quat=socket_quat,
                      part_pos=jnp.concatenate([pos, env.plug_tip(state.data)[None]]),
                      part_quat=jnp.concatenate([quat, plug_quat[None]]))


def ppo_act(model: ActorCritic, policy: Policy, obs_clip: float = 5.0, deterministic: bool = True) -> Act:
    """A PPO policy as an `Act`, acting as `evaluation.evaluate` does (mean action by default)."""
    return lambda state, key: policy_action(model, policy, state.obs, key, deterministic, obs_clip)


class ChainStage(NamedTuple):
    env: AssemblyEnv
    act: Act
    steps: Optional[int] = None  # control steps; default the environment's episode length


class ChainResult(NamedTuple):
    stage_success: np.ndarray     # [K, N] bool: stage k succeeded in chained trial j
    sequence_success: np.ndarray  # [N] bool: every stage did
    displacement: np.ndarray      # [K, N] m: largest loose-part displacement from assembled, over stage k's episode


def _stage_runner(stage: ChainStage):
    env, act = stage.env, stage.act
    steps = env.config.episode_steps if stage.steps is None else stage.steps

    def episode(key, init, start):
        k_reset, k_act = jax.random.split(key)
        state = env.reset(k_reset, init, start)

        def body(carry, k):
            state, alive, moved = carry
            state = env.step(state, act(state, k))
            moved = jnp.maximum(moved, env.prior_part_displacement(state.data))
            return (state, alive & ~state.terminated, moved), None

        carry = (state, jnp.ones((), bool), env.prior_part_displacement(state.data))
        (state, alive, moved), _ = jax.lax.scan(body, carry, jax.random.split(k_act, steps))
        return state, state.success & alive, moved

    return episode


def evaluate_chain(stages: Sequence[ChainStage], key: jax.Array, inits, batch_size: int = 256) -> ChainResult:
    """Run N chained trials of a K-stage sequence: inits [K, N, 3] (each stage's θ).

    Stage 0 starts as usual (socket pose from the key, no loose parts or assembled ones);
    stage k + 1 starts from stage k's end state (`chain_start`), whether or not stage k
    succeeded, so `stage_success` beyond a failure measures a stage on a spoiled start.
    Each stage is jitted once (its own environment and shapes), vmapped over a batch of
    `batch_size` trials (N is padded to whole batches: one compiled shape per stage).
    Displacement is measured against the assembled poses in the shared base frame, so it
    includes what earlier stages left behind (a plug not fully home counts).
    """
    inits = jnp.asarray(inits, jnp.float32)
    if inits.ndim != 3 or inits.shape[0] != len(stages) or inits.shape[2] != 3:
        raise ValueError(f"inits must be [{len(stages)}, N, 3], got shape {inits.shape}")
    n = inits.shape[1]
    batch = min(batch_size, n)
    pad = -n % batch
    inits = jnp.concatenate([inits, inits[:, :pad]], axis=1)
    keys = jax.vmap(lambda k: jax.random.split(k, n + pad))(jax.random.split(key, len(stages)))  # [K, N + pad]

    runs, hand_offs = [], []
    for k, stage in enumerate(stages):
        episode = _stage_runner(stage)
        runs.append(jax.jit(jax.vmap(lambda kk, i, st, ep=episode: ep(kk, i, st))) if k
                    else jax.jit(jax.vmap(lambda kk, i, ep=episode: ep(kk, i, None))))
        if k + 1 < len(stages):
            env, nxt = stage.env, stages[k + 1].env
            hand_offs.append(jax.jit(jax.vmap(lambda s, env=env, nxt=nxt: chain_start(env, nxt, s))))

    success, moved = [[] for _ in stages], [[] for _ in stages]
    for b in range(0, n + pad, batch):
        start = None
        for k in range(len(stages)):
            args = (keys[k, b: b + batch], inits[k, b: b + batch]) + ((start,) if k else ())
            state, ok, disp = runs[k](*args)
            success[k].append(np.asarray(ok))
            moved[k].append(np.asarray(disp))
            if k + 1 < len(stages):
                start = hand_offs[k](state)
    stage_success = np.stack([np.concatenate(s)[:n] for s in success])
    return ChainResult(stage_success=stage_success, sequence_success=sequence_outcomes(stage_success),
                       displacement=np.stack([np.concatenate(m)[:n] for m in moved]))
