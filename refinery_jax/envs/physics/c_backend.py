"""The C MuJoCo backend: `mujoco.batch.Batch` behind `jax.pure_callback` (the default on CPU).

MJX on a CPU steps this project's scenes at ~1/20 of C MuJoCo's speed, because XLA
executes its solver and collision code as many small kernels. This backend keeps the
environment in JAX and hands only the physics to C MuJoCo: one `pure_callback` per
control step, for every environment of every vmap at once (seeds x environments fold
into one call), which steps all of them on MuJoCo's own thread pool. Under a device mesh
each device calls it with its own shard of environments (`host_batching.host_call`).

State. JAX carries each world's float64 `mjSTATE_INTEGRATION` row (time, qpos, qvel,
solver warm start, mocap pose, userdata) as raw bits (uint32 pairs: JAX runs in
float32), so consecutive callbacks continue exactly as one long C rollout would. The
backend's model is the scene with `nuserdata` added: userdata holds the controller's
target pose, gains and memory (the fingertip pose, Jacobian and mass matrix of the start
of the last substep, which the next substep reads; layout `USERDATA_*`, shared with
`impedance.c`). A freshly placed world (`CState.fresh`) is built from the float32 qpos
and socket pose, with no memory yet: its first substep reads the kinematics of its start.

Control. `control.impedance_torques` at every substep, from the kinematics of the start
of the previous substep, so the controller lags the state by one substep exactly as on
MJX. Two ways, the same law and memory layout:
- compiled (default where a C compiler exists, `compiled_law.py`): `impedance.c` is
  MuJoCo's control callback, and one `Batch.step(nstep=decimation)` runs the whole
  control period on MuJoCo's threads;
- NumPy (the fallback): single substeps, the law evaluated for every world between them
  from MuJoCo's derived fields (Jacobian from the joint axes and anchors, mass matrix
  from the sparse `M`).

Failures. A world whose MuJoCo warning counters rise (bad qacc/qpos/qvel/ctrl: MuJoCo
then resets it) or that MuJoCo raises on is reported as failed; the environment falls
back to its previous state and ends the episode, as it does for MJX's non-finite states.
Bit-identical across thread counts and reruns (`mujoco.batch` guarantees it per world).
"""

from __future__ import annotations

import math
import os
import threading

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct
from mujoco import batch as mj_batch

from refinery_jax.envs.control import impedance_torques
from refinery_jax.envs.physics import Physics, PhysicsSpec, compiled_law
from refinery_jax.envs.physics.host_batching import host_call

STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION
# warnings after which MuJoCo has reset or altered a world: count it as a divergence
FAILURE_WARNINGS = tuple(int(w) for w in (mujoco.mjtWarning.mjWARN_BADQACC, mujoco.mjtWarning.mjWARN_BADQPOS,
                                          mujoco.mjtWarning.mjWARN_BADQVEL, mujoco.mjtWarning.mjWARN_BADCTRL))
THREADS_ENV = "REFINERY_JAX_C_THREADS"  # MuJoCo batch threads (default: every CPU)

# userdata layout (as impedance.c): marker, dof count, fingertip body, memory valid, target pos, target quat,
# kp [6], kd [6], kp_null, home [n], torque limits [n], memory: pos [3], quat [4], jac [6 n], mass [n n]
USERDATA_MARKER = 7130.25
USERDATA_TARGET = slice(4, 11)
USERDATA_VALID = 3
USERDATA_HOME = 24


def userdata_size(n: int) -> int:
    return USERDATA_HOME + 2 * n + 7 + 6 * n + n * n


@struct.dataclass
class CState:
    rows: jax.Array     # [2 * nstate] uint32: the float64 mjSTATE_INTEGRATION row (userdata included), raw bits
    fresh: jax.Array    # [] bool: placed from float32 qpos; the next step builds the row


def _bits(x: np.ndarray) -> np.ndarray:
    """float64 [..., k] -> uint32 [..., 2k] (same bytes)."""
    return np.ascontiguousarray(x, np.float64).view(np.uint32)


def _floats(bits: np.ndarray) -> np.ndarray:
    """uint32 [..., 2k] -> float64 [..., k] (a copy)."""
    return np.ascontiguousarray(bits, np.uint32).view(np.float64).copy()


def _with_userdata(xml: str, size: int) -> mujoco.MjModel:
    scene = mujoco.MjSpec.from_string(xml)
    scene.nuserdata = size
    return scene.compile()


class CBackend:
    name = "c"

    def __init__(self, spec: PhysicsSpec, threads: int | None = None, compiled: bool | None = None):
        """`compiled`: the law as MuJoCo's C control callback (True), in NumPy between substeps (False),
        or the callback where it can be built (None, the default; `compiled_law.load`)."""
        self.spec = spec
        n = spec.num_dofs
        if spec.mj_model.nu != n:
            raise ValueError(f"the C backend drives the robot's {n} dofs through {spec.mj_model.nu} actuators; "
                             "expected one each")
        library, reason = compiled_law.load() if compiled in (None, True) else (None, "NumPy law requested")
        if compiled and library is None:
            raise RuntimeError(f"the compiled impedance law is unavailable: {reason}")
        self.compiled = library is not None
        self.compiled_unavailable_reason = reason
        self.model = m = _with_userdata(spec.xml, userdata_size(n))
        if library is not None and compiled_law.userdata_size(library, n) != userdata_size(n):
            raise RuntimeError("impedance.c and c_backend.py disagree on the userdata layout")
        self.threads = int(os.environ.get(THREADS_ENV, "0")) if threads is None else threads
        self.nstate = mujoco.mj_stateSize(m, STATE_SPEC)
        probe = mj_batch.Batch(m, 1, 1)
        self._slices = {name: self._component(probe, spec_bit) for name, spec_bit in (
            ("qpos", mujoco.mjtState.mjSTATE_QPOS), ("qvel", mujoco.mjtState.mjSTATE_QVEL),
            ("mocap_pos", mujoco.mjtState.mjSTATE_MOCAP_POS), ("mocap_quat", mujoco.mjtState.mjSTATE_MOCAP_QUAT),
            ("userdata", mujoco.mjtState.mjSTATE_USERDATA))}
        data = mujoco.MjData(m)
        self._template = np.zeros(self.nstate)
        mujoco.mj_getState(m, data, self._template, STATE_SPEC)
        control = spec.control
        self._template[self._slices["userdata"]] = np.concatenate([
            # the marker hands a world to the compiled law; the NumPy law's worlds must not carry it
            [USERDATA_MARKER if self.compiled else 0.0, n, spec.fingertip_body, 0.0], np.zeros(7), control.kp, control.kd, [control.kp_null],
            spec.home_qpos, spec.torque_limits, np.zeros(7 + 6 * n + n * n)])
        u = self._slices["userdata"].start
        self._memory = slice(u + USERDATA_HOME + 2 * n, u + userdata_size(n))  # within a state row
        self._target = slice(u + USERDATA_TARGET.start, u + USERDATA_TARGET.stop)
        self._valid = u + USERDATA_VALID
        # robot joints 0..n-1 drive dofs 0..n-1 (check_actuation): hinge columns are axis x (p - anchor)
        self._hinge = np.array([m.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE for j in range(n)])
        # where each entry of the dense [n, n] mass matrix lives in MuJoCo's sparse M
        data.M[:] = np.arange(1, data.M.size + 1)
        dense = np.zeros((m.nv, m.nv))
        mujoco.mj_fullM(m, data, dense)
        index = dense[:n, :n].astype(np.int64) - 1  # -1: a structural zero
        self._m_gather, self._m_mask = np.maximum(index, 0), (index >= 0).astype(np.float64)
        self._home = np.asarray(spec.home_qpos, np.float64)
        self._limits = np.asarray(spec.torque_limits, np.float64)
        self._batches: dict[int, mj_batch.Batch] = {}
        self._lock = threading.Lock()  # a Batch must not be used from two threads at once

    @staticmethod
    def _component(batch: mj_batch.Batch, bit) -> slice:
        start, size = batch._component(bit)  # noqa: SLF001  (offset of a component within the state row)
        return slice(start, start + size)

    # ------------------------------------------------------------------ JAX side (per environment)

    def init(self, qpos, socket_pos, socket_quat, tip_pos, tip_quat) -> Physics:
        """Place the scene at `qpos`, at rest; the fingertip pose comes from JAX's kinematics."""
        sim = CState(rows=jnp.zeros(2 * self.nstate, jnp.uint32), fresh=jnp.ones((), bool))
        return Physics(qpos=qpos, qvel=jnp.zeros(self.model.nv), tip_pos=tip_pos, tip_quat=tip_quat,
                       tip_vel=jnp.zeros(6), constraint_force=jnp.zeros(self.model.nv), socket_pos=socket_pos,
                       socket_quat=socket_quat, sim=sim)

    def step(self, physics: Physics, pos_target, quat_target) -> tuple[Physics, jax.Array]:
        m = self.model
        f32 = jnp.float32
        shapes = (jax.ShapeDtypeStruct((2 * self.nstate,), jnp.uint32),
                  jax.ShapeDtypeStruct((m.nq,), f32), jax.ShapeDtypeStruct((m.nv,), f32),
                  jax.ShapeDtypeStruct((3,), f32), jax.ShapeDtypeStruct((4,), f32),
                  jax.ShapeDtypeStruct((6,), f32), jax.ShapeDtypeStruct((m.nv,), f32),
                  jax.ShapeDtypeStruct((), jnp.bool_))
        sim = physics.sim
        rows, qpos, qvel, tip_pos, tip_quat, tip_vel, constraint_force, failed = host_call(
            self._host_step, shapes, sim.rows, sim.fresh, physics.qpos.astype(f32),
            physics.socket_pos.astype(f32), physics.socket_quat.astype(f32), pos_target.astype(f32),
            quat_target.astype(f32))
        out = physics.replace(qpos=qpos, qvel=qvel, tip_pos=tip_pos, tip_quat=tip_quat, tip_vel=tip_vel,
                              constraint_force=constraint_force, sim=CState(rows=rows, fresh=jnp.zeros((), bool)))
        return out, failed

    def at_rest(self, physics: Physics) -> Physics:
        """The float32 pose, motionless; the next step rebuilds the C state from it."""
        physics = jax.tree.map(jnp.nan_to_num, physics)
        return physics.replace(qvel=jnp.zeros_like(physics.qvel), tip_vel=jnp.zeros_like(physics.tip_vel),
                               constraint_force=jnp.zeros_like(physics.constraint_force),
                               sim=physics.sim.replace(fresh=jnp.ones((), bool)))

    # ------------------------------------------------------------------ host side (every world at once)

    def _batch(self, count: int) -> mj_batch.Batch:
        if count not in self._batches:
            batch = mj_batch.Batch(self.model, count, self.threads)
            batch.bind("qfrc_constraint")  # the contact wrench's source (`Physics.constraint_force`)
            if not self.compiled:  # derived fields are copied out only once bound
                for field in ("xpos", "xquat", "xaxis", "xanchor", "M"):
                    batch.bind(field)
            self._batches[count] = batch
        return self._batches[count]

    def _kinematics(self, batch: mj_batch.Batch, ids=None) -> np.ndarray:
        """The controller memory [k, 7 + 6n + n n] (pos, quat, jac, mass) of the worlds `ids` (all if None)
        that MuJoCo's derived fields describe (the start of the last substep); the NumPy law only."""
        s, n = self.spec, self.spec.num_dofs
        pick = (lambda a: a) if ids is None else (lambda a: a[ids])
        pos = pick(batch.xpos[:, s.fingertip_body])
        quat = pick(batch.xquat[:, s.fingertip_body])
        axis, anchor = pick(batch.xaxis[:, :n]), pick(batch.xanchor[:, :n])  # [k, n, 3]
        r = pos[:, None] - anchor
        cross = np.stack([axis[..., 1] * r[..., 2] - axis[..., 2] * r[..., 1],
                          axis[..., 2] * r[..., 0] - axis[..., 0] * r[..., 2],
                          axis[..., 0] * r[..., 1] - axis[..., 1] * r[..., 0]], axis=1)  # [k, 3, n]
        axis_t = np.swapaxes(axis, 1, 2)
        jac = np.concatenate([np.where(self._hinge, cross, axis_t), axis_t * self._hinge], axis=1)  # [k, 6, n]
        mass = pick(batch.M)[:, self._m_gather] * self._m_mask
        k = len(pos)
        return np.concatenate([pos, quat, jac.reshape(k, -1), mass.reshape(k, -1)], axis=1)

    def _unpack(self, memory: np.ndarray):
        n = self.spec.num_dofs
        k = len(memory)
        return (memory[:, :3], memory[:, 3:7], memory[:, 7:7 + 6 * n].reshape(k, 6, n),
                memory[:, 7 + 6 * n:].reshape(k, n, n))

    def _numpy_control_period(self, batch: mj_batch.Batch, failed: np.ndarray) -> None:
        """`decimation` single substeps with the law evaluated in NumPy between them."""
        s, n = self.spec, self.spec.num_dofs
        state = batch.state
        fresh = np.flatnonzero(state[:, self._valid] == 0)
        if fresh.size:  # no memory yet: the first substep reads the kinematics of the start
            batch.forward(fresh, stage=mujoco.mjtStage.mjSTAGE_POS)
            state[fresh, self._memory] = self._kinematics(batch, fresh)
            state[fresh, self._valid] = 1.0
        target = state[:, self._target]
        memory = state[:, self._memory].copy()
        qpos_view, qvel_view, ctrl = batch.qpos, batch.qvel, batch.ctrl
        for _ in range(s.decimation):
            ctrl[:] = impedance_torques(*self._unpack(memory), qpos_view[:, :n], qvel_view[:, :n], target[:, :3],
                                        target[:, 3:], self._home, self._limits, s.control, xp=np)
            try:
                batch.step()
            except mj_batch.SimulationError as error:  # those worlds kept their state; the rest stepped
                failed[error.ids] = True
            memory = self._kinematics(batch)
        state[:, self._memory] = memory

    def _host_step(self, rows, fresh, qpos, socket_pos, socket_quat, pos_target, quat_target):
        lead = fresh.shape
        count = math.prod(lead)
        flat = lambda a, core: np.asarray(a).reshape((count,) + core)  # noqa: E731
        m = self.model
        rows, fresh = _floats(flat(rows, (2 * self.nstate,))), flat(fresh, ()).copy()
        placed = np.flatnonzero(fresh)
        if placed.size:
            new = np.repeat(self._template[None], placed.size, axis=0)
            new[:, self._slices["qpos"]] = flat(qpos, (m.nq,))[placed]
            mocap = self.spec.socket_mocap
            new[:, self._slices["mocap_pos"].start + 3 * mocap:][:, :3] = flat(socket_pos, (3,))[placed]
            new[:, self._slices["mocap_quat"].start + 4 * mocap:][:, :4] = flat(socket_quat, (4,))[placed]
            rows[placed] = new
        rows[:, self._target] = np.concatenate([flat(pos_target, (3,)), flat(quat_target, (4,))], axis=1)
        failed = np.zeros(count, bool)
        with self._lock:
            quiet = mujoco.get_mju_user_warning()
            mujoco.set_mju_user_warning(lambda message: None)  # failures are counted, not printed
            try:
                batch = self._batch(count)
                batch.state[:] = rows
                warnings_before = batch.warning[:, FAILURE_WARNINGS, 1].sum(axis=1)
                if self.compiled:
                    try:
                        batch.step(nstep=self.spec.decimation)
                    except mj_batch.SimulationError as error:  # those worlds kept their state; the rest stepped
                        failed[error.ids] = True
                else:
                    self._numpy_control_period(batch, failed)
                failed |= batch.warning[:, FAILURE_WARNINGS, 1].sum(axis=1) > warnings_before
                state = batch.state.copy()
                constraint_force = batch.qfrc_constraint.copy()
            finally:
                mujoco.set_mju_user_warning(quiet)
        failed |= ~np.all(np.isfinite(state), axis=1)
        state = np.where(failed[:, None], rows, state)  # never hand a broken row back to JAX
        constraint_force = np.where(failed[:, None] | ~np.isfinite(constraint_force), 0.0, constraint_force)
        pos, quat, jac, _ = self._unpack(state[:, self._memory])
        qvel = state[:, self._slices["qvel"]]
        tip_vel = (jac @ qvel[:, :self.spec.num_dofs, None])[..., 0]
        outputs = (_bits(state), state[:, self._slices["qpos"]], qvel, pos, quat, tip_vel, constraint_force, failed)
        cores = ((2 * self.nstate,), (m.nq,), (m.nv,), (3,), (4,), (6,), (m.nv,), ())
        dtypes = (np.uint32,) + (np.float32,) * 6 + (np.bool_,)
        return tuple(np.asarray(o, d).reshape(lead + c) for o, c, d in zip(outputs, cores, dtypes))
