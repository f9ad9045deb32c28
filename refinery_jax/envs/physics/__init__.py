"""Physics backends: one control period of simulation behind a narrow boundary.

The environment (reset, observation, reward, success) is written once in JAX; a backend
only places the robot and steps the physics. Two backends implement the same interface:

    init(qpos [nq], socket_pos [3], socket_quat [4], tip_pos [3], tip_quat [4]) -> Physics
    step(physics, pos_target [3], quat_target [4]) -> (Physics, failed [] bool)
    at_rest(physics) -> Physics      finite and motionless (the fallback after a divergence)

all pure, per environment, and jit/vmap/scan-able. `step` runs `decimation` physics
substeps, evaluating the task-space impedance law (`control.impedance_torques`) on the
fingertip target at every substep, from the kinematics of the start of the previous
substep, as MuJoCo's derived fields after `mj_step` are (the controller lags the state by
one substep on both backends).

- `mjx`: MuJoCo MJX in JAX (`mjx_backend.py`), the default on GPU/TPU.
- `c`: C MuJoCo's batched stepping (`mujoco.batch.Batch`) behind `jax.pure_callback`
  (`c_backend.py`), the default on CPU, where it steps ~15x faster than MJX. One callback
  per control step takes every environment of every vmap at once.

`make_backend(name, spec)` builds one; `resolve_backend("auto")` picks by JAX's device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import mujoco
import numpy as np
from flax import struct

from refinery_jax.envs.control import ControlConfig

BACKENDS = ("auto", "mjx", "c")


@struct.dataclass
class Physics:
    """What the environment reads of the simulation, the same on every backend.

    Fingertip pose and velocity are those of the start of the last physics substep
    (MuJoCo's derived fields after `mj_step`, one substep behind qpos/qvel), which is
    what the controller reads too; so is `constraint_force`, from which the environment
    reads the contact wrench on the held plug (`AssemblyEnv.contact_wrench`).
    """

    qpos: jax.Array          # [nq] current joint positions (robot first, then loose parts' free joints)
    qvel: jax.Array          # [nv] current joint velocities
    tip_pos: jax.Array       # [3] fingertip position (world)
    tip_quat: jax.Array      # [4] fingertip orientation
    tip_vel: jax.Array       # [6] fingertip linear then angular velocity (world)
    constraint_force: jax.Array  # [nv] MuJoCo's qfrc_constraint: contact (and joint-limit) forces in joint space
    socket_pos: jax.Array    # [3] socket (mocap) position
    socket_quat: jax.Array   # [4] socket orientation
    sim: Any                 # the backend's own state (mjx.Data, or the C state rows)


@dataclasses.dataclass(frozen=True, eq=False)
class PhysicsSpec:
    """Static facts a backend needs about the scene and its controller."""

    mj_model: mujoco.MjModel
    xml: str                 # the scene it was compiled from (the C backend adds controller userdata)
    fingertip_body: int
    socket_mocap: int
    num_dofs: int
    home_qpos: np.ndarray
    torque_limits: np.ndarray
    control: ControlConfig
    decimation: int


def resolve_backend(name: str) -> str:
    """'auto' -> 'c' on CPU, 'mjx' on GPU/TPU; 'mjx'/'c' as given. ValueError otherwise (no compile).

    Choosing 'mjx' sets the XLA CPU flag MJX needs (`refinery_jax.xla_flags`): call this
    before any JAX computation, as the scripts do first thing.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown physics backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "mjx":
        from refinery_jax.xla_flags import use_mjx_cpu_flags  # noqa: PLC0415

        use_mjx_cpu_flags()
        return name
    platform = jax.default_backend()
    if name == "auto":
        return "c" if platform == "cpu" else "mjx"
    if platform != "cpu":
        raise ValueError(f"the C MuJoCo backend steps on the host CPU through a callback; JAX's default device "
                         f"here is {platform!r}: use --backend mjx (or auto), or JAX_PLATFORMS=cpu")
    return name


def make_backend(name: str, spec: PhysicsSpec):
    """The backend `name` ('mjx' or 'c'; resolve 'auto' first) for this scene."""
    if name == "mjx":
        from refinery_jax.envs.physics.mjx_backend import MJXBackend  # noqa: PLC0415

        return MJXBackend(spec)
    if name == "c":
        from refinery_jax.envs.physics.c_backend import CBackend  # noqa: PLC0415

        return CBackend(spec)
    raise ValueError(f"unknown physics backend {name!r}; choose 'mjx' or 'c' (resolve 'auto' first)")
