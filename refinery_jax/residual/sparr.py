"""SPARR: a frozen simulation policy plus an off-policy residual learned on the "real" robot.

The robot here is `envs.gap.GapEnv`: one environment, one episode after another, as a
real cell runs. Each step
1. the frozen base (a PPO specialist trained in simulation) acts on its own observation,
   which holds the goal pose as perception reports it: mean action a_b;
2. the residual reads `residual_inputs`: what the robot senses of itself (fingertip pose,
   velocity, force/torque; `GapEnv.robot_observation`) and a_b; never the goal or socket pose
   (unless `sees_goal`, the symmetric ablation); the critics also read the base's observation;
3. the robot executes clip(a_b + scale a_r, -1, 1) with a_b clipped to the box first
   (`executed_action`). `residual_scale`: SPARR adds the two unscaled; a fresh SAC actor's
   actions are near-uniform on [-1, 1], which at full scale buries the base under noise for
   the first thousands of steps, so the residual's authority is bounded as in ResiP. The
   reward is 1 at success, where the episode ends (no bootstrap); at the time limit it ends
   too, bootstrapped;
4. `utd` RLPD critic updates and one actor update (`offpolicy.sac`) on batches half from the
   demonstrations, half from the online buffer;
5. an episode that succeeded in fewer steps than the median demonstration joins the
   demonstrations (`demo_growth`).

Demonstrations (`collect_demos`) are the base's own successful episodes in the gap setting,
acted with a pseudo-residual ε ~ N(0, σ_b) (σ_b: the base's Gaussian), so a_b + ε is a
sample of the base's policy, the residual's label being ε / scale (SPARR §III-D). Observations
are normalised with the demonstrations' mean and standard deviation, fixed for the run.

The loop is `lax.scan` over chunks of steps inside jit (`Robot.run_chunk`); `evaluate`
runs many episodes at once, deterministically, for the tables.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from refinery_jax.envs.assembly_env import observation_slice
from refinery_jax.envs.gap import GapEnv, GapState
from refinery_jax.offpolicy.replay import add_episode, grows_demos, sample_half_and_half, transition_buffer
from refinery_jax.offpolicy.sac import SAC, SACConfig, SACState, Transition

GOAL_PARTS = ("goal_pos", "goal_quat", "goal_minus_fingertip")  # what the symmetric residual also reads
NORMALIZED_CLIP = 10.0


@dataclasses.dataclass(frozen=True)
class SPARRConfig:
    sac: SACConfig = SACConfig()
    budget_steps: int = 27_000     # robot time: 30 min at 15 Hz
    num_demos: int = 20            # successful base episodes seeding the demonstration buffer (SPARR: 20)
    demo_attempts: int = 2048      # base episodes tried at most to find them
    demo_growth: bool = True
    sees_base_action: bool = True
    sees_goal: bool = False        # the symmetric ablation: the residual also reads the goal pose
    residual_scale: float = 0.2    # executed action: clip(base + residual_scale x residual, -1, 1)
    learning_starts: int = 75      # online steps before the first update (one episode)
    chunk_steps: int = 750         # steps per jitted call: the progress and log granularity

    def __post_init__(self):
        if self.num_demos < 1:
            raise ValueError("num_demos must be >= 1: RLPD samples half of every batch from the demonstrations")
        if self.budget_steps < 1 or self.chunk_steps < 1 or self.budget_steps % self.chunk_steps:
            raise ValueError(f"budget_steps ({self.budget_steps}) must be a positive multiple of chunk_steps "
                             f"({self.chunk_steps})")
        if not 0.0 < self.residual_scale <= 1.0:
            raise ValueError(f"residual_scale must be in (0, 1], got {self.residual_scale}")
        if self.demo_attempts < self.num_demos:
            raise ValueError(f"demo_attempts ({self.demo_attempts}) must be >= num_demos ({self.num_demos})")


class GaussianBase(NamedTuple):
    """The frozen base: obs [O] -> (mean [A], std [A]) of its Gaussian policy."""

    mean_std: Callable


def specialist_base(model, policy, obs_clip: float = 5.0) -> GaussianBase:
    """A memoryless PPO specialist (`ppo.networks.ActorCritic`, its `Policy`) as the frozen base."""
    from refinery_jax.ppo.networks import ActorCritic, initial_carry  # noqa: PLC0415
    from refinery_jax.ppo.normalization import normalize  # noqa: PLC0415

    if model.memory != "none":
        raise ValueError(f"SPARR's base must be memoryless (an MLP actor); this one has memory {model.memory!r}")

    def mean_std(obs):
        _, mean, log_std = model.apply(policy.params, normalize(policy.obs_stats, obs, obs_clip),
                                       initial_carry(model, (), obs.shape[-1]), method=ActorCritic.policy)
        return mean, jnp.broadcast_to(jnp.exp(log_std), mean.shape)

    return GaussianBase(mean_std)


class Observed(NamedTuple):
    """What the robot reads at one state: the residual's and the critics' inputs, the base's Gaussian."""

    obs: jax.Array
    critic_obs: jax.Array
    base_action: jax.Array  # the base's mean action clipped to [-1, 1]: what it alone would execute
    base_std: jax.Array


class Normalizer(NamedTuple):
    obs_mean: jax.Array
    obs_std: jax.Array
    critic_mean: jax.Array
    critic_std: jax.Array

    def actor(self, obs: jax.Array) -> jax.Array:
        return jnp.clip((obs - self.obs_mean) / self.obs_std, -NORMALIZED_CLIP, NORMALIZED_CLIP)

    def critic(self, critic_obs: jax.Array) -> jax.Array:
        return jnp.clip((critic_obs - self.critic_mean) / self.critic_std, -NORMALIZED_CLIP, NORMALIZED_CLIP)

    def apply(self, batch: Transition) -> Transition:
        return batch._replace(obs=self.actor(batch.obs), critic_obs=self.critic(batch.critic_obs),
                              next_obs=self.actor(batch.next_obs), next_critic_obs=self.critic(batch.next_critic_obs))

    @staticmethod
    def of(demos: Transition, lengths: np.ndarray) -> "Normalizer":
        """Mean and standard deviation (floored at 1e-3) of the demonstrations' valid rows."""
        valid = np.arange(demos.obs.shape[1])[None] < np.asarray(lengths)[:, None]
        stats = []
        for x in (demos.obs, demos.critic_obs):
            rows = np.asarray(x)[valid]
            stats += [jnp.asarray(rows.mean(axis=0)), jnp.asarray(np.maximum(rows.std(axis=0), 1e-3))]
        return Normalizer(*stats)


@struct.dataclass
class RobotState:
    env: GapState
    sac: SACState
    online: object            # flashbax item buffer states
    demos: object
    demo_lengths: jax.Array   # [slots] lengths of the demonstration episodes, NaN = empty slot
    demo_episodes: jax.Array  # [] how many episodes the demonstration buffer holds
    episode: Transition       # [T, ...] this episode's transitions so far
    t: jax.Array              # [] steps into this episode
    steps: jax.Array          # [] robot steps so far
    episodes: jax.Array       # [] episodes finished
    outcomes: jax.Array       # [max episodes, 2] int32 (success, length) of each finished episode
    key: jax.Array


class Robot:
    """SPARR on one robot: a base, a gap environment, a learner (static; build once)."""

    def __init__(self, env: GapEnv, base: GaussianBase, config: SPARRConfig,
                 sample_init: Callable[[jax.Array], jax.Array]):
        self.env, self.base, self.config, self.sample_init = env, base, config, sample_init
        self.horizon = env.config.episode_steps
        self.action_size = env.action_size
        self._goal = np.concatenate([np.arange(observation_slice(p).start, observation_slice(p).stop)
                                     for p in GOAL_PARTS])
        probe = jax.eval_shape(lambda k: env.reset(k, sample_init(k)), jax.random.key(0))
        obs = jax.eval_shape(lambda s: self.residual_inputs(s, jnp.zeros(self.action_size)), probe)
        self.obs_size = obs.shape[0]
        self.critic_obs_size = self.obs_size + env.observation_size
        self.sac = SAC(config.sac, self.obs_size, self.critic_obs_size, self.action_size)
        s = config.sac
        half = s.utd * s.batch_size // 2
        self.online_buffer = transition_buffer(config.budget_steps, half)
        self.demo_buffer = transition_buffer(config.budget_steps + config.num_demos * self.horizon, half)
        self.demo_slots = config.budget_steps // 2 + config.num_demos  # episodes of >= 2 steps
        self.max_episodes = config.budget_steps
        # compiled once per robot (every seed of a row reuses them)
        self._demo_episodes = jax.jit(jax.vmap(self._demo_episode))
        self._add_demo = jax.jit(functools.partial(add_episode, self.demo_buffer))

    # ------------------------------------------------------------------ inputs

    def residual_inputs(self, state: GapState, base_action: jax.Array) -> jax.Array:
        """The residual actor's input: robot_observation [19], then the base action [A] (unless
        `sees_base_action` is off), then the goal as the base sees it (only with `sees_goal`)."""
        parts = [self.env.robot_observation(state)]
        if self.config.sees_base_action:
            parts.append(base_action)
        if self.config.sees_goal:
            parts.append(state.obs[self._goal])
        return jnp.concatenate(parts)

    def _observe(self, state: GapState) -> Observed:
        base_mean, base_std = self.base.mean_std(state.obs)
        # clipped first: a PPO mean often lies beyond the box (on the rim |a_x| > 2.3 in a tenth of
        # the steps), where a bounded residual added before the clip would change nothing
        base_action = jnp.clip(base_mean, -1.0, 1.0)
        obs = self.residual_inputs(state, base_action)
        return Observed(obs, jnp.concatenate([obs, state.obs]), base_action, base_std)

    def _empty_episode(self) -> Transition:
        h = self.horizon
        return Transition(obs=jnp.zeros((h, self.obs_size)), critic_obs=jnp.zeros((h, self.critic_obs_size)),
                          action=jnp.zeros((h, self.action_size)), reward=jnp.zeros(h), mask=jnp.zeros(h),
                          next_obs=jnp.zeros((h, self.obs_size)), next_critic_obs=jnp.zeros((h, self.critic_obs_size)))

    # ------------------------------------------------------------------ one step of the robot

    def executed_action(self, seen: Observed, residual: jax.Array) -> jax.Array:
        """clip(a_b + scale a_r, -1, 1), a_b already clipped (`Observed.base_action`)."""
        return jnp.clip(seen.base_action + self.config.residual_scale * residual, -1.0, 1.0)

    def _step(self, state: GapState, seen: Observed, residual: jax.Array):
        """Execute base + residual from `state` (`seen`: its `_observe`); (next state, transition, done,
        success)."""
        nxt = self.env.step(state, self.executed_action(seen, residual))
        after = self._observe(nxt)
        success = nxt.success
        transition = Transition(obs=seen.obs, critic_obs=seen.critic_obs, action=residual,
                                reward=success.astype(jnp.float32), mask=1.0 - success.astype(jnp.float32),
                                next_obs=after.obs, next_critic_obs=after.critic_obs)
        return nxt, transition, success | nxt.done, success

    def _reset(self, key: jax.Array) -> GapState:
        k_init, k_episode = jax.random.split(key)
        return self.env.reset(k_episode, self.sample_init(k_init))

    # ------------------------------------------------------------------ demonstrations

    def collect_demos(self, key: jax.Array, batch: int = 256):
        """The base's successful episodes with pseudo-residuals N(0, σ_b): (Transition [num_demos, T],
        lengths [num_demos], episodes tried). ValueError if `demo_attempts` episodes hold fewer."""
        found, lengths, tried = [], [], 0
        while len(found) < self.config.num_demos and tried < self.config.demo_attempts:
            key, k = jax.random.split(key)
            transitions, success, length = jax.device_get(self._demo_episodes(jax.random.split(k, batch)))
            for i in np.flatnonzero(success)[: self.config.num_demos - len(found)]:
                found.append(jax.tree.map(lambda x: x[i], transitions))
                lengths.append(int(length[i]))
            tried += batch
        if len(found) < self.config.num_demos:
            raise ValueError(f"the base succeeded in only {len(found)} of {tried} episodes in this gap setting; "
                             f"{self.config.num_demos} demonstrations are needed (raise demo_attempts or choose a "
                             "smaller gap)")
        demos = jax.tree.map(lambda *xs: np.stack(xs), *found)
        return demos, np.asarray(lengths), tried

    def _demo_episode(self, key: jax.Array):
        """One base episode with pseudo-residuals: (transitions [T], success, steps up to the end)."""
        k_reset, k_noise = jax.random.split(key)

        def body(carry, k):
            state, ended = carry
            seen = self._observe(state)
            noise = seen.base_std * jax.random.normal(k, seen.base_action.shape)
            residual = jnp.clip(noise / self.config.residual_scale, -1.0, 1.0)
            nxt, transition, done, success = self._step(state, seen, residual)
            return (nxt, ended | done), (transition, success, ended)

        _, (transitions, success, ended_before) = jax.lax.scan(
            body, (self._reset(k_reset), jnp.zeros((), bool)), jax.random.split(k_noise, self.horizon))
        live = ~ended_before  # steps up to and including the first done
        return transitions, jnp.any(success & live), jnp.sum(live)

    # ------------------------------------------------------------------ the run

    def start(self, key: jax.Array, demos: Transition, lengths: np.ndarray) -> RobotState:
        k_sac, k_reset, key = jax.random.split(key, 3)
        example = jax.tree.map(lambda x: jnp.asarray(x[0, 0]), demos)
        demo_state = self.demo_buffer.init(example)
        for i, n in enumerate(lengths):
            demo_state = self._add_demo(demo_state, jax.tree.map(lambda x: jnp.asarray(x[i]), demos), jnp.asarray(n))
        slots = jnp.full(self.demo_slots, jnp.nan).at[: len(lengths)].set(jnp.asarray(lengths, jnp.float32))
        return RobotState(env=self._reset(k_reset), sac=self.sac.init(k_sac), online=self.online_buffer.init(example),
                          demos=demo_state, demo_lengths=slots, demo_episodes=jnp.asarray(len(lengths)),
                          episode=self._empty_episode(), t=jnp.zeros((), jnp.int32), steps=jnp.zeros((), jnp.int32),
                          episodes=jnp.zeros((), jnp.int32),
                          outcomes=jnp.zeros((self.max_episodes, 2), jnp.int32), key=key)

    def robot_step(self, rs: RobotState, normalizer: Normalizer) -> tuple[RobotState, dict]:
        key, k_act, k_reset, k_update = jax.random.split(rs.key, 4)
        seen = self._observe(rs.env)
        residual = self.sac.sample(rs.sac, normalizer.actor(seen.obs), k_act)
        nxt, transition, done, success = self._step(rs.env, seen, residual)
        online = self.online_buffer.add(rs.online, transition)
        episode = jax.tree.map(lambda e, x: e.at[rs.t].set(x), rs.episode, transition)
        length = rs.t + 1

        grow = done & self.config.demo_growth & grows_demos(success, length, rs.demo_lengths)
        demos = jax.lax.cond(grow, lambda d: add_episode(self.demo_buffer, d, episode, length), lambda d: d, rs.demos)
        demo_lengths = jnp.where(grow, rs.demo_lengths.at[rs.demo_episodes].set(length), rs.demo_lengths)
        outcomes = jnp.where(done, rs.outcomes.at[rs.episodes].set(jnp.stack([success.astype(jnp.int32), length])),
                             rs.outcomes)
        env = jax.lax.cond(done, lambda: self._reset(k_reset), lambda: nxt)

        def learn(sac_state):
            batch = sample_half_and_half(self.demo_buffer, demos, self.online_buffer, online, k_update,
                                         self.config.sac.utd)
            return self.sac.update(sac_state, normalizer.apply(batch), k_update)

        def wait(sac_state):
            return sac_state, {name: jnp.zeros(()) for name in ("actor_loss", "entropy", "temperature", "critic_loss")}

        sac_state, metrics = jax.lax.cond(rs.steps + 1 >= self.config.learning_starts, learn, wait, rs.sac)
        rs = rs.replace(env=env, sac=sac_state, online=online, demos=demos, demo_lengths=demo_lengths,
                        demo_episodes=rs.demo_episodes + grow, episode=episode, t=jnp.where(done, 0, length),
                        steps=rs.steps + 1, episodes=rs.episodes + done, outcomes=outcomes, key=key)
        return rs, metrics

    def run_chunk(self, rs: RobotState, normalizer: Normalizer) -> tuple[RobotState, dict]:
        """`chunk_steps` robot steps; the learner's metrics averaged over them."""
        rs, metrics = jax.lax.scan(lambda s, _: self.robot_step(s, normalizer), rs, None,
                                   length=self.config.chunk_steps)
        return rs, jax.tree.map(jnp.mean, metrics)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, actor_params, inits: jax.Array, keys: jax.Array, normalizer: Normalizer):
        """Deterministic episodes (the residual's tanh(mean); `actor_params` None: the base alone)
        from `inits` [N, θ] with episode `keys` [N]: (success [N] bool, steps to success [N],
        the horizon where it failed)."""

        def one(init, key):
            def body(carry, _):
                state, succeeded, ended, steps = carry
                seen = self._observe(state)
                if actor_params is None:
                    residual = jnp.zeros(self.action_size)
                else:
                    residual = jnp.tanh(self.sac.actor.apply(actor_params, normalizer.actor(seen.obs))[0])
                nxt, _, done, success = self._step(state, seen, residual)
                return (nxt, succeeded | (success & ~ended), ended | done, steps + ~ended), None

            start = (self.env.reset(key, init), jnp.zeros((), bool), jnp.zeros((), bool), jnp.zeros((), jnp.int32))
            (_, succeeded, _, steps), _ = jax.lax.scan(body, start, None, length=self.horizon)
            return succeeded, jnp.where(succeeded, steps, self.horizon)

        return jax.vmap(one)(inits, keys)

