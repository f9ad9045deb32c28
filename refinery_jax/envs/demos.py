"""Disassembly demonstrations (AutoMate's procedure), reversed into assembly demos.

Start assembled, lift straight up by `lift_factor` x the insertion depth over
`lift_steps` control steps, then move to a random pose (goal + 5 cm up + U(±5 cm)^3,
yaw ± 10 deg; roll and pitch stay upright as the action space forces them) over
`move_steps` steps, logging the fingertip relative to the goal at every step. Runs
whose plug did not clear the socket are marked invalid. Reversed in time, the valid
runs are the reference paths of the imitation reward.

Everything is jitted and vmapped: `generate(key)` runs `num_attempts` disassemblies
as one batch.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from refinery_jax.envs.assembly_env import AssemblyEnv
from refinery_jax.envs.rotations import quat_mul, quat_yaw, yaw_quat


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    num_attempts: int = 128
    lift_factor: float = 3.0
    lift_steps: int = 64
    move_steps: int = 64
    move_center_height: float = 0.05
    move_range: float = 0.05
    yaw_range: float = math.radians(10.0)


@struct.dataclass
class Demos:
    fingertip: jax.Array  # [N, T, 3] fingertip position relative to its goal, world axes (m)
    yaw: jax.Array        # [N, T] fingertip yaw relative to the goal yaw (rad)
    valid: jax.Array      # [N] bool: the plug cleared the socket and reached its random pose

    def assembly_paths(self) -> np.ndarray:
        """The valid runs, reversed in time: [N_valid, T, 3] paths from free space to the goal."""
        valid = np.asarray(self.valid)
        return np.asarray(self.fingertip)[valid, ::-1]


def _disassemble_one(env: AssemblyEnv, cfg: DemoConfig, key: jax.Array):
    key_reset, key_pos, key_yaw = jax.random.split(key, 3)
    a = env.assembly
    state = env.reset(key_reset, jnp.zeros(3))
    info = state.info
    goal_fingertip = info.goal_pos + jnp.array([0.0, 0.0, a.plug_length])
    goal_yaw = quat_yaw(info.goal_quat)
    start_quat = state.physics.tip_quat
    start_pos = state.physics.tip_pos

    lift_pos = start_pos + jnp.array([0.0, 0.0, cfg.lift_factor * a.depth])
    end_pos = goal_fingertip + jnp.array([0.0, 0.0, cfg.move_center_height]) + jax.random.uniform(
        key_pos, (3,), minval=-cfg.move_range, maxval=cfg.move_range)
    end_quat = quat_mul(yaw_quat(jax.random.uniform(key_yaw, (), minval=-cfg.yaw_range, maxval=cfg.yaw_range)),
                        start_quat)

    # linear interpolation of the fingertip target: lift, then move
    s_lift = jnp.linspace(0.0, 1.0, cfg.lift_steps + 1)[1:, None]
    s_move = jnp.linspace(0.0, 1.0, cfg.move_steps + 1)[1:, None]
    targets = jnp.concatenate([start_pos + s_lift * (lift_pos - start_pos), lift_pos + s_move * (end_pos - lift_pos)])
    yaw0, yaw1 = quat_yaw(start_quat), quat_yaw(end_quat)
    yaws = jnp.concatenate([jnp.full(cfg.lift_steps, yaw0), yaw0 + s_move[:, 0] * (yaw1 - yaw0)])

    def control_step(physics, target):
        pos_target, yaw = target
        physics = env.track(physics, pos_target, yaw_quat(yaw))
        return physics, (physics.tip_pos - goal_fingertip, quat_yaw(physics.tip_quat) - goal_yaw)

    physics, (path, yaw_path) = jax.lax.scan(control_step, state.physics, (targets, yaws))
    # valid: the tip cleared the socket's top face after the lift, and the move was not
    # blocked (the fingertip ended within 1 cm of its target)
    lifted_tip_height = path[cfg.lift_steps - 1, 2]  # fingertip and tip rise together
    cleared = lifted_tip_height > a.depth + 0.005
    reached = jnp.linalg.norm(physics.tip_pos - end_pos) < 0.01
    valid = cleared & reached & jnp.all(jnp.isfinite(path))
    path = jnp.concatenate([(start_pos - goal_fingertip)[None], path])
    yaw_path = jnp.concatenate([(quat_yaw(start_quat) - goal_yaw)[None], yaw_path])
    return path, yaw_path, valid


def make_generator(env: AssemblyEnv, cfg: DemoConfig = DemoConfig()):
    """`generate(key) -> Demos` with `cfg.num_attempts` runs of length lift + move + 1."""

    # demos start exactly assembled: no yaw error, or the plug would start inside the walls
    env = AssemblyEnv(dataclasses.replace(env.config, init_yaw_noise=0.0, theta_yaw=False))

    def generate(key: jax.Array) -> Demos:
        keys = jax.random.split(key, cfg.num_attempts)
        path, yaw, valid = jax.vmap(lambda k: _disassemble_one(env, cfg, k))(keys)
        return Demos(fingertip=path, yaw=yaw, valid=valid)

    return generate
