"""The MJX backend: the scene in JAX, stepped by `mjx.step` (the default on GPU/TPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from mujoco import mjx

from refinery_jax.envs.control import impedance_torques
from refinery_jax.envs.physics import Physics, PhysicsSpec


class MJXBackend:
    name = "mjx"

    def __init__(self, spec: PhysicsSpec):
        import os  # noqa: PLC0415
        import warnings  # noqa: PLC0415

        from refinery_jax.xla_flags import CPU_FUSION_FLAG  # noqa: PLC0415

        if jax.default_backend() == "cpu" and f"{CPU_FUSION_FLAG}=false" not in os.environ.get("XLA_FLAGS", ""):
            warnings.warn(f"MJX on CPU without XLA_FLAGS={CPU_FUSION_FLAG}=false: its cost grows exponentially with "
                          "the arm's depth (refinery_jax/xla_flags.py); choose the backend with "
                          "envs.physics.resolve_backend('mjx') before any JAX computation", RuntimeWarning, stacklevel=3)
        self.spec = spec
        self.model = mjx.put_model(spec.mj_model, impl="jax")
        self._home = jnp.asarray(spec.home_qpos, jnp.float32)
        self._limits = jnp.asarray(spec.torque_limits, jnp.float32)

    def init(self, qpos, socket_pos, socket_quat, tip_pos=None, tip_quat=None) -> Physics:
        """Place the scene (robot and loose parts at `qpos`, at rest) and compute its kinematics."""
        m = self.spec.socket_mocap
        d = mjx.make_data(self.model)
        d = d.replace(qpos=qpos, mocap_pos=d.mocap_pos.at[m].set(socket_pos),
                      mocap_quat=d.mocap_quat.at[m].set(socket_quat))
        return self._readout(mjx.forward(self.model, d))

    def step(self, physics: Physics, pos_target, quat_target) -> tuple[Physics, jax.Array]:
        """One control period: `decimation` substeps of the impedance law and `mjx.step`."""
        s, n = self.spec, self.spec.num_dofs

        def substep(d, _):
            # d's kinematics are those of the previous substep's start (mjx.step computes them
            # before integrating): the controller lags the state by one substep, as on C MuJoCo
            pos, quat, jac, mass = self._fingertip_state(d)
            tau = impedance_torques(pos, quat, jac, mass, d.qpos[:n], d.qvel[:n], pos_target, quat_target,
                                    self._home, self._limits, s.control)
            return mjx.step(self.model, d.replace(ctrl=tau)), None

        data, _ = jax.lax.scan(substep, physics.sim, None, length=s.decimation)
        return self._readout(data), jnp.zeros((), bool)  # MJX reports trouble as non-finite state

    def at_rest(self, physics: Physics) -> Physics:
        d = jax.tree.map(jnp.nan_to_num, physics.sim)
        return self._readout(d.replace(qvel=jnp.zeros_like(d.qvel), qfrc_constraint=jnp.zeros_like(d.qfrc_constraint)))

    def _fingertip_state(self, d: mjx.Data):
        """Fingertip pose, its [6, n] Jacobian (linear; angular) and the robot's [n, n] mass matrix."""
        body, n = self.spec.fingertip_body, self.spec.num_dofs
        pos = d.xpos[body]
        jacp, jacr = mjx.jac(self.model, d, pos, body)
        jac = jnp.concatenate([jacp.T, jacr.T])[:, :n]
        mass = mjx.full_m(self.model, d)[:n, :n]
        return pos, d.xquat[body], jac, mass

    def _readout(self, d: mjx.Data) -> Physics:
        body, m = self.spec.fingertip_body, self.spec.socket_mocap
        jacp, jacr = mjx.jac(self.model, d, d.xpos[body], body)
        return Physics(qpos=d.qpos, qvel=d.qvel, tip_pos=d.xpos[body], tip_quat=d.xquat[body],
                       tip_vel=jnp.concatenate([jacp.T @ d.qvel, jacr.T @ d.qvel]),
                       constraint_force=d.qfrc_constraint,
                       socket_pos=d.mocap_pos[m], socket_quat=d.mocap_quat[m], sim=d)


def max_penetration(physics: Physics) -> jax.Array:
    """Deepest contact penetration (m, >= 0) among the contacts MJX computed in the last substep."""
    if not isinstance(physics.sim, mjx.Data):
        raise TypeError("contact penetration is read from MJX's contacts: build the environment with backend='mjx'")
    dist = physics.sim._impl.contact.dist  # noqa: SLF001  (MJX keeps contacts in its JAX impl)
    return jnp.maximum(0.0, -jnp.min(dist, initial=jnp.inf))
