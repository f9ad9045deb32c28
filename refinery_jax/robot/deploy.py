"""One deployment trial of a specialist on a robot: move to the start, run the policy at the
control rate through the safety envelope, score the end pose.

The policy sees the observation the simulation gave it (`envs.assembly_env.POLICY_OBS`),
built from the robot's state and the configured socket pose, and its action goes through
the environment's own action rule (`envs.control.smooth_and_target`: EMA, scaled delta
targets, the box around the goal), so the robot gets the targets the simulated
controller would have. The robot's success is the environment's rule with what a robot
measures: the fingertip's depth error below `success_depth_fraction` x depth and its
lateral error below `success_keypoint_fraction` x depth (the plug's own pose is not
measured: the fingertip stands in for its keypoints).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from refinery_jax.envs.assembly_env import MAX_JOINTS, POLICY_OBS, AssemblyEnv
from refinery_jax.envs.control import smooth_and_target
from refinery_jax.envs.rotations import canonical, rotate, yaw_quat
from refinery_jax.ppo.networks import ActorCritic, Policy, initial_carry, policy_action
from refinery_jax.robot.backend import RobotState
from refinery_jax.robot.safety import SafetyEnvelope, SafetyLimits, SafetyStopped

# the observation this module builds, in order; must be the environment's
OBSERVATION = ("joint_pos", "fingertip_pos", "fingertip_quat", "goal_pos", "goal_quat", "goal_minus_fingertip",
               "prev_action", "progress")
assert tuple(name for name, _ in POLICY_OBS) == OBSERVATION


@dataclasses.dataclass(frozen=True)
class DeployConfig:
    socket_pos: tuple[float, float, float]   # m, robot base frame: the socket's top centre (the hole)
    socket_yaw: float = 0.0                  # rad
    ee_to_fingertip: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the project's fingertip in the EE frame (m)
    workspace_margin: float = 0.06           # the envelope's box: the fingertip goal ± this (and 2x above)
    max_step: float = 0.01                   # m per control period (SafetyLimits)
    max_speed: float = 0.25                  # m/s
    max_force: float = 30.0                  # N
    max_torque: float = 5.0                  # Nm
    watchdog: float = 0.25                   # s
    settle_tolerance: float = 0.003          # m from the start pose before the policy takes over
    settle_seconds: float = 5.0              # time allowed to reach the start pose

    def __post_init__(self):
        if len(self.socket_pos) != 3 or len(self.ee_to_fingertip) != 3:
            raise ValueError("socket_pos and ee_to_fingertip are 3 numbers (m)")
        for name in ("workspace_margin", "settle_tolerance", "settle_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclasses.dataclass
class Trial:
    theta: list
    reached_start: bool
    success: bool
    depth_error: float
    lateral_error: float
    limit_hits: dict
    steps: list  # per control step: time, fingertip pose, speed, force, action, target


def goal_pose(env: AssemblyEnv, config: DeployConfig) -> tuple[np.ndarray, np.ndarray]:
    """The fingertip's goal (position [3], quaternion w, x, y, z): the plug inserted to the
    task's depth, held at its top."""
    a = env.assembly
    pos = np.asarray(config.socket_pos, float) + np.array([0.0, 0.0, -a.depth + a.plug_length])
    return pos, np.asarray(yaw_quat(jnp.asarray(config.socket_yaw)), float)


def safety_limits(env: AssemblyEnv, config: DeployConfig) -> SafetyLimits:
    goal, _ = goal_pose(env, config)
    m = config.workspace_margin
    return SafetyLimits(workspace_low=tuple(goal - m), workspace_high=tuple(goal + np.array([m, m, 2 * m])),
                        max_step=config.max_step, max_speed=config.max_speed, max_force=config.max_force,
                        max_torque=config.max_torque, watchdog=config.watchdog)


def make_policy_step(env: AssemblyEnv, model: ActorCritic, obs_clip: float):
    """jit(policy, carry, obs, prev_action, tip pos, tip quat, goal pos) -> (carry, action, smoothed,
    fingertip target pos, target quat): the policy's mean action through the env's action rule."""
    control = env.config.control

    @jax.jit
    def step(policy: Policy, carry, obs, prev_action, tip_pos, tip_quat, goal_pos):
        carry, action = policy_action(model, policy, carry, obs, jax.random.key(0), True, obs_clip)
        smoothed, pos_target, quat_target = smooth_and_target(action, prev_action, tip_pos, tip_quat, goal_pos,
                                                              jnp.zeros(3), control)
        return carry, action, smoothed, pos_target, quat_target

    return step


def fingertip(state: RobotState, config: DeployConfig) -> tuple[np.ndarray, np.ndarray]:
    q = state.ee_quat
    return state.ee_pos + np.asarray(rotate(jnp.asarray(q), jnp.asarray(config.ee_to_fingertip))), q


def ee_target(pos: np.ndarray, quat: np.ndarray, config: DeployConfig) -> np.ndarray:
    """The end-effector position that puts the fingertip at `pos` with orientation `quat`."""
    return pos - np.asarray(rotate(jnp.asarray(quat), jnp.asarray(config.ee_to_fingertip)))


def observation(state: RobotState, config: DeployConfig, goal_pos, goal_quat, prev_action, step: int,
                episode_steps: int) -> np.ndarray:
    tip_pos, tip_quat = fingertip(state, config)
    joints = np.zeros(MAX_JOINTS)
    joints[: min(MAX_JOINTS, len(state.joint_pos))] = state.joint_pos[:MAX_JOINTS]
    return np.concatenate([joints, tip_pos, np.asarray(canonical(jnp.asarray(tip_quat))), goal_pos, goal_quat,
                           goal_pos - tip_pos, prev_action, [step / episode_steps]]).astype(np.float32)


def run_trial(envelope: SafetyEnvelope, env: AssemblyEnv, config: DeployConfig, policy_step: Callable,
              model: ActorCritic, policy: Policy, theta: np.ndarray, sleep: Callable[[float], None] = time.sleep
              ) -> Trial:
    """Move to goal + θ (the plug tip's offset, as in the simulation), run one episode, score it."""
    period = 1.0 / env.config.control_hz
    steps_per_episode = env.config.episode_steps
    goal_pos, goal_quat = goal_pose(env, config)
    start = goal_pos + np.asarray(theta[:3], float)
    hits_before = dict(envelope.hits)
    reached = False
    for _ in range(int(config.settle_seconds / period)):  # move to the start (the envelope limits the speed)
        tip, _ = fingertip(envelope.state(), config)
        if np.linalg.norm(tip - start) < config.settle_tolerance:
            reached = True
            break
        try:
            envelope.command(ee_target(start, goal_quat, config), goal_quat)
        except SafetyStopped:  # a limit stopped the robot on the way: the trial fails
            break
        sleep(period)
    log, carry = [], initial_carry(model, (), env.observation_size)
    prev_action = np.zeros(6, np.float32)
    if reached:
        for k in range(steps_per_episode):
            state = envelope.state()
            tip_pos, tip_quat = fingertip(state, config)
            obs = observation(state, config, goal_pos, goal_quat, prev_action, k, steps_per_episode)
            carry, action, smoothed, pos_t, quat_t = policy_step(policy, carry, obs, prev_action, tip_pos, tip_quat,
                                                                 goal_pos)
            prev_action = np.asarray(smoothed, np.float32)
            pos_t, quat_t = np.asarray(pos_t, float), np.asarray(quat_t, float)
            log.append({"t": state.time, "fingertip": tip_pos.tolist(), "quat": tip_quat.tolist(),
                        "speed": state.speed, "force": state.force, "action": np.asarray(action).tolist(),
                        "target": pos_t.tolist()})
            try:
                envelope.command(ee_target(pos_t, quat_t, config), quat_t)
            except SafetyStopped:
                break
            sleep(period)
    tip, _ = fingertip(envelope.state(), config)
    depth_error = float(abs(tip[2] - goal_pos[2]))
    lateral_error = float(np.linalg.norm(tip[:2] - goal_pos[:2]))
    c, depth = env.config, env.assembly.depth
    success = reached and not envelope.stopped and depth_error < c.success_depth_fraction * depth \
        and lateral_error < c.success_keypoint_fraction * depth
    hits = {k: v - hits_before.get(k, 0) for k, v in envelope.hits.items() if v - hits_before.get(k, 0)}
    return Trial(theta=np.asarray(theta).tolist(), reached_start=reached, success=bool(success),
                 depth_error=depth_error, lateral_error=lateral_error, limit_hits=hits, steps=log)
