"""The robot's forward kinematics and reset-time IK, in plain JAX (no physics engine).

Both embodiments are serial chains of hinge and slide joints from the world to the
`fingertip` body. `Chain` reads that path out of the MjModel once, and `fingertip_pose`
composes it as MuJoCo's `mj_kinematics` does (body offset, then each joint about its
anchor), so reset needs neither MJX nor a call into C MuJoCo: it is a few small matrix
products per environment, whatever the physics backend. Checked against MuJoCo in
tests/test_kinematics.py.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from refinery_jax.envs.rotations import axis_angle_error, axis_angle_quat, quat_mul, rotate


class Link(NamedTuple):
    """One body on the path: its offset in the parent, then its joints (in model order)."""

    pos: np.ndarray          # [3] body position in the parent frame
    quat: np.ndarray         # [4] body orientation in the parent frame
    joints: tuple            # ((qpos index, is_hinge, axis [3], anchor [3], qpos0), ...)


class Chain(NamedTuple):
    links: tuple             # Link per body, root first
    num_dofs: int            # robot joints (the first qpos entries)
    low: np.ndarray          # [n] joint lower limits (-inf where unlimited)
    high: np.ndarray         # [n] joint upper limits


def chain_from_model(model: mujoco.MjModel, body_id: int, num_dofs: int) -> Chain:
    """The kinematic path from the world to `body_id`; its joints must be the first `num_dofs`."""
    path, b = [], body_id
    while b != 0:
        path.append(b)
        b = int(model.body_parentid[b])
    links, used = [], []
    for b in reversed(path):
        joints = []
        for j in range(int(model.body_jntadr[b]), int(model.body_jntadr[b]) + int(model.body_jntnum[b])):
            kind = int(model.jnt_type[j])
            if kind not in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE):
                raise ValueError(f"joint {j} on the robot's chain is neither hinge nor slide")
            adr = int(model.jnt_qposadr[j])
            used.append(adr)
            joints.append((adr, kind == mujoco.mjtJoint.mjJNT_HINGE, np.array(model.jnt_axis[j]),
                           np.array(model.jnt_pos[j]), float(model.qpos0[adr])))
        links.append(Link(pos=np.array(model.body_pos[b]), quat=np.array(model.body_quat[b]), joints=tuple(joints)))
    if sorted(used) != list(range(num_dofs)):
        raise ValueError(f"the chain to body {body_id} drives qpos {sorted(used)}, not the robot's 0..{num_dofs - 1}")
    limited = np.asarray(model.jnt_limited[:num_dofs], bool)
    low = np.where(limited, model.jnt_range[:num_dofs, 0], -np.inf)
    high = np.where(limited, model.jnt_range[:num_dofs, 1], np.inf)
    return Chain(links=tuple(links), num_dofs=num_dofs, low=low, high=high)


def fingertip_pose_and_jacobian(chain: Chain, q: jax.Array):
    """World (position [3], quaternion [4], geometric Jacobian [6, n]) of the chain's last body.

    Jacobian rows are linear then angular velocity; a hinge's column is (axis x (p - anchor),
    axis), a slide's (axis, 0), with axes and anchors in the world frame, as MuJoCo's `mj_jac`.
    """
    pos, quat = jnp.zeros(3), jnp.array([1.0, 0.0, 0.0, 0.0])
    columns = {}
    for link in chain.links:
        # a barrier per link: XLA:CPU's fusion emitters otherwise fuse the whole chain of small
        # dependent products and their cost grows exponentially with its depth (the trap MJX
        # hits, refinery_jax/xla_flags.py): the arm's reset took minutes to compile
        pos, quat = jax.lax.optimization_barrier((pos, quat))
        pos = pos + rotate(quat, jnp.asarray(link.pos, jnp.float32))
        quat = quat_mul(quat, jnp.asarray(link.quat, jnp.float32))
        for adr, hinge, axis, anchor, q0 in link.joints:
            axis, anchor = jnp.asarray(axis, jnp.float32), jnp.asarray(anchor, jnp.float32)
            world_axis = rotate(quat, axis)
            if hinge:  # turn about the joint axis through its anchor
                world_anchor = pos + rotate(quat, anchor)
                quat = quat_mul(quat, axis_angle_quat(axis, q[adr] - q0))
                pos = world_anchor - rotate(quat, anchor)
                columns[adr] = (True, world_axis, world_anchor)
            else:
                pos = pos + world_axis * (q[adr] - q0)
                columns[adr] = (False, world_axis, None)
    jac = []
    for adr in range(chain.num_dofs):
        hinge, axis, anchor = columns[adr]
        jac.append(jnp.concatenate([jnp.cross(axis, pos - anchor), axis]) if hinge
                   else jnp.concatenate([axis, jnp.zeros(3)]))
    return pos, quat / jnp.linalg.norm(quat), jnp.stack(jac, axis=1)


def fingertip_pose(chain: Chain, q: jax.Array) -> tuple[jax.Array, jax.Array]:
    """World (position [3], quaternion [4]) of the chain's last body at joint positions q [n]."""
    pos, quat, _ = fingertip_pose_and_jacobian(chain, q)
    return pos, quat


def solve_ik(chain: Chain, pos_target: jax.Array, quat_target: jax.Array, q_seed: jax.Array,
             iterations: int = 6, damping: float = 1e-3) -> jax.Array:
    """Damped least-squares IK for the fingertip pose; returns joint positions [n].

    Joint limits (where the model has them) are enforced after every update. Resets run
    it for every environment that restarts, so it is kept short: from a seed near the
    workspace (the robot's home) 4 Gauss-Newton steps reach 0.5 um and 1e-6 rad (measured on
    both embodiments over the socket box; 6 are run).
    """
    low, high = jnp.asarray(chain.low, jnp.float32), jnp.asarray(chain.high, jnp.float32)

    def update(_, q):
        pos, quat, jac = fingertip_pose_and_jacobian(chain, q)
        error = jnp.concatenate([pos_target - pos, axis_angle_error(quat_target, quat)])
        step = jac.T @ jnp.linalg.solve(jac @ jac.T + damping ** 2 * jnp.eye(6), error)
        return jnp.clip(q + step, low, high)

    return jax.lax.fori_loop(0, iterations, update, q_seed)
