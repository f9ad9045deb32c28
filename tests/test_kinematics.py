"""Reset-time kinematics in plain JAX against MuJoCo itself (mj_kinematics, mj_jac)."""

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from refinery_jax.assets.registry import get_assembly
from refinery_jax.assets.scene import PhysicsConfig, embodiment_spec, scene_xml
from refinery_jax.envs.kinematics import chain_from_model, fingertip_pose, fingertip_pose_and_jacobian, solve_ik
from refinery_jax.envs.rotations import axis_angle_error, yaw_quat


@pytest.fixture(scope="module", params=["floating_hand", "franka"])
def robot(request):
    model = mujoco.MjModel.from_xml_string(scene_xml(get_assembly("square_peg"), request.param, PhysicsConfig()))
    spec = embodiment_spec(request.param)
    body = model.body("fingertip").id
    return model, spec, body, chain_from_model(model, body, spec.num_dofs)


def test_pose_and_jacobian_match_mujoco(robot):
    model, spec, body, chain = robot
    data = mujoco.MjData(model)
    f = jax.jit(lambda q: fingertip_pose_and_jacobian(chain, q))
    rng = np.random.default_rng(0)
    for _ in range(4):
        q = np.asarray(spec.home_qpos) + rng.uniform(-0.5, 0.5, spec.num_dofs)
        data.qpos[: spec.num_dofs] = q
        mujoco.mj_forward(model, data)
        jacp, jacr = np.zeros((3, model.nv)), np.zeros((3, model.nv))
        mujoco.mj_jacBody(model, data, jacp, jacr, body)
        pos, quat, jac = f(jnp.asarray(q, jnp.float32))
        np.testing.assert_allclose(pos, data.xpos[body], atol=1e-6)
        sign = np.sign(np.dot(np.asarray(quat), data.xquat[body]))  # q and -q are the same rotation
        np.testing.assert_allclose(sign * np.asarray(quat), data.xquat[body], atol=1e-6)
        np.testing.assert_allclose(jac, np.concatenate([jacp, jacr])[:, : spec.num_dofs], atol=1e-5)


def test_ik_reaches_poses_across_the_socket_box(robot):
    model, spec, body, chain = robot
    keys = jax.random.split(jax.random.key(0), 3)
    n = 64
    socket = np.asarray(model.body("socket").pos)
    targets = socket + jnp.array([0.0, 0.0, 0.08]) + jax.random.uniform(keys[0], (n, 3), minval=-0.06, maxval=0.06)
    quats = yaw_quat(jax.random.uniform(keys[1], (n,), minval=-0.3, maxval=0.3))
    home = jnp.asarray(spec.home_qpos, jnp.float32)
    q = jax.jit(jax.vmap(lambda p, r: solve_ik(chain, p, r, home)))(targets, quats)
    pos, quat = jax.vmap(lambda x: fingertip_pose(chain, x))(q)
    assert float(jnp.max(jnp.abs(pos - targets))) < 5e-6
    assert float(jnp.max(jnp.abs(jax.vmap(axis_angle_error)(quats, quat)))) < 1e-5
    if np.isfinite(chain.low).any():  # the arm's joint limits hold
        assert bool(jnp.all((q >= chain.low - 1e-6) & (q <= chain.high + 1e-6)))


@pytest.mark.parametrize("embodiment", ["floating_hand", "franka"])
def test_reset_reports_the_theta_it_reached(embodiment):
    """info.init is the θ the plug tip reached at reset (what the success models learn from) and
    info.ik_residual how far it is from the θ asked for: ~0 over the θ box, large out of reach."""
    from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig
    from refinery_jax.envs.samplers import uniform_box

    env = AssemblyEnv(EnvConfig(embodiment=embodiment))
    reset = jax.jit(jax.vmap(env.reset))
    keys = jax.random.split(jax.random.key(0), 32)
    asked = jax.vmap(uniform_box(env.init_low, env.init_high))(keys)
    info = reset(keys, asked).info
    assert float(jnp.max(info.ik_residual)) < 2e-5
    np.testing.assert_allclose(np.asarray(info.init), np.asarray(asked), atol=2e-5)
    far = asked.at[:, 2].add(1.5)  # 1.5 m higher: out of the arm's reach (the floating hand has none)
    info = reset(keys, far).info
    np.testing.assert_allclose(np.asarray(jnp.linalg.norm(info.init - far, axis=1)), np.asarray(info.ik_residual),
                               rtol=1e-4, atol=1e-6)
    if embodiment == "franka":
        assert float(jnp.min(info.ik_residual)) > 0.3
    else:
        assert float(jnp.max(info.ik_residual)) < 2e-5


def test_theta_with_yaw_sets_the_plug_yaw():
    """With `theta_yaw`, θ = (x, y, z, yaw): the plug starts at exactly that yaw relative to the
    socket (reported back in info.init); without it the yaw is a nuisance drawn from the key."""
    from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig
    from refinery_jax.envs.rotations import quat_mul, quat_yaw

    env = AssemblyEnv(EnvConfig(theta_yaw=True))
    assert env.theta_size == 4 and env.init_high[3] == pytest.approx(np.radians(5.0))
    keys = jax.random.split(jax.random.key(1), 8)
    theta = jnp.tile(jnp.asarray(0.5 * (env.init_low + env.init_high)), (8, 1)).at[:, 3].set(jnp.linspace(-0.08, 0.08, 8))
    states = jax.jit(jax.vmap(env.reset))(keys, theta)
    socket_inverse = states.physics.socket_quat * jnp.array([1.0, -1.0, -1.0, -1.0])
    yaw = jax.vmap(lambda a, b: quat_yaw(quat_mul(a, b)))(socket_inverse, states.physics.tip_quat)
    np.testing.assert_allclose(np.asarray(yaw), np.asarray(theta[:, 3]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(states.info.init), np.asarray(theta), atol=2e-5)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        env.reset(keys[0], theta[0, :3])
    with pytest.raises(ValueError, match="init_yaw_noise > 0"):
        EnvConfig(theta_yaw=True, init_yaw_noise=0.0)
    from refinery_jax.envs.demos import DemoConfig, make_generator  # the paper preset's demos still start assembled

    demos = jax.jit(make_generator(env, DemoConfig(num_attempts=2)))(jax.random.key(0))
    assert np.asarray(demos.fingertip).shape[0] == 2
    plain = AssemblyEnv(EnvConfig())
    states = jax.jit(jax.vmap(plain.reset))(keys, theta[:, :3])
    socket_inverse = states.physics.socket_quat * jnp.array([1.0, -1.0, -1.0, -1.0])
    yaw = np.asarray(jax.vmap(lambda a, b: quat_yaw(quat_mul(a, b)))(socket_inverse, states.physics.tip_quat))
    assert np.ptp(yaw) > 0.02 and np.all(np.abs(yaw) <= np.radians(5.0) + 1e-5)
