"""Isaac Lab AutoMate's observation and action conventions on the project's environment, so
a policy trained there (imported with `interop.rl_games`) acts here, and the reverse.

AutoMate's policy observation (automate/assembly_env_cfg.py, obs_order; 24 values) is the
first 24 of the project's (`envs.assembly_env.POLICY_OBS`), in the same order:

  joint_pos 7 | fingertip_pos 3 | fingertip_quat 4 | fingertip_goal_pos 3 | fingertip_goal_quat 4 | delta_pos 3

What differs, and what the mapping does about it:
- frames: AutoMate's positions are relative to the environment origin, where the robot's
  base stands; the project's are world positions with the Franka's base at the world origin
  (`assets.franka`), so `origin` is 0 for the Franka (set it for another layout).
- the fingertip's orientation: AutoMate's hand points down as Euler xyz (π, 0, yaw); the
  project's fingertip frame is upright at yaw 0 (the plug along -z). AutoMate's quaternion =
  the project's x 180° about the fingertip's own x axis.
- quaternion order: w, x, y, z in both (Isaac Lab 2.x, MuJoCo); Isaac Lab's newer
  warp-backed release uses x, y, z, w (`quat_order="xyzw"`). The project's quaternions are
  canonical (w >= 0); AutoMate's are raw (a policy there saw both signs).
- the project's observation goes on with prev_action 6 and progress 1, which AutoMate does
  not observe (dropped).
- actions (6-D, clipped to ±1, EMA 0.2 in both): position 0.1 m per unit in both;
  rotation 0.01 rad per unit in AutoMate (rot_action_threshold) against the project's
  `ControlConfig.yaw_action_scale` (0.1), so AutoMate's a[5] is scaled by their ratio; only
  yaw acts in both (roll and pitch are held). Not mapped: the target box (AutoMate ±0.1 m
  around the noisy socket tip, the project ±`pos_bounds` = 0.05 m around the noisy goal).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from refinery_jax.envs.assembly_env import POLICY_OBS, observation_slice
from refinery_jax.envs.control import ControlConfig
from refinery_jax.envs.episodes import Actor
from refinery_jax.envs.rotations import hand_down

AUTOMATE_OBS = (("joint_pos", 7), ("fingertip_pos", 3), ("fingertip_quat", 4), ("fingertip_goal_pos", 3),
                ("fingertip_goal_quat", 4), ("delta_pos", 3))
AUTOMATE_OBS_SIZE = sum(n for _, n in AUTOMATE_OBS)  # 24
AUTOMATE_POS_ACTION_SCALE = 0.1   # m per unit action (CtrlCfg.pos_action_threshold)
AUTOMATE_ROT_ACTION_SCALE = 0.01  # rad per unit action (CtrlCfg.rot_action_threshold)
QUAT_ORDERS = ("wxyz", "xyzw")

# the shared prefix really is AutoMate's layout (names differ, sizes and order do not)
assert tuple(n for _, n in POLICY_OBS[:6]) == tuple(n for _, n in AUTOMATE_OBS)


@dataclasses.dataclass(frozen=True)
class AutoMateConventions:
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # AutoMate's environment origin in the project's world (m)
    quat_order: str = "wxyz"                              # Isaac Lab 2.x; "xyzw" for the newer release

    def __post_init__(self):
        if self.quat_order not in QUAT_ORDERS:
            raise ValueError(f"quat_order must be one of {QUAT_ORDERS}, got {self.quat_order!r}")
        if len(self.origin) != 3:
            raise ValueError(f"origin must be 3 numbers (m), got {self.origin!r}")


def _automate_quat(q: jax.Array, order: str) -> jax.Array:
    """A project fingertip quaternion (w, x, y, z) as AutoMate's, in `order`."""
    q = hand_down(q)
    return q if order == "wxyz" else jnp.concatenate([q[..., 1:], q[..., :1]], axis=-1)


def automate_observation(obs: jax.Array, conventions: AutoMateConventions = AutoMateConventions()) -> jax.Array:
    """The project's policy observation [..., 31] as AutoMate's [..., 24]."""
    origin = jnp.asarray(conventions.origin, obs.dtype)
    part = lambda name: obs[..., observation_slice(name)]  # noqa: E731
    return jnp.concatenate([part("joint_pos"), part("fingertip_pos") - origin,
                            _automate_quat(part("fingertip_quat"), conventions.quat_order),
                            part("goal_pos") - origin, _automate_quat(part("goal_quat"), conventions.quat_order),
                            part("goal_minus_fingertip")], axis=-1)


def project_action(action: jax.Array, control: ControlConfig = ControlConfig()) -> jax.Array:
    """An AutoMate action [..., 6] as the project environment's: the same target motion."""
    clipped = jnp.clip(action, -1.0, 1.0)  # both clip before scaling; rescaled values must stay inside
    scale = np.array([AUTOMATE_POS_ACTION_SCALE / control.pos_action_scale] * 3 + [1.0, 1.0]
                     + [AUTOMATE_ROT_ACTION_SCALE / control.yaw_action_scale], np.float32)
    if scale.max() > 1.0:
        raise ValueError("the project's action scales are below AutoMate's: its actions cannot reach AutoMate's "
                         f"targets within ±1 (ratios {scale.tolist()})")
    return clipped * scale


def automate_actor(actor: Actor, conventions: AutoMateConventions = AutoMateConventions(),
                   control: ControlConfig = ControlConfig()) -> Actor:
    """An actor of AutoMate's conventions (e.g. `ppo.networks.policy_actor` of an imported
    rl_games policy, built with obs_size 24) acting in the project's environment."""
    def act(params, carry, state, key):
        carry, action = actor.act(params, carry, state.replace(obs=automate_observation(state.obs, conventions)), key)
        return carry, project_action(action, control)

    return Actor(start=actor.start, act=act)
