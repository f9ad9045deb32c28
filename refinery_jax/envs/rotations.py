"""Quaternion helpers (w, x, y, z order, as MuJoCo).

Each works on one quaternion or on a batch (leading axes), and with `xp=numpy` on host
arrays: the C physics backend runs the same impedance law in NumPy between substeps.
"""

import jax.numpy as jnp


def quat_mul(a, b, xp=jnp):
    aw, ax, ay, az = (a[..., i] for i in range(4))
    bw, bx, by, bz = (b[..., i] for i in range(4))
    return xp.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], axis=-1)


def quat_conj(q, xp=jnp):
    return q * xp.asarray([1.0, -1.0, -1.0, -1.0], dtype=q.dtype)


def yaw_quat(yaw: jnp.ndarray) -> jnp.ndarray:
    return jnp.stack([jnp.cos(yaw / 2), jnp.zeros_like(yaw), jnp.zeros_like(yaw), jnp.sin(yaw / 2)], axis=-1)


def axis_angle_quat(axis: jnp.ndarray, angle: jnp.ndarray) -> jnp.ndarray:
    """Rotation by `angle` about the unit vector `axis` [3]."""
    return jnp.concatenate([jnp.cos(angle / 2)[None], jnp.sin(angle / 2) * axis])


def quat_yaw(q: jnp.ndarray) -> jnp.ndarray:
    """Yaw (rotation about world z) of a quaternion, ZYX convention."""
    w, x, y, z = (q[..., i] for i in range(4))
    return jnp.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def rotate(q: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
    """Rotate vector v [3] by unit quaternion q [4]."""
    u, w = q[1:], q[0]
    return v + 2 * jnp.cross(u, jnp.cross(u, v) + w * v)


def canonical(q, xp=jnp):
    """The representative with w >= 0 (q and -q are the same rotation)."""
    return xp.where(q[..., :1] < 0, -q, q)


def axis_angle_error(q_target, q_current, xp=jnp):
    """World-frame rotation vector taking q_current to q_target (shortest way).

    Safe at zero rotation: the gradient of atan2/norm is guarded by a small epsilon.
    """
    q_err = canonical(quat_mul(q_target, quat_conj(q_current, xp), xp), xp)
    v = q_err[..., 1:]
    s = xp.sqrt(xp.sum(v * v, axis=-1, keepdims=True) + 1e-12)
    angle = 2.0 * xp.arctan2(s, q_err[..., :1])
    return v * (angle / s)


def wrap_angle(angle: jnp.ndarray) -> jnp.ndarray:
    """Map an angle to [-pi, pi)."""
    return (angle + jnp.pi) % (2 * jnp.pi) - jnp.pi


def hand_down(q, xp=jnp):
    """The frame `q` (w, x, y, z) turned 180° about its own x axis: the project's fingertip
    orientation (upright at yaw 0) as Isaac Lab's and franky's end effector (hand pointing
    down, Euler xyz (π, 0, yaw)). Its own inverse up to sign: hand_down(hand_down(q)) = -q."""
    turn = xp.asarray([0.0, 1.0, 0.0, 0.0], dtype=q.dtype)
    return quat_mul(q, xp.broadcast_to(turn, q.shape), xp)
