"""The safety envelope in front of every robot backend: limits no policy output can bypass.

`SafetyEnvelope(backend, limits)` is itself a `RobotBackend`; a deployment holds only the
envelope. Each `command(pos, quat)`:
  1. reads the robot: if the measured end-effector speed exceeds `max_speed`, or the external
     force `max_force`, or the external torque `max_torque`, the robot is stopped and the
     command dropped;
  2. clips the target into the workspace box;
  3. moves the target at most `max_step` (m) and `max_yaw_step` (rad) from the previous
     target (from the measured pose at the start of a motion), which bounds the target's
     speed at max_step / period. A robot that starts outside the box is thus led into it
     at that speed; once inside, every target stays inside (the box is convex).
A watchdog thread stops the robot when no command has arrived for `watchdog` seconds (a
crashed or stalled policy loop). After a stop the envelope refuses commands until
`recover()`, so a policy cannot silently restart the motion. Every intervention is counted
in `hits` (by limit) and logged in `events` for the run's records.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from typing import Callable

import numpy as np

from refinery_jax.robot.backend import RobotBackend, RobotState


@dataclasses.dataclass(frozen=True)
class SafetyLimits:
    workspace_low: tuple[float, float, float]    # m, base frame: the box the target stays in
    workspace_high: tuple[float, float, float]
    max_step: float = 0.01        # m of target motion per command
    max_yaw_step: float = 0.05    # rad of target rotation per command
    max_speed: float = 0.25       # m/s of measured end-effector speed before a stop
    max_force: float = 30.0       # N of measured external force before a stop
    max_torque: float = 5.0       # Nm of measured external torque before a stop
    watchdog: float = 0.25        # s without a command before a stop

    def __post_init__(self):
        low, high = np.asarray(self.workspace_low, float), np.asarray(self.workspace_high, float)
        if low.shape != (3,) or high.shape != (3,) or not np.all(low < high):
            raise ValueError(f"workspace_low {self.workspace_low} must be below workspace_high {self.workspace_high}")
        for name in ("max_step", "max_yaw_step", "max_speed", "max_force", "max_torque", "watchdog"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class SafetyStopped(RuntimeError):
    """A command after the envelope stopped the robot (call `recover()` first)."""


def _yaw_limited(previous: np.ndarray, target: np.ndarray, max_angle: float) -> tuple[np.ndarray, bool]:
    """The rotation from `previous` toward `target` (w, x, y, z), at most `max_angle` rad."""
    dot = float(np.dot(previous, target))
    if dot < 0:  # the shorter way round
        target, dot = -target, -dot
    angle = 2.0 * np.arccos(min(dot, 1.0))
    if angle <= max_angle:
        return target, False
    fraction = max_angle / angle  # spherical interpolation by that fraction
    half = angle / 2.0
    q = (np.sin((1 - fraction) * half) * previous + np.sin(fraction * half) * target) / np.sin(half)
    return q / np.linalg.norm(q), True


class SafetyEnvelope:
    def __init__(self, backend: RobotBackend, limits: SafetyLimits, clock: Callable[[], float] = time.monotonic):
        self.backend, self.limits, self.clock = backend, limits, clock
        self.hits: Counter = Counter()
        self.events: list[dict] = []
        self.stopped = False
        self._target: tuple[np.ndarray, np.ndarray] | None = None  # the last target sent (None: none this motion)
        self._last_command = clock()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, daemon=True)

    # ------------------------------------------------------------------ protocol

    def connect(self) -> RobotState:
        state = self.backend.connect()
        self._last_command = self.clock()
        self._watchdog.start()
        return state

    def state(self) -> RobotState:
        return self.backend.state()

    def command(self, pos, quat) -> None:
        pos, quat = np.asarray(pos, float), np.asarray(quat, float)
        if pos.shape != (3,) or quat.shape != (4,) or not (np.all(np.isfinite(pos)) and np.all(np.isfinite(quat))):
            with self._lock:
                self._stop("invalid", f"target {pos}, {quat}")
            raise ValueError(f"a target needs a finite position [3] and quaternion [4]; got {pos}, {quat}")
        with self._lock:
            if self.stopped:
                raise SafetyStopped("the robot was stopped by the safety envelope; recover() before commanding")
            state = self.backend.state()
            if state.speed > self.limits.max_speed:
                self._stop("speed", f"{state.speed:.3f} m/s")
                return
            if state.force > self.limits.max_force:
                self._stop("force", f"{state.force:.1f} N")
                return
            if state.torque > self.limits.max_torque:
                self._stop("torque", f"{state.torque:.2f} Nm")
                return
            # into the box first, then at most one step from the previous target: a robot that
            # starts outside the box is led into it at the step limit, never jumped there
            inside = np.clip(pos, self.limits.workspace_low, self.limits.workspace_high)
            if not np.array_equal(inside, pos):
                self._hit("workspace", f"target {np.round(pos, 4).tolist()}")
            previous_pos, previous_quat = self._target or (state.ee_pos, state.ee_quat)
            step = inside - previous_pos
            length = float(np.linalg.norm(step))
            if length > self.limits.max_step:
                inside = previous_pos + step * (self.limits.max_step / length)
                self._hit("step", f"{length:.4f} m")
            quat, limited = _yaw_limited(previous_quat, quat / np.linalg.norm(quat), self.limits.max_yaw_step)
            if limited:
                self._hit("yaw_step", "rotation limited")
            self._target = (inside, quat)
            self._last_command = self.clock()
            self.backend.command(inside, quat)

    def stop(self) -> None:
        with self._lock:
            self._stop("caller", "stop()")

    def recover(self) -> None:
        with self._lock:
            self.backend.recover()
            self.stopped, self._target = False, None
            self._last_command = self.clock()

    def close(self) -> None:
        self._closing.set()
        if self._watchdog.is_alive():
            self._watchdog.join()
        with self._lock:
            if not self.stopped:
                self._stop("caller", "close()")
        self.backend.close()

    # ------------------------------------------------------------------ internals

    def _hit(self, limit: str, detail: str) -> None:
        self.hits[limit] += 1
        self.events.append({"time": self.clock(), "limit": limit, "detail": detail})

    def _stop(self, limit: str, detail: str) -> None:
        """Stop the robot (holding the lock)."""
        if limit != "caller":
            self._hit(limit, detail)
        if not self.stopped:
            self.stopped, self._target = True, None
            self.backend.stop()

    def _watch(self) -> None:
        period = self.limits.watchdog / 4
        while not self._closing.wait(period):
            with self._lock:
                if not self.stopped and self._target is not None and \
                        self.clock() - self._last_command > self.limits.watchdog:
                    self._stop("watchdog", f"no command for {self.clock() - self._last_command:.3f} s")
