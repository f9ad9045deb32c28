"""AutoMate's action handling and task-space impedance controller, plus reset-time IK.

Everything here is a pure function of one environment's arrays; the environment vmaps.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from mujoco import mjx

from refinery_jax.envs.rotations import axis_angle_error, quat_yaw, yaw_quat


@dataclasses.dataclass(frozen=True)
class ControlConfig:
    """Action interpretation and impedance gains (AutoMate defaults, reference-notes)."""

    action_ema: float = 0.2                  # a <- ema * a_new + (1 - ema) * a_prev
    pos_action_scale: float = 0.1            # m of target offset per unit action
    # rad of target yaw offset per unit action. AutoMate's 0.01 turns the plug at most
    # ~0.03 rad/s under these gains (Kp/Kd * 0.01), < 10 deg per episode: too little to
    # undo a 10 deg yaw error, so we use 0.1 (up to ~0.27 rad/s).
    yaw_action_scale: float = 0.1
    pos_bounds: tuple[float, float, float] = (0.05, 0.05, 0.05)  # target box around the goal (m)
    kp: tuple[float, ...] = (100.0, 100.0, 100.0, 30.0, 30.0, 30.0)
    kp_null: float = 10.0

    @property
    def kd(self) -> tuple[float, ...]:
        return tuple(2.0 * k ** 0.5 for k in self.kp)


def fingertip_state(m: mjx.Model, d: mjx.Data, body_id: int, num_dofs: int):
    """Fingertip pose, its [6, n] Jacobian (linear; angular) and the robot's [n, n] mass matrix.

    Reads the kinematics MJX computed at the start of the last physics step, so the
    controller lags the state by one physics step (1/240 s by default).
    """
    pos, quat = d.xpos[body_id], d.xquat[body_id]
    jacp, jacr = mjx.jac(m, d, pos, body_id)
    jac = jnp.concatenate([jacp.T, jacr.T])[:, :num_dofs]
    mass = mjx.full_m(m, d)[:num_dofs, :num_dofs]
    return pos, quat, jac, mass


def smooth_and_target(action, prev_action, pos, quat, goal_pos, frame_noise, cfg: ControlConfig):
    """AutoMate's action handling: clip, EMA, scaled delta targets, bounded around the goal.

    The box is centred on the goal plus the episode's action-frame noise `frame_noise`.

    Roll and pitch are held upright (the target orientation is a pure yaw), so the
    6-D action acts as x, y, z and yaw; a[3:5] are accepted but have no effect.

    Returns (smoothed action [6], position target [3], orientation target [4]).
    """
    a = cfg.action_ema * jnp.clip(action, -1.0, 1.0) + (1.0 - cfg.action_ema) * prev_action
    bounds = jnp.asarray(cfg.pos_bounds)
    # the action frame (centre of the target box) carries the episode's calibration error
    frame = goal_pos + frame_noise
    pos_target = jnp.clip(pos + cfg.pos_action_scale * a[:3], frame - bounds, frame + bounds)
    quat_target = yaw_quat(quat_yaw(quat) + cfg.yaw_action_scale * a[5])
    return a, pos_target, quat_target


def impedance_torques(pos, quat, jac, mass, qpos, qvel, pos_target, quat_target, home_qpos, torque_limits,
                      cfg: ControlConfig):
    """Task-space impedance: tau = J^T (Kp e - Kd v) + null-space posture term.

    Shapes: pos [3], quat [4], jac [6, n], mass [n, n], qpos/qvel/home_qpos [n].
    The null-space term (I - J^T (Lambda J M^-1)) M (kp_null dq - kd_null qdot) pulls a
    redundant arm toward its home posture without disturbing the fingertip; for a
    6-DoF embodiment the projector is zero.
    """
    kp, kd = jnp.asarray(cfg.kp), jnp.asarray(cfg.kd)
    error = jnp.concatenate([pos_target - pos, axis_angle_error(quat_target, quat)])
    wrench = kp * error - kd * (jac @ qvel)
    tau = jac.T @ wrench

    n = qpos.shape[0]
    mass_inv = jnp.linalg.inv(mass)
    task_inertia = jnp.linalg.inv(jac @ mass_inv @ jac.T + 1e-6 * jnp.eye(6))
    projector = jnp.eye(n) - jac.T @ (task_inertia @ jac @ mass_inv)
    kd_null = 2.0 * cfg.kp_null ** 0.5
    posture = mass @ (cfg.kp_null * (home_qpos - qpos) - kd_null * qvel)
    tau = tau + projector @ posture
    return jnp.clip(tau, -torque_limits, torque_limits)


def solve_ik(m: mjx.Model, d: mjx.Data, body_id: int, num_dofs: int, pos_target, quat_target, q_seed,
             iterations: int = 40, damping: float = 1e-2) -> jax.Array:
    """Damped least-squares IK for the fingertip body; returns robot joint positions [n].

    Joint limits (where the model has them) are enforced after every update.
    """
    limited = jnp.asarray(m.jnt_limited[:num_dofs], dtype=bool)
    low = jnp.where(limited, m.jnt_range[:num_dofs, 0], -jnp.inf)
    high = jnp.where(limited, m.jnt_range[:num_dofs, 1], jnp.inf)

    def update(_, q):
        dq = d.replace(qpos=d.qpos.at[:num_dofs].set(q))
        dq = mjx.com_pos(m, mjx.kinematics(m, dq))
        pos, quat = dq.xpos[body_id], dq.xquat[body_id]
        jacp, jacr = mjx.jac(m, dq, pos, body_id)
        jac = jnp.concatenate([jacp.T, jacr.T])[:, :num_dofs]
        error = jnp.concatenate([pos_target - pos, axis_angle_error(quat_target, quat)])
        step = jac.T @ jnp.linalg.solve(jac @ jac.T + damping ** 2 * jnp.eye(6), error)
        return jnp.clip(q + step, low, high)

    return jax.lax.fori_loop(0, iterations, update, q_seed)
