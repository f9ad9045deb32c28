"""AutoMate's action handling and task-space impedance controller.

`smooth_and_target` turns a policy action into the control period's fingertip target;
`impedance_torques` is the law a physics backend evaluates at every physics substep.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

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
                      cfg: ControlConfig, xp=jnp):
    """Task-space impedance: tau = J^T (Kp e - Kd v) + null-space posture term.

    Shapes: pos [..., 3], quat [..., 4], jac [..., 6, n], mass [..., n, n], qpos/qvel [..., n],
    home_qpos/torque_limits [n]; leading axes batch. `xp` is jax.numpy (the MJX backend,
    per environment) or numpy (the C backend's fallback, every world at once between
    substeps). The C backend's default is the same law in C (envs/physics/impedance.c,
    tested against this one). The null-space term
    (I - J^T (Lambda J M^-1)) M (kp_null dq - kd_null qdot) pulls a redundant arm toward
    its home posture without disturbing the fingertip; for a 6-DoF embodiment the
    projector is zero and the term is skipped.
    """
    kp, kd = xp.asarray(cfg.kp, dtype=pos.dtype), xp.asarray(cfg.kd, dtype=pos.dtype)
    jac_t = xp.swapaxes(jac, -1, -2)
    error = xp.concatenate([pos_target - pos, axis_angle_error(quat_target, quat, xp)], axis=-1)
    wrench = kp * error - kd * (jac @ qvel[..., None])[..., 0]
    tau = (jac_t @ wrench[..., None])[..., 0]

    n = qpos.shape[-1]
    if n > 6:  # a redundant arm: posture control in the null space (for n = 6 the projector is zero)
        eye_n, eye_6 = xp.eye(n, dtype=pos.dtype), xp.eye(6, dtype=pos.dtype)
        jac_minv = jac @ xp.linalg.inv(mass)
        # Lambda J M^-1 = (J M^-1 J^T)^-1 J M^-1: one solve instead of a second inverse
        projector = eye_n - jac_t @ xp.linalg.solve(jac_minv @ jac_t + 1e-6 * eye_6, jac_minv)
        kd_null = 2.0 * cfg.kp_null ** 0.5
        posture = (mass @ (cfg.kp_null * (home_qpos - qpos) - kd_null * qvel)[..., None])[..., 0]
        tau = tau + (projector @ posture[..., None])[..., 0]
    return xp.clip(tau, -torque_limits, torque_limits)


