"""Quaternion helpers (w, x, y, z order, as MuJoCo), written for one quaternion; vmap outside."""

import jax.numpy as jnp


def quat_mul(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return jnp.array([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ])


def quat_conj(q: jnp.ndarray) -> jnp.ndarray:
    return q * jnp.array([1.0, -1.0, -1.0, -1.0])


def yaw_quat(yaw: jnp.ndarray) -> jnp.ndarray:
    return jnp.array([jnp.cos(yaw / 2), 0.0, 0.0, jnp.sin(yaw / 2)])


def quat_yaw(q: jnp.ndarray) -> jnp.ndarray:
    """Yaw (rotation about world z) of a quaternion, ZYX convention."""
    w, x, y, z = q
    return jnp.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def rotate(q: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
    """Rotate vector v by unit quaternion q."""
    u, w = q[1:], q[0]
    return v + 2 * jnp.cross(u, jnp.cross(u, v) + w * v)


def canonical(q: jnp.ndarray) -> jnp.ndarray:
    """The representative with w >= 0 (q and -q are the same rotation)."""
    return jnp.where(q[0] < 0, -q, q)


def axis_angle_error(q_target: jnp.ndarray, q_current: jnp.ndarray) -> jnp.ndarray:
    """World-frame rotation vector taking q_current to q_target (shortest way).

    Safe at zero rotation: the gradient of atan2/norm is guarded by a small epsilon.
    """
    q_err = canonical(quat_mul(q_target, quat_conj(q_current)))
    v = q_err[1:]
    s = jnp.sqrt(jnp.sum(v * v) + 1e-12)
    angle = 2.0 * jnp.arctan2(s, q_err[0])
    return v * (angle / s)


def wrap_angle(angle: jnp.ndarray) -> jnp.ndarray:
    """Map an angle to [-pi, pi)."""
    return (angle + jnp.pi) % (2 * jnp.pi) - jnp.pi
