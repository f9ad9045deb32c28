"""A privileged scripted insertion: align above the hole, then descend.

It reads the true goal (not the noisy observation), so it checks the assets and the
controller rather than solving the task; `experiments/validate_assets.py` and the tests
use it. The action is proportional to the pose error, so with the controller's EMA and
impedance the fingertip approaches its target like a damped spring.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from refinery_jax.envs.assembly_env import AssemblyEnv, EnvState, max_penetration
from refinery_jax.envs.rotations import quat_yaw, wrap_angle

HOVER = 0.005  # tip height above the socket top while aligning (m)
GAIN = 1.0
DAMPING = 0.3  # s


def scripted_action(env: AssemblyEnv, state: EnvState) -> jax.Array:
    """Action [6] for one environment: hover aligned above the hole, descend once aligned."""
    d, info, a = state.data, state.info, env.assembly
    fingertip = d.xpos[env.fingertip_body]
    z_err, xy_err, _ = env.goal_errors(d, info)
    yaw_err = wrap_angle(quat_yaw(info.goal_quat) - quat_yaw(d.xquat[env.fingertip_body]))
    velocity = env.fingertip_velocity(d)[0]
    speed = jnp.linalg.norm(velocity[:2])
    aligned = ((xy_err < jnp.maximum(0.5 * a.clearance, 2e-4)) & (jnp.abs(yaw_err) < jnp.radians(0.5))
               & (speed < 2e-3))
    # once the tip is well inside the hole the walls hold it aligned: keep going down. A plug
    # stuck on the socket's top face is neither, so it rises back to the hover height.
    aligned = aligned | (z_err < a.depth - 0.001)
    goal_fingertip = info.goal_pos + jnp.array([0.0, 0.0, a.plug_length])
    hover = goal_fingertip + jnp.array([0.0, 0.0, a.depth + HOVER])
    # descend past the goal so the plug is pressed home against the floor
    target = jnp.where(aligned, goal_fingertip - jnp.array([0.0, 0.0, 0.005]), hover)
    # keep xy aligned while descending; only z switches
    target = target.at[:2].set(goal_fingertip[:2])
    cfg = env.config.control
    # the velocity term damps the slow mode of a heavy arm under AutoMate's gains
    pos_action = GAIN * (target - fingertip - DAMPING * velocity) / cfg.pos_action_scale
    yaw_action = GAIN * yaw_err / cfg.yaw_action_scale
    return jnp.clip(jnp.concatenate([pos_action, jnp.zeros(2), yaw_action[None]]), -1.0, 1.0)


def run_scripted_episode(env: AssemblyEnv, key: jax.Array, init: jax.Array):
    """Reset at `init`, run the scripted policy for one episode.

    Returns (final state, success [] bool, max penetration over the episode [] m).
    Pure and jittable; vmap over keys and inits for batches.
    """
    def body(carry, _):
        state, worst = carry
        state = env.step(state, scripted_action(env, state))
        return (state, jnp.maximum(worst, max_penetration(state.data))), None

    state = env.reset(key, init)
    (state, worst), _ = jax.lax.scan(body, (state, jnp.zeros(())), None, length=env.config.episode_steps)
    return state, state.success, worst
