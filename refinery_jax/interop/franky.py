"""A Franka arm through franky-control 2.0 (libfranka) as a `robot.backend.RobotBackend`.

Each `command` sets the target of one long-lived Cartesian impedance tracking motion
(franky's `CartesianImpedanceTracker`, torque control at 1 kHz on franky's side); `stop`
ends it with franky's `TorqueStopMotion` (the arm brought to rest); the next command
starts a new one from the measured pose. The caller paces the commands (the deployment
loop runs at the policy's 15 Hz). Works against a real robot and against franky-sim,
which speaks the same libfranka protocol on a loopback address (`realtime=False` there:
no real-time kernel).

Conventions (README, Interop): franky's poses are `Affine(translation, quaternion x, y,
z, w)` of the end effector (the hand's TCP by default) in the base frame, the hand
pointing down at identity + 180° about x; the backend returns and takes the project's
w, x, y, z quaternion in the fingertip convention (`envs.rotations.hand_down` between
the two). The external wrench is libfranka's estimate `O_F_ext_hat_K` (franky-sim
reports zeros: it does not estimate one).

Needs `pip install -e '.[interop]'` (franky-control; franky-sim for the tests).
"""

from __future__ import annotations

import time

import numpy as np

from refinery_jax.envs.rotations import hand_down
from refinery_jax.robot.backend import RobotState


def _franky():
    try:
        import franky  # noqa: PLC0415
    except ImportError:
        raise ImportError("the Franka backend needs franky-control: pip install -e '.[interop]'") from None
    return franky


def to_franky_quat(q_wxyz: np.ndarray) -> np.ndarray:
    """A project quaternion (w, x, y, z, fingertip convention) as franky's (x, y, z, w, hand down)."""
    q = hand_down(np.asarray(q_wxyz, float), np)
    return np.concatenate([q[1:], q[:1]])


def from_franky_quat(q_xyzw: np.ndarray) -> np.ndarray:
    """franky's end-effector quaternion (x, y, z, w, hand down) in the project's convention."""
    q = np.asarray(q_xyzw, float)
    q = -hand_down(np.concatenate([q[3:], q[:3]]), np)  # hand_down twice is -1
    return q if q[0] >= 0 else -q


class FrankyBackend:
    def __init__(self, hostname: str, translational_stiffness: float = 800.0, rotational_stiffness: float = 40.0,
                 realtime: bool = True, relative_dynamics_factor: float = 0.1):
        self.hostname, self.realtime = hostname, realtime
        self.stiffness = (translational_stiffness, rotational_stiffness)
        self.relative_dynamics_factor = relative_dynamics_factor
        self.robot = None
        self._tracker = None
        self._t0 = 0.0

    def connect(self) -> RobotState:
        """Connect (once: libfranka takes one connection per robot; later calls return the state)."""
        if self.robot is not None:
            return self.state()
        franky = _franky()
        config = franky.RealtimeConfig.Enforce if self.realtime else franky.RealtimeConfig.Ignore
        self.robot = franky.Robot(self.hostname, realtime_config=config)
        self.robot.relative_dynamics_factor = self.relative_dynamics_factor
        self.robot.recover_from_errors()
        self._t0 = time.monotonic()
        return self.state()

    def state(self) -> RobotState:
        robot = self.robot
        cartesian = robot.current_cartesian_state
        pose, twist = cartesian.pose.end_effector_pose, cartesian.velocity.end_effector_twist
        raw = robot.state
        return RobotState(time=time.monotonic() - self._t0, ee_pos=np.asarray(pose.translation, float),
                          ee_quat=from_franky_quat(pose.quaternion),
                          ee_twist=np.concatenate([np.asarray(twist.linear), np.asarray(twist.angular)]),
                          wrench=np.asarray(raw.O_F_ext_hat_K, float), joint_pos=np.asarray(raw.q, float),
                          moving=self._tracker is not None and robot.is_in_control)

    def command(self, pos, quat) -> None:
        franky = _franky()
        if self._tracker is None or not self.robot.is_in_control:
            self._tracker = franky.CartesianImpedanceTracker(self.robot, translational_stiffness=self.stiffness[0],
                                                             rotational_stiffness=self.stiffness[1])
        self._tracker.set_target(franky.Affine(np.asarray(pos, float), to_franky_quat(quat)))

    def stop(self) -> None:
        if self._tracker is not None:
            tracker, self._tracker = self._tracker, None
            tracker.stop()

    def recover(self) -> None:
        self.robot.recover_from_errors()

    def close(self) -> None:
        self.stop()
        self.robot = None
