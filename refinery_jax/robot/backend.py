"""What running a policy on a robot needs from the robot: one protocol, in the project's conventions.

Every backend (`interop.franky` for a Franka through franky; a test double in the tests)
speaks the project's frames and units: positions in metres in the robot base frame (the
project's world frame for the Franka, whose base stands at the origin), quaternions
w, x, y, z in the project's fingertip convention (upright at yaw 0 = hand pointing down),
twists and wrenches in the base frame (m/s, rad/s, N, Nm). Each control period the caller
reads `state()` and sends one Cartesian impedance target with `command(pos, quat)`.

Nothing should talk to a backend directly: `robot.safety.SafetyEnvelope` wraps it with the
limits no policy output can bypass.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np


@dataclasses.dataclass(frozen=True)
class RobotState:
    time: float            # s since connect
    ee_pos: np.ndarray     # [3] m
    ee_quat: np.ndarray    # [4] w, x, y, z (project convention)
    ee_twist: np.ndarray   # [6] linear m/s, angular rad/s
    wrench: np.ndarray     # [6] estimated external force N, torque Nm
    joint_pos: np.ndarray  # [7] rad (zeros where the robot has fewer joints)
    moving: bool           # a command stream is active (False after stop, before the next command)

    @property
    def speed(self) -> float:
        return float(np.linalg.norm(self.ee_twist[:3]))

    @property
    def force(self) -> float:
        return float(np.linalg.norm(self.wrench[:3]))

    @property
    def torque(self) -> float:
        return float(np.linalg.norm(self.wrench[3:]))


class RobotBackend(Protocol):
    def connect(self) -> RobotState: ...
    def state(self) -> RobotState: ...
    def command(self, pos: np.ndarray, quat: np.ndarray) -> None: ...  # this period's impedance target
    def stop(self) -> None: ...      # end the motion and hold still; the next command starts a new one
    def recover(self) -> None: ...   # clear the robot's errors after a reflex or a stop
    def close(self) -> None: ...
