"""A stand-in for "real": the task with differences the simulation-trained base never saw.

SPARR (issue 20) adapts a frozen simulation policy on a real robot. Without one, the
"real" setting is this environment: the same task and observation layout as the base's
simulation, with a documented, bounded set of differences (`GapConfig`, ranges in
`GAP_RANGES`, checked before anything is built):

- perception: the goal the policy sees is off by a fixed bias per episode (a random
  horizontal direction at `goal_bias` metres, a yaw of ±`goal_yaw_bias`), on top of the
  simulation's own observation noise;
- contact: another friction coefficient, and/or a tighter-clearance variant of the task
  (`task`: a registered task with the same observation layout, e.g. square_peg_tight);
- actuation: actions scaled by `action_gain` (clipped to [-1, 1]) and applied
  `delay_steps` control steps late (the robot holds still until the first arrives);
- sensing: the wrist force/torque reading (`GapState.wrench`: the contact wrench on the
  held plug in the fingertip frame, `AssemblyEnv.contact_wrench`) with white noise of
  `ft_force_noise` N and `ft_torque_noise` N m (standard deviations, per reading).

`GapEnv(sim, gap)` has `AssemblyEnv`'s interface (reset, step, the spaces), so the episode
loop and `evaluate` run on it unchanged; its state (`GapState`) carries the episode's biases,
the actions still in flight and the force/torque reading. `robot_observation(state)` is what
the robot senses of itself (fingertip pose, velocity, force/torque): SPARR's residual input,
which holds nothing of the goal or the socket.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from refinery_jax.assets.registry import get_assembly
from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig, EnvState
from refinery_jax.envs.rotations import canonical

GAP_KEY = 0x6A9  # the perception biases' keys, folded out of the episode key

# name -> (low, high, what): the documented range of each difference
GAP_RANGES = {
    "goal_bias": (0.0, 0.005, "m, goal position bias per episode"),
    "goal_yaw_bias": (0.0, math.radians(10.0), "rad, goal yaw bias per episode (±)"),
    "friction": (0.1, 1.5, "contact friction (the simulation's: PhysicsConfig.friction, 0.5)"),
    "action_gain": (0.5, 1.5, "scale of the commanded action"),
    "delay_steps": (0, 3, "control steps between command and execution"),
    "ft_force_noise": (0.0, 5.0, "N, standard deviation of each force reading"),
    "ft_torque_noise": (0.0, 0.5, "N m, standard deviation of each torque reading"),
}
ROBOT_OBS = (("fingertip_pos", 3), ("fingertip_quat", 4), ("fingertip_vel", 6), ("wrench", 6))
ROBOT_OBS_SIZE = sum(n for _, n in ROBOT_OBS)  # 19


@dataclasses.dataclass(frozen=True)
class GapConfig:
    """The differences of the "real" setting (defaults: none; see GAP_RANGES)."""

    goal_bias: float = 0.0
    goal_yaw_bias: float = 0.0
    friction: Optional[float] = None      # None: the simulation's
    task: Optional[str] = None            # None: the simulation's task
    action_gain: float = 1.0
    delay_steps: int = 0
    ft_force_noise: float = 0.0
    ft_torque_noise: float = 0.0

    def __post_init__(self):
        for name, (low, high, what) in GAP_RANGES.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ValueError(f"gap {name} = {value} is outside its documented range [{low}, {high}] ({what})")
        if self.delay_steps != int(self.delay_steps):
            raise ValueError(f"gap delay_steps must be a whole number of control steps, got {self.delay_steps}")
        if self.task is not None:
            get_assembly(self.task)  # ValueError naming the registered tasks

    def real_config(self, sim: EnvConfig) -> EnvConfig:
        """The environment configuration of the "real" side (contact and geometry differences)."""
        physics = sim.physics if self.friction is None else dataclasses.replace(sim.physics, friction=self.friction)
        return dataclasses.replace(sim, task=self.task or sim.task, physics=physics)


# a wrist force/torque reading's noise in every "real" setting: the order of a Franka's estimated
# external wrench (joint-torque based, about 0.5 N) rather than a dedicated F/T sensor's
REAL_FT_NOISE = dict(ft_force_noise=0.5, ft_torque_noise=0.05)


def named_gaps(tight_task: Optional[str]) -> dict[str, GapConfig]:
    """The documented gap settings (each difference alone, then all together), by name:

        sim          no difference
        perception   goal seen 2 mm off (random direction) and turned 3 degrees, per episode
        friction     contact friction 1.0 (simulation: 0.5)
        clearance    the task's tighter variant (`tight_task`)
        gain         actions scaled by 0.7
        delay1/2     commands executed 1 / 2 control steps late (67 / 133 ms at 15 Hz)
        all          perception, friction, clearance, gain and a 1-step delay together

    Every setting but "sim" reads force/torque with `REAL_FT_NOISE` (a base that does not read
    force/torque is unaffected by it). With `tight_task` None, "clearance" and "all" are left out.
    """
    perception = dict(goal_bias=0.002, goal_yaw_bias=math.radians(3.0))
    gaps = {
        "sim": GapConfig(),
        "perception": GapConfig(**perception, **REAL_FT_NOISE),
        "friction": GapConfig(friction=1.0, **REAL_FT_NOISE),
        "clearance": GapConfig(task=tight_task, **REAL_FT_NOISE) if tight_task else None,
        "gain": GapConfig(action_gain=0.7, **REAL_FT_NOISE),
        "delay1": GapConfig(delay_steps=1, **REAL_FT_NOISE),
        "delay2": GapConfig(delay_steps=2, **REAL_FT_NOISE),
        "all": GapConfig(**perception, friction=1.0, task=tight_task, action_gain=0.7, delay_steps=1, **REAL_FT_NOISE)
        if tight_task else None,
    }
    return {name: gap for name, gap in gaps.items() if gap is not None}


@struct.dataclass
class GapState:
    env: EnvState
    pending: jax.Array      # [delay, A] actions commanded but not yet executed, oldest first
    wrench: jax.Array       # [6] the force/torque reading: force (N), torque (N m), fingertip frame
    noise_key: jax.Array    # the sensor noise's key for the next reading

    # the EnvState fields the episode loop and the learners read
    obs = property(lambda self: self.env.obs)
    critic_obs = property(lambda self: self.env.critic_obs)
    reward = property(lambda self: self.env.reward)
    terms = property(lambda self: self.env.terms)
    success = property(lambda self: self.env.success)
    terminated = property(lambda self: self.env.terminated)
    truncated = property(lambda self: self.env.truncated)
    done = property(lambda self: self.env.done)
    physics = property(lambda self: self.env.physics)
    info = property(lambda self: self.env.info)


class GapEnv:
    """`AssemblyEnv(gap.real_config(sim))` with the perception and actuation differences."""

    def __init__(self, sim: EnvConfig, gap: GapConfig):
        real = gap.real_config(sim)
        self.gap, self.sim_config = gap, sim
        self.env = AssemblyEnv(real)
        reference = AssemblyEnv.observation_size, AssemblyEnv.action_size
        if (self.env.observation_size, self.env.action_size) != reference:  # (all tasks share the layout today)
            raise ValueError(f"gap task {real.task} has another observation or action layout than {sim.task}")

    def __getattr__(self, name):  # spaces, θ box, config, backend: the real environment's
        return getattr(self.env, name)

    def reset(self, key: jax.Array, init: jax.Array, start=None) -> GapState:
        state = self.env.reset(key, init, start)  # (the same episode as the simulation's, for the same key)
        k_dir, k_yaw = jax.random.split(jax.random.fold_in(key, GAP_KEY))
        g = self.gap
        if g.goal_bias or g.goal_yaw_bias:
            angle = jax.random.uniform(k_dir, (), maxval=2.0 * jnp.pi)
            offset = g.goal_bias * jnp.array([jnp.cos(angle), jnp.sin(angle), 0.0])
            yaw = g.goal_yaw_bias * jnp.sign(jax.random.uniform(k_yaw, (), minval=-1.0, maxval=1.0))
            state = self.env.shift_observed_goal(state, offset, yaw)
        noise_key = jax.random.fold_in(key, GAP_KEY + 1)
        return self._sense(GapState(env=state, pending=jnp.zeros((g.delay_steps, self.env.action_size)),
                                    wrench=jnp.zeros(6), noise_key=noise_key))

    def step(self, state: GapState, action: jax.Array) -> GapState:
        commanded = jnp.clip(self.gap.action_gain * action, -1.0, 1.0)
        if self.gap.delay_steps:
            executed = state.pending[0]
            pending = jnp.concatenate([state.pending[1:], commanded[None]])
        else:
            executed, pending = commanded, state.pending
        return self._sense(state.replace(env=self.env.step(state.env, executed), pending=pending))

    def advance_clock(self, state: GapState, steps: jax.Array) -> GapState:
        """`AssemblyEnv.advance_clock` (a learner's staggered starts); the gap's state rides along."""
        return state.replace(env=self.env.advance_clock(state.env, steps))

    def _sense(self, state: GapState) -> GapState:
        """The force/torque reading of this state, with its noise."""
        g = self.gap
        wrench = self.env.contact_wrench(state.env.physics)
        key, k_noise = jax.random.split(state.noise_key)
        if g.ft_force_noise or g.ft_torque_noise:
            sigma = jnp.array([g.ft_force_noise] * 3 + [g.ft_torque_noise] * 3)
            wrench = wrench + sigma * jax.random.normal(k_noise, (6,))
        return state.replace(wrench=wrench, noise_key=key)

    def robot_observation(self, state: GapState) -> jax.Array:
        """[19] what the robot senses of itself (ROBOT_OBS): fingertip position and orientation
        (world), its linear and angular velocity, and the force/torque reading. Nothing of the
        goal or the socket: SPARR's residual reads this and the base's action only."""
        d = state.env.physics
        return jnp.concatenate([d.tip_pos, canonical(d.tip_quat), d.tip_vel, state.wrench])
