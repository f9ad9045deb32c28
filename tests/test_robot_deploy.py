"""A deployment trial's pieces (`robot.deploy`): the observation built from a robot's state
is the environment's, and the targets are the environment's action rule."""

import jax
import jax.numpy as jnp
import numpy as np

from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig
from refinery_jax.envs.control import smooth_and_target
from refinery_jax.robot.backend import RobotState
from refinery_jax.robot.deploy import DeployConfig, goal_pose, observation, safety_limits


def test_observation_from_the_robot_is_the_environments():
    """Reset the Franka environment, read its arm as a robot backend would, and build the
    observation: it must equal the environment's at step 0, element for element."""
    env = AssemblyEnv(EnvConfig(task="square_peg", embodiment="franka"))
    state = jax.jit(env.reset)(jax.random.key(3), jnp.array([0.004, -0.003, env.assembly.depth + 0.01]))
    d, info = state.physics, state.info
    robot = RobotState(time=0.0, ee_pos=np.asarray(d.tip_pos), ee_quat=np.asarray(d.tip_quat),
                       ee_twist=np.zeros(6), wrench=np.zeros(6), joint_pos=np.asarray(d.qpos[:7]), moving=False)
    config = DeployConfig(socket_pos=(0.5, 0.0, 0.1))
    obs = observation(robot, config, np.asarray(info.obs_goal_pos), np.asarray(info.obs_goal_quat),
                      np.zeros(6), 0, env.config.episode_steps)
    np.testing.assert_allclose(obs, np.asarray(state.obs), atol=1e-6)


def test_goal_and_workspace_follow_the_socket():
    env = AssemblyEnv(EnvConfig(task="square_peg"))
    config = DeployConfig(socket_pos=(0.5, 0.1, 0.2), socket_yaw=0.3, workspace_margin=0.05)
    pos, quat = goal_pose(env, config)
    a = env.assembly
    np.testing.assert_allclose(pos, [0.5, 0.1, 0.2 - a.depth + a.plug_length])  # plug inserted, held at its top
    np.testing.assert_allclose(quat, [np.cos(0.15), 0, 0, np.sin(0.15)], atol=1e-7)
    limits = safety_limits(env, config)
    np.testing.assert_allclose(limits.workspace_low, pos - 0.05)
    np.testing.assert_allclose(limits.workspace_high, pos + [0.05, 0.05, 0.10])
    # the start box of the simulation (θ: plug tip offset from the goal) lies inside the workspace
    assert np.all(pos + env.init_low[:3] >= limits.workspace_low) and np.all(pos + env.init_high[:3] <=
                                                                            limits.workspace_high)
    _, target, _ = smooth_and_target(jnp.ones(6), jnp.zeros(6), jnp.asarray(pos), jnp.asarray(quat),
                                     jnp.asarray(pos), jnp.zeros(3), env.config.control)
    assert np.all(np.abs(np.asarray(target) - pos) <= np.asarray(env.config.control.pos_bounds) + 1e-7)


def test_core_package_never_imports_the_optional_extras():
    """Every module outside interop/ imports without torch, rl_games, franky or gymnasium
    being loaded (checked in a fresh interpreter, whatever this one has installed)."""
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1] / "refinery_jax"
    modules = sorted(".".join(p.relative_to(root.parent).with_suffix("").parts) for p in root.rglob("*.py")
                     if "interop" not in p.parts and p.name != "__init__.py")
    code = ("import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
            + "bad = [m for m in ('torch', 'rl_games', 'franky', 'franky_sim', 'gymnasium') if m in sys.modules]\n"
            + "assert not bad, bad\nprint(len(sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(modules) > 40
