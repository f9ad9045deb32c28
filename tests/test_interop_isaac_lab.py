"""AutoMate's observation and action conventions on the project's environment
(`interop.isaac_lab`), against SciPy's rotations and AutoMate's action rule by hand."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from refinery_jax.envs.assembly_env import POLICY_OBS_SIZE, observation_slice
from refinery_jax.envs.control import ControlConfig, smooth_and_target
from refinery_jax.envs.rotations import quat_yaw, yaw_quat
from refinery_jax.interop.isaac_lab import (AUTOMATE_OBS_SIZE, AutoMateConventions, automate_observation,
                                            project_action)


def _obs(tip_quat, goal_quat, rng):
    obs = rng.normal(size=POLICY_OBS_SIZE).astype(np.float32)
    obs[observation_slice("fingertip_quat")] = tip_quat
    obs[observation_slice("goal_quat")] = goal_quat
    return jnp.asarray(obs)


def _same_rotation(q_xyzw, want: Rotation):
    got = Rotation.from_quat(np.asarray(q_xyzw, np.float64))
    assert (got.inv() * want).magnitude() < 1e-5


@pytest.mark.parametrize("order", ["wxyz", "xyzw"])
def test_observation_is_automates_layout_frames_and_hand_down_quaternion(order):
    rng = np.random.default_rng(0)
    tilted = Rotation.from_rotvec([0.1, -0.2, 0.7])
    tip = np.roll(tilted.as_quat(), 1)          # the project's w, x, y, z
    goal = np.asarray(yaw_quat(jnp.asarray(0.3)))  # upright at yaw 0.3
    obs = _obs(tip, goal, rng)
    origin = (0.5, -0.1, 0.02)
    out = np.asarray(automate_observation(obs, AutoMateConventions(origin=origin, quat_order=order)))
    assert out.shape == (AUTOMATE_OBS_SIZE,)
    part = lambda name: np.asarray(obs[observation_slice(name)])  # noqa: E731
    np.testing.assert_allclose(out[0:7], part("joint_pos"))
    np.testing.assert_allclose(out[7:10], part("fingertip_pos") - origin, atol=1e-6)
    np.testing.assert_allclose(out[14:17], part("goal_pos") - origin, atol=1e-6)
    np.testing.assert_allclose(out[21:24], part("goal_minus_fingertip"))
    as_xyzw = (lambda q: q) if order == "xyzw" else (lambda q: np.roll(q, -1))
    # AutoMate's hand points down: its fingertip frame is the project's turned 180° about its own x
    _same_rotation(as_xyzw(out[10:14]), tilted * Rotation.from_euler("x", np.pi))
    # an upright yaw ψ is AutoMate's nominal Euler xyz (π, 0, ψ)
    _same_rotation(as_xyzw(out[17:21]), Rotation.from_euler("xyz", [np.pi, 0.0, 0.3]))


def test_action_gives_automates_target_motion():
    """AutoMate: target = fingertip + 0.1 m x EMA(a)[:3], yaw + 0.01 rad x EMA(a)[5], EMA 0.2,
    clipped to ±1 first; the project's environment must move its targets the same way."""
    control = ControlConfig()
    a = jnp.array([0.5, -1.7, 0.25, 0.9, -0.4, -0.8])  # one component beyond the clip
    prev = jnp.array([0.1, 0.0, -0.2, 0.0, 0.0, 0.3])
    pos, yaw = jnp.array([0.01, 0.02, 0.1]), 0.4
    goal = pos  # the target box (±5 cm around it) does not bind for these small moves
    smoothed, pos_target, quat_target = smooth_and_target(project_action(a, control), prev * project_action(
        jnp.ones(6), control), pos, yaw_quat(jnp.asarray(yaw)), goal, jnp.zeros(3), control)
    ema = 0.2 * np.clip(np.asarray(a), -1, 1) + 0.8 * np.asarray(prev)  # AutoMate's smoothed action
    np.testing.assert_allclose(pos_target, np.asarray(pos) + 0.1 * ema[:3], atol=1e-6)
    np.testing.assert_allclose(quat_yaw(quat_target), yaw + 0.01 * ema[5], atol=1e-6)


def test_bad_conventions_are_refused():
    with pytest.raises(ValueError, match="quat_order"):
        AutoMateConventions(quat_order="zyxw")
    with pytest.raises(ValueError, match="origin"):
        AutoMateConventions(origin=(0.0, 0.0))
