"""The safety envelope (`robot.safety`): each limit driven into by a policy, and the robot
(a kinematic test double with a wall) checked to have stayed inside. The same envelope in
front of franky-sim's Franka: tests/test_interop_franky.py."""

from __future__ import annotations

import time

import numpy as np
import pytest

from refinery_jax.robot.backend import RobotState
from refinery_jax.robot.safety import SafetyEnvelope, SafetyLimits, SafetyStopped

UP = np.array([1.0, 0.0, 0.0, 0.0])
LIMITS = SafetyLimits(workspace_low=(0.3, -0.2, 0.05), workspace_high=(0.7, 0.2, 0.5), max_step=0.01,
                      max_yaw_step=0.05, max_speed=0.25, max_force=20.0, watchdog=0.2)
PERIOD = 1 / 15


class KinematicRobot:
    """Moves its end effector to each commanded target within one control period (the
    fastest a real impedance controller could), unless a wall at z = `wall_z` stops it;
    the wall pushes back with `stiffness` N/m of penetration of the target below it."""

    def __init__(self, pos=(0.5, 0.0, 0.3), wall_z=-np.inf, stiffness=2000.0, lever=0.0):
        self.pos, self.quat = np.array(pos, float), UP.copy()
        self.velocity = np.zeros(3)
        self.wall_z, self.stiffness = wall_z, stiffness
        self.lever = lever  # m: the contact's offset from the fingertip (a plug touching at its edge)
        self.target = None
        self.moving = False
        self.trace = [self.pos.copy()]
        self.stops = self.recoveries = 0
        self.push = np.zeros(3)  # an outside disturbance added to the next period's motion

    def connect(self):
        return self.state()

    def state(self):
        below = self.wall_z - self.target[2] if self.target is not None else 0.0
        force = np.array([0.0, 0.0, self.stiffness * max(below, 0.0)])
        return RobotState(time=0.0, ee_pos=self.pos.copy(), ee_quat=self.quat.copy(),
                          ee_twist=np.concatenate([self.velocity, np.zeros(3)]),
                          wrench=np.concatenate([force, [self.lever * force[2], 0.0, 0.0]]),
                          joint_pos=np.zeros(7), moving=self.moving)

    def command(self, pos, quat):
        self.target, self.moving = np.asarray(pos, float), True
        new = self.target.copy()
        new[2] = max(new[2], self.wall_z)
        new = new + self.push
        self.push = np.zeros(3)
        self.velocity = (new - self.pos) / PERIOD
        self.pos, self.quat = new, np.asarray(quat, float)
        self.trace.append(self.pos.copy())

    def stop(self):
        self.moving, self.velocity, self.target = False, np.zeros(3), None
        self.stops += 1

    def recover(self):
        self.recoveries += 1

    def close(self):
        pass


def _run(envelope, robot, policy, steps):
    """A policy loop: read, act (absolute target from the policy), command; until stopped."""
    for t in range(steps):
        state = envelope.state()
        try:
            envelope.command(*policy(state, t))
        except SafetyStopped:
            return t
    return steps


def test_workspace_box_holds_whatever_the_policy_asks():
    robot = KinematicRobot()
    envelope = SafetyEnvelope(robot, LIMITS)
    envelope.connect()
    # a policy that heads for a point far outside the box (below, beyond x and y)
    _run(envelope, robot, lambda s, t: (np.array([2.0, -3.0, -1.0]), UP), 300)
    trace = np.stack(robot.trace)
    assert np.all(trace >= np.array(LIMITS.workspace_low) - 1e-12)
    assert np.all(trace <= np.array(LIMITS.workspace_high) + 1e-12)
    assert np.allclose(trace[-1], [0.7, -0.2, 0.05])  # it reached the corner and stayed there
    assert envelope.hits["workspace"] > 0 and not envelope.stopped
    envelope.close()


def test_target_step_and_rotation_are_bounded_per_period():
    robot = KinematicRobot()
    envelope = SafetyEnvelope(robot, LIMITS)
    envelope.connect()
    yaw = lambda angle: np.array([np.cos(angle / 2), 0, 0, np.sin(angle / 2)])  # noqa: E731
    _run(envelope, robot, lambda s, t: (s.ee_pos + np.array([0.05, 0.05, 0.0]) * (-1) ** (t // 5), yaw(1.0)), 40)
    steps = np.linalg.norm(np.diff(np.stack(robot.trace), axis=0), axis=1)
    assert steps.max() <= LIMITS.max_step + 1e-12 and steps.max() > 0.9 * LIMITS.max_step
    assert np.max(np.linalg.norm(np.diff(np.stack(robot.trace), axis=0), axis=1) / PERIOD) <= 0.151  # 1 cm / period
    angle = 2 * np.arccos(min(1.0, abs(robot.quat[0])))
    assert angle == pytest.approx(min(1.0, 40 * LIMITS.max_yaw_step), abs=1e-6)  # reached 1 rad in 0.05 rad steps
    assert envelope.hits["step"] > 0 and envelope.hits["yaw_step"] > 0
    envelope.close()


def test_measured_speed_above_the_limit_stops_the_robot():
    robot = KinematicRobot()
    envelope = SafetyEnvelope(robot, LIMITS)
    envelope.connect()
    robot.push = np.array([0.0, 0.05, 0.0])  # knocked 5 cm in one period: 0.75 m/s

    def policy(state, t):
        return state.ee_pos, UP

    stopped_at = _run(envelope, robot, policy, 10)
    assert envelope.stopped and envelope.hits["speed"] == 1 and robot.stops == 1
    assert stopped_at == 2  # the command after the measured spike was refused
    with pytest.raises(SafetyStopped):
        envelope.command(robot.pos, UP)
    envelope.recover()
    envelope.command(robot.pos, UP)  # commands are accepted again after recover()
    assert robot.recoveries == 1 and not envelope.stopped
    envelope.close()


def test_contact_force_above_the_limit_stops_the_robot():
    robot = KinematicRobot(wall_z=0.25)
    envelope = SafetyEnvelope(robot, LIMITS)
    envelope.connect()
    forces = []

    def policy(state, t):  # presses down into the wall without end
        forces.append(state.force)
        return state.ee_pos - np.array([0.0, 0.0, 0.03]), UP

    _run(envelope, robot, policy, 100)
    assert envelope.stopped and envelope.hits["force"] == 1
    # the robot stopped at the first reading above the limit: the force never exceeded
    # the limit by more than one target step into the wall (max_step x stiffness)
    assert max(forces) > LIMITS.max_force
    assert max(forces) <= LIMITS.max_force + LIMITS.max_step * robot.stiffness + 1e-9
    assert not robot.moving
    envelope.close()


def test_contact_torque_above_the_limit_stops_the_robot():
    """A contact far off the fingertip's axis (a 0.6 m lever, a softer wall): the torque passes
    its limit (5 Nm) while the force is still under its own (20 N); the torque limit stops it."""
    robot = KinematicRobot(wall_z=0.25, stiffness=1000.0, lever=0.6)
    envelope = SafetyEnvelope(robot, LIMITS)
    envelope.connect()
    torques, forces = [], []

    def policy(state, t):
        torques.append(state.torque)
        forces.append(state.force)
        return state.ee_pos - np.array([0.0, 0.0, 0.03]), UP

    _run(envelope, robot, policy, 100)
    assert envelope.stopped and envelope.hits["torque"] == 1 and envelope.hits["force"] == 0
    assert max(torques) > LIMITS.max_torque
    assert max(torques) <= LIMITS.max_torque + robot.lever * LIMITS.max_step * robot.stiffness + 1e-9
    assert max(forces) < LIMITS.max_force and not robot.moving
    envelope.close()


def test_watchdog_stops_a_robot_whose_commands_stop_arriving():
    robot = KinematicRobot()
    envelope = SafetyEnvelope(robot, LIMITS)
    envelope.connect()
    time.sleep(2 * LIMITS.watchdog)
    assert robot.stops == 0  # no motion yet: nothing to stop
    for _ in range(3):
        envelope.command(robot.pos + [0.001, 0, 0], UP)
        time.sleep(LIMITS.watchdog / 4)
    assert robot.stops == 0  # commands keep arriving
    time.sleep(3 * LIMITS.watchdog)  # the policy loop stalls
    assert envelope.stopped and envelope.hits["watchdog"] == 1 and robot.stops == 1 and not robot.moving
    envelope.close()


def test_invalid_targets_and_limits_are_refused():
    robot = KinematicRobot()
    envelope = SafetyEnvelope(robot, LIMITS)
    envelope.connect()
    with pytest.raises(ValueError, match="finite"):
        envelope.command(np.array([np.nan, 0.0, 0.3]), UP)
    assert envelope.stopped and envelope.hits["invalid"] == 1 and len(robot.trace) == 1  # never sent
    envelope.close()
    with pytest.raises(ValueError, match="below workspace_high"):
        SafetyLimits(workspace_low=(0.0, 0.0, 0.5), workspace_high=(1.0, 1.0, 0.4))
    with pytest.raises(ValueError, match="max_force"):
        SafetyLimits(workspace_low=(0, 0, 0), workspace_high=(1, 1, 1), max_force=0.0)
