"""The two physics backends (MJX and C MuJoCo behind a callback) against each other and MuJoCo.

- the impedance law in NumPy (float64, C backend) and in JAX (float32, MJX) agree;
- plug trajectories agree from the same start under the same actions, in free space and
  through the scripted insertion (contact), with the controller lag matched on both, and so
  do the contact wrenches (`contact_wrench`), themselves MuJoCo's contact forces summed;
- the C backend is bit-identical across reruns, thread counts and how worlds are batched;
- its compiled law (impedance.c, MuJoCo's control callback) matches the NumPy law, leaves
  other models alone, and falls back to NumPy, saying why, where it cannot be built;
- bad backend names fail before anything compiles.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig
from refinery_jax.envs.control import ControlConfig, impedance_torques
from refinery_jax.envs.physics import resolve_backend
from refinery_jax.envs.physics import compiled_law
from refinery_jax.envs.physics.c_backend import CBackend, userdata_size
from refinery_jax.envs.scripted import scripted_action

STEPS = 100
BATCH = 8


def _rollout(env, key):
    """Plug-tip paths [2B, STEPS, 3] and final success [2B]: BATCH episodes under random actions
    (free space), then the same starts under the scripted insertion (contact), in one program."""
    keys = jax.random.split(key, BATCH)
    inits = jax.vmap(lambda k: jax.random.uniform(k, (3,), minval=env.init_low, maxval=env.init_high))(keys)
    scripted = jnp.arange(2 * BATCH) >= BATCH

    def one(k, init, use_script):
        state = env.reset(k, init)

        def body(state, k_act):
            action = jnp.where(use_script, scripted_action(env, state), _random_actions(k_act))
            state = env.step(state, action)
            return state, (env.plug_tip(state.physics), state.success, env.contact_wrench(state.physics))

        _, (tips, success, wrench) = jax.lax.scan(body, state, jax.random.split(k, STEPS))
        return tips, success[-1], wrench

    return jax.jit(jax.vmap(one))(jnp.concatenate([keys, keys]), jnp.concatenate([inits, inits]), scripted)


def _random_actions(key):
    """Random in x, y and yaw, rising in z: the plug stays clear of the socket (free space)."""
    a = 0.5 * jax.random.uniform(key, (6,), minval=-1.0, maxval=1.0)
    return a.at[2].set(jnp.abs(a[2]))


@pytest.fixture(scope="module")
def hand_paths():
    return {b: jax.device_get(_rollout(AssemblyEnv(EnvConfig(backend=b)), jax.random.key(3))) for b in ("c", "mjx")}


def test_impedance_law_is_the_same_in_numpy_and_jax():
    """The C backend runs the law in float64 NumPy for every world at once; MJX per world in JAX."""
    rng = np.random.default_rng(0)
    for n in (6, 7):  # floating hand, and a redundant arm with the null-space term
        k = 5
        quat = rng.normal(size=(k, 4))
        quat /= np.linalg.norm(quat, axis=1, keepdims=True)
        target = rng.normal(size=(k, 4))
        target /= np.linalg.norm(target, axis=1, keepdims=True)
        a = rng.normal(size=(k, n, n))
        args = (rng.normal(size=(k, 3)), quat, rng.normal(size=(k, 6, n)), a @ np.swapaxes(a, 1, 2) + np.eye(n),
                rng.normal(size=(k, n)), rng.normal(size=(k, n)), rng.normal(size=(k, 3)), target)
        home, limits = rng.normal(size=n), np.full(n, 50.0)
        ours = impedance_torques(*args, home, limits, ControlConfig(), xp=np)
        theirs = jax.vmap(lambda *a: impedance_torques(*a, jnp.asarray(home, jnp.float32), jnp.asarray(limits),
                                                       ControlConfig()))(*(jnp.asarray(x, jnp.float32) for x in args))
        np.testing.assert_allclose(ours, np.asarray(theirs), rtol=2e-3, atol=2e-3)
        assert np.abs(ours).max() > 1.0  # not trivially zero


@pytest.mark.parametrize("actions", ["random", "scripted"])
def test_backends_agree_on_plug_trajectories(hand_paths, actions):
    """Same start, same actions: the plug tips stay within micrometres over 100 control steps.

    Measured (floating hand, square_peg, 8 starts): free space with random actions at most
    0.15 um; scripted insertion, through contact and into the hole, at most 2.4 um, and both
    succeed. The difference is float32 (MJX) vs float64 (C) arithmetic; with the controller
    reading the current instead of the lagged kinematics on one side it is millimetres (the C
    prototype of shared/cpu-backend-notes.md: 1.7-4.5 mm). Tolerances: 10x the measured gap.
    """
    rows = slice(0, BATCH) if actions == "random" else slice(BATCH, 2 * BATCH)
    tolerance = 2e-6 if actions == "random" else 25e-6
    (c_tips, c_success), (m_tips, m_success) = ((t[rows], s[rows]) for t, s, _ in (hand_paths["c"], hand_paths["mjx"]))
    gap = np.abs(c_tips - m_tips).max()
    assert gap < tolerance, f"plug tips differ by {gap * 1e6:.2f} um"
    assert np.abs(c_tips[:, -1] - c_tips[:, 0]).max() > 5e-3  # the plug did move
    if actions == "scripted":
        assert c_success.all() and m_success.all()


def test_backends_agree_on_the_contact_wrench(hand_paths):
    """The force/torque reading (`contact_wrench`) along the same episodes: zero in free space on
    both backends; through the scripted insertion, contact starts at the same step and the
    force has the same size (onsets within one step). Measured: the plug seated on the socket floor reads a steady
    0.150 N on C MuJoCo, while MJX alternates 0.171 / 0 / 0.146 N from step to step (its box-box
    contacts drop penetrations under 1 um, see assembly_env.LOOSE_PART_SINK): a reading is
    one substep's contact force, not a filtered one, so the test compares onsets and the mean
    force of the last 15 steps (seated): 0.150 N on C, 0.106 or 0.194 N on MJX by episode."""
    for free in (w[:BATCH] for _, _, w in (hand_paths["c"], hand_paths["mjx"])):
        assert np.abs(free).max() < 1e-6
    c, m = (np.linalg.norm(w[BATCH:, :, :3], axis=-1) for _, _, w in (hand_paths["c"], hand_paths["mjx"]))
    onset_c, onset_m = (np.argmax(f > 1e-3, axis=1) for f in (c, m))
    assert (c.max(axis=1) > 0.05).all()  # every insertion touched
    assert np.abs(onset_c - onset_m).max() <= 1  # measured: the same step in 7 of 8, one step apart in one
    seated = slice(STEPS - 15, STEPS)  # every plug rests on the floor by then
    np.testing.assert_allclose(m[:, seated].mean(axis=1), c[:, seated].mean(axis=1), rtol=0.5)


def test_contact_wrench_is_mujocos_contact_forces_summed_on_the_plug():
    """Against MuJoCo's own contacts: with the plug pressed 0.5 mm into the socket's rim (off
    the hole, off-axis: force and torque), the wrench read from the joint-space constraint
    forces equals the sum over the plug's contacts of `mj_contactForce`, moved to the
    fingertip origin and into the fingertip frame."""
    import mujoco  # noqa: PLC0415

    from refinery_jax.envs.physics import Physics  # noqa: PLC0415

    env = AssemblyEnv(EnvConfig(task="square_peg_loose", backend="c"))
    theta = jnp.array([0.006, 0.002, env.assembly.depth - 0.0005])
    state = jax.jit(env.reset)(jax.random.key(1), theta)
    m, d = env.mj_model, mujoco.MjData(env.mj_model)
    d.qpos[:] = np.asarray(state.physics.qpos, np.float64)
    d.mocap_pos[0], d.mocap_quat[0] = np.asarray(state.physics.socket_pos), np.asarray(state.physics.socket_quat)
    mujoco.mj_forward(m, d)
    body = env.fingertip_body
    force, torque, f6 = np.zeros(3), np.zeros(3), np.zeros(6)
    for i in range(d.ncon):
        contact = d.contact[i]
        bodies = m.geom_bodyid[contact.geom1], m.geom_bodyid[contact.geom2]
        if body not in bodies:
            continue
        mujoco.mj_contactForce(m, d, i, f6)
        frame = contact.frame.reshape(3, 3)  # rows: normal (geom1 -> geom2), tangents
        sign = 1.0 if bodies[1] == body else -1.0  # the contact force acts on geom2
        f, t = sign * frame.T @ f6[:3], sign * frame.T @ f6[3:]
        force += f
        torque += t + np.cross(contact.pos - d.xpos[body], f)
    assert d.ncon > 0 and force[2] > 1.0  # pressed down onto the rim: pushed back up
    assert np.linalg.norm(torque) > 1e-3
    physics = Physics(qpos=jnp.asarray(d.qpos, jnp.float32), qvel=jnp.zeros(m.nv), tip_pos=jnp.asarray(d.xpos[body]),
                      tip_quat=jnp.asarray(d.xquat[body], jnp.float32), tip_vel=jnp.zeros(6),
                      constraint_force=jnp.asarray(d.qfrc_constraint, jnp.float32), socket_pos=jnp.zeros(3),
                      socket_quat=jnp.array([1.0, 0.0, 0.0, 0.0]), sim=None)
    ours = np.asarray(env.contact_wrench(physics))
    to_tip = np.zeros(9)
    mujoco.mju_quat2Mat(to_tip, d.xquat[body])
    rotation = to_tip.reshape(3, 3).T  # world -> fingertip frame
    np.testing.assert_allclose(ours[:3], rotation @ force, rtol=1e-3, atol=1e-3 * np.abs(force).max())
    np.testing.assert_allclose(ours[3:], rotation @ torque, rtol=1e-3, atol=1e-3 * np.abs(torque).max())


def test_backends_agree_on_the_franka_in_free_space():
    """The arm: Jacobian, mass matrix and null-space posture term from C vs MJX; 25 steps from rest."""
    envs = {b: AssemblyEnv(EnvConfig(embodiment="franka", backend=b)) for b in ("c", "mjx")}
    key = jax.random.key(5)
    state = {b: jax.jit(e.reset)(key, jnp.array([0.003, -0.004, 0.03])) for b, e in envs.items()}
    actions = 0.5 * jax.random.uniform(jax.random.key(6), (25, 6), minval=-1.0, maxval=1.0)
    actions = actions.at[:, 2].set(jnp.abs(actions[:, 2]))  # rising: free space
    tips = {}
    for b, env in envs.items():
        step = jax.jit(env.step)
        s, path = state[b], []
        for a in actions:
            s = step(s, a)
            path.append(np.asarray(env.plug_tip(s.physics)))
        tips[b] = np.stack(path)
    assert np.abs(tips["c"] - tips["mjx"]).max() < 20e-6
    assert np.abs(tips["c"][-1] - tips["c"][0]).max() > 5e-3


def test_c_backend_is_bit_identical_across_threads_reruns_and_batching():
    env = AssemblyEnv(EnvConfig(backend="c"))
    keys = jax.random.split(jax.random.key(7), 4)
    inits = jnp.tile(jnp.array([0.001, 0.0, env.assembly.depth + 0.002]), (4, 1))
    start = jax.jit(jax.vmap(env.reset))(keys, inits)
    actions = jnp.tile(jnp.array([0.0, 0.0, -1.0, 0.0, 0.0, 0.0]), (4, 1))  # press into the socket: contact

    def run(threads, shape=(4,)):
        env.physics.threads = threads
        env.physics._batches.clear()  # noqa: SLF001  (new MuJoCo batches with this thread count)
        states = jax.tree.map(lambda x: x.reshape(shape + x.shape[1:]), start)
        step = jax.vmap(env.step) if len(shape) == 1 else jax.vmap(jax.vmap(env.step))
        a = actions.reshape(shape + (6,))
        for _ in range(5):
            states = step(states, a)
        return np.asarray(states.physics.sim.rows).reshape(4, -1)

    try:
        one = run(1)
        np.testing.assert_array_equal(one, run(1))           # rerun
        np.testing.assert_array_equal(one, run(2))           # two MuJoCo threads
        np.testing.assert_array_equal(one, run(2, (2, 2)))   # nested vmap: seeds x environments, one call
    finally:
        env.physics.threads = 0
        env.physics._batches.clear()  # noqa: SLF001


def test_bad_backend_names_fail_before_compiling():
    with pytest.raises(ValueError, match="unknown physics backend"):
        resolve_backend("warp")
    with pytest.raises(ValueError, match="unknown physics backend"):
        AssemblyEnv(EnvConfig(backend="gpu"))
    assert resolve_backend("auto") == ("c" if jax.default_backend() == "cpu" else "mjx")
    assert isinstance(AssemblyEnv(EnvConfig()).physics, CBackend) == (jax.default_backend() == "cpu")


def test_c_backend_refused_where_jax_runs_on_an_accelerator(monkeypatch):
    """On a GPU/TPU the C backend would copy every step through the host: a clear error, and
    'auto' picks MJX there."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(ValueError, match="steps on the host CPU"):
        resolve_backend("c")
    assert resolve_backend("auto") == "mjx"


def _compiled_or_skip():
    library, reason = compiled_law.load()
    if library is None:
        pytest.skip(f"the compiled impedance law cannot be built here: {reason}")
    return library


@pytest.mark.parametrize("embodiment", ["floating_hand", "franka"])
def test_compiled_law_matches_the_numpy_law(embodiment):
    """impedance.c as MuJoCo's control callback (one Batch.step per control period) against the
    NumPy law between single substeps, pressing the plug into the socket (contact) for 10 control
    steps: same state rows up to float64 rounding (measured: 2e-15 after one step)."""
    library = _compiled_or_skip()
    env = AssemblyEnv(EnvConfig(embodiment=embodiment, backend="c"))
    assert env.physics.compiled
    for n in (6, 7):
        assert compiled_law.userdata_size(library, n) == userdata_size(n)
    numpy_env = AssemblyEnv(EnvConfig(embodiment=embodiment, backend="c"))
    numpy_env.physics = CBackend(numpy_env.physics.spec, compiled=False)
    keys = jax.random.split(jax.random.key(8), 4)
    inits = jnp.tile(jnp.array([0.0005, -0.0003, env.assembly.depth / 2]), (4, 1))
    actions = jnp.tile(jnp.array([0.3, 0.0, -1.0, 0.0, 0.0, 0.5]), (4, 1))
    rows, tips = {}, {}
    for name, e in (("compiled", env), ("numpy", numpy_env)):
        states = jax.jit(jax.vmap(e.reset))(keys, inits)
        step = jax.jit(jax.vmap(e.step))
        for _ in range(10):
            states = step(states, actions)
        physics = e.physics
        rows[name] = np.asarray(states.physics.sim.rows).view(np.float64)[:, physics._slices["qpos"]]  # noqa: SLF001
        tips[name] = np.asarray(states.physics.tip_pos)
    assert np.abs(rows["compiled"] - rows["numpy"]).max() < 1e-9
    np.testing.assert_allclose(tips["compiled"], tips["numpy"], atol=1e-7)
    start = np.asarray(jax.vmap(env.reset)(keys, inits).physics.qpos)
    assert np.abs(rows["compiled"][:, :start.shape[1]] - start).max() > 1e-4  # the robot did move


def test_compiled_law_leaves_other_models_alone():
    """The control callback is process-wide: worlds without its marker keep the controls they were given."""
    _compiled_or_skip()
    import mujoco
    from mujoco import batch as mj_batch

    model = mujoco.MjModel.from_xml_string("""<mujoco><size nuserdata="200"/><worldbody><body>
        <joint name="j" type="hinge"/><geom size=".1" pos=".2 0 0"/></body></worldbody>
        <actuator><motor joint="j"/></actuator></mujoco>""")
    batch = mj_batch.Batch(model, 2, 1)
    batch.userdata[:] = 1.0  # userdata, but not the law's marker
    batch.ctrl[:] = 0.25
    batch.step(nstep=3)
    np.testing.assert_array_equal(batch.ctrl, 0.25)
    assert np.all(batch.qvel != 0)


def test_the_compiled_law_falls_back_with_a_reason(monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setattr(compiled_law, "_loaded", {})
    library, reason = compiled_law.load()
    assert library is None and "no C compiler" in reason
    env = AssemblyEnv(EnvConfig(backend="c"))
    assert not env.physics.compiled and "no C compiler" in env.physics.compiled_unavailable_reason
    with pytest.raises(RuntimeError, match="no C compiler"):
        CBackend(env.physics.spec, compiled=True)
