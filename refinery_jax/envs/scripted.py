"""A privileged scripted insertion: align above the hole, then descend.

It reads the true goal (not the noisy observation), so it checks the assets and the
controller rather than solving the task; `experiments/validate_assets.py` and the tests
use it. The action is proportional to the pose error, so with the controller's EMA and
impedance the fingertip approaches its target like a damped spring.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from refinery_jax.envs.assembly_env import AssemblyEnv, EnvState
from refinery_jax.envs.episodes import Actor, memoryless, run_episode
from refinery_jax.envs.rotations import quat_yaw, wrap_angle

HOVER = 0.005  # tip height above the socket top while aligning (m)
GAIN = 1.0
DAMPING = 0.3  # s
MAX_DESCENT_ACTION = 0.015


def scripted_action(env: AssemblyEnv, state: EnvState) -> jax.Array:
    """Action [6] for one environment: align, then step down while aligned.

    Above the hole the plug descends only while it is centred (within half the
    clearance), slow and yaw-aligned; otherwise it holds its height and re-centres, so
    the xy drift a descending arm picks up never reaches the rim. A plug caught on the
    rim rises back to the hover height; once inside the hole the walls guide it home.
    """
    d, info, a = state.physics, state.info, env.assembly
    fingertip = d.tip_pos
    velocity = env.fingertip_velocity(d)[0]
    z_err, xy_err, _ = env.goal_errors(d, info)
    yaw_err = wrap_angle(quat_yaw(info.goal_quat) - quat_yaw(d.tip_quat))
    centred = ((xy_err < jnp.maximum(0.5 * a.clearance, 5e-5)) & (jnp.abs(yaw_err) < jnp.radians(0.3))
               & (jnp.linalg.norm(velocity[:2]) < 1e-3))
    in_hole = z_err < a.depth - 3e-4
    on_rim = (z_err < a.depth + 3e-4) & ~in_hole & ~centred

    goal_fingertip = info.goal_pos + jnp.array([0.0, 0.0, a.plug_length])
    hover_z = goal_fingertip[2] + a.depth + HOVER
    down_z = goal_fingertip[2] - 0.005  # past the goal: press the plug home against the floor
    z_target = jnp.where(in_hole | centred, down_z, jnp.where(on_rim, hover_z, jnp.minimum(fingertip[2], hover_z)))
    target = jnp.array([goal_fingertip[0], goal_fingertip[1], z_target])

    cfg = env.config.control
    # the velocity term damps the slow mode of a heavy arm under AutoMate's gains
    pos_action = GAIN * (target - fingertip - DAMPING * velocity) / cfg.pos_action_scale
    # descend gently below the hover height: a fast drop couples into xy on the arm
    pos_action = pos_action.at[2].max(jnp.where(fingertip[2] > hover_z + 0.001, -1.0, -MAX_DESCENT_ACTION))
    yaw_action = GAIN * yaw_err / cfg.yaw_action_scale
    return jnp.clip(jnp.concatenate([pos_action, jnp.zeros(2), yaw_action[None]]), -1.0, 1.0)


def scripted_actor(env: AssemblyEnv) -> Actor:
    """The script as an `episodes.Actor`; its params `hold` ([] bool) replace it by a zero action."""
    return memoryless(lambda hold, state, key: jnp.where(hold, 0.0, scripted_action(env, state)))


def run_scripted_episode(env: AssemblyEnv, key: jax.Array, init: jax.Array, seconds: float = 10.0):
    """Reset at `init`, run the scripted policy for `seconds` (default 10 s).

    The script is deliberately cautious (stop-and-go near the rim), so it gets twice
    the policy's 5 s episode. Returns (final state, success [] bool, max penetration
    over the episode [] m; NaN on the C backend, which does not return contacts).
    Pure and jittable; vmap over keys and inits for batches.
    """
    out = run_episode(env, scripted_actor(env), False, key, init, steps=round(seconds * env.config.control_hz))
    return out.state, out.success, out.penetration


def run_scripted_episode_metrics(env: AssemblyEnv, key: jax.Array, init: jax.Array, seconds: float = 10.0,
                                 hold: jax.Array | bool = False) -> dict:
    """`run_scripted_episode` plus what it did to the parts already assembled (multi-part stages).

    `hold` ([] bool, may be traced) replaces the script by a zero action, so the hand
    stays where it started: started above the socket, nothing touches the loose parts
    and their displacement measures how still they stay on their own.

    Returns a dict of [] arrays: success, penetration (max over the episode, m; NaN on
    the C backend), prior_displacement (the largest displacement of any earlier part from
    its assembled pose over the episode, m; 0 without earlier parts) and
    final_prior_displacement (at the end), plus the final state under "state".
    """
    out = run_episode(env, scripted_actor(env), jnp.asarray(hold), key, init,
                      steps=round(seconds * env.config.control_hz))
    return {"state": out.state, "success": out.success, "penetration": out.penetration,
            "prior_displacement": out.displacement,
            "final_prior_displacement": env.prior_part_displacement(out.state.physics)}
