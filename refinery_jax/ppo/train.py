"""PPO for the assembly environment, PureJaxRL-style.

`make_trainer(config, ...)` does the static work (environment, network, sampler,
demonstrations) and returns pure functions:

    init(key, hparams) -> TrainState          fresh parameters and environments
    update(state) -> (TrainState, UpdateMetrics)   one rollout + PPO epochs
    policy(state) -> Policy                   what `evaluate` needs

`make_train(config, ...)` composes them into `train(key, hparams=None)`, one
`lax.scan` over all updates, so `jax.jit(jax.vmap(train))(keys)` trains seeds in one
compile and `jax.vmap(train)(keys, hparams)` runs an ablation over traced values.
`make_chunk(trainer, n)` scans n updates at a time: the experiment script prints,
logs and checkpoints between chunks; the result is the same as one long scan.

The reset distribution is the `sampler` argument (`key -> init`): every episode
that ends is restarted from a fresh draw (raised by the curriculum's height offset, if
the config has a curriculum). Environments start staggered (`stagger_starts`), so
episodes end at every step of a rollout rather than all at once.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import flax
import optax
from flax import struct

from refinery_jax.envs.assembly_env import AssemblyEnv, EnvState, combine_reward
from refinery_jax.envs.samplers import Sampler, env_uniform, step_with_reset
from refinery_jax.imitation.reward import fresh_window, imitation_reward, push_window
from refinery_jax.mesh import split_envs
from refinery_jax.ppo import losses
from refinery_jax.ppo.base import BasePolicy
from refinery_jax.ppo.config import IMITATION_TERM, CurriculumConfig, PPOConfig, PPOHyperparams, default_hyperparams
from refinery_jax.ppo.networks import (
    ActorCritic,
    Policy,
    action_distribution,
    initial_carry,
    policy_sequence,
    restart_carry,
)
from refinery_jax.ppo.normalization import RunningStats, init_stats, normalize, update_stats


@struct.dataclass
class TrainState:
    params: dict
    opt_state: optax.OptState
    obs_stats: RunningStats
    critic_stats: RunningStats
    env_state: EnvState          # [B] environments, mid-episode
    policy_carry: Any            # [B, ...] the actor's memory before each environment's next step
    window: jax.Array            # [B, H, 3] recent fingertip positions (goal-relative); H = 1 without imitation
    episode_return: jax.Array    # [B] running (unscaled) return of the current episodes
    key: jax.Array
    update: jax.Array            # [] int32 updates done
    height_offset: jax.Array     # [] curriculum offset on θ_z (m)
    hparams: PPOHyperparams
    base_params: Any = None      # the frozen base policy's parameters (residual learning; None without a base)
    base_carry: Any = None       # [B, ...] the base's per-environment state (its action queues)


class Transition(NamedTuple):
    obs: jax.Array          # [.., d] raw policy observation (with a base: [observation, base action])
    critic_obs: jax.Array   # [.., d_c] raw critic observation
    action: jax.Array       # [.., A]
    log_prob: jax.Array
    value: jax.Array
    next_value: jax.Array   # V(s') of the state the step reached (pre-reset)
    reward: jax.Array       # scaled training reward
    terminated: jax.Array
    done: jax.Array


@struct.dataclass
class UpdateMetrics:
    env_steps: jax.Array        # total environment steps after this update
    reward: jax.Array           # mean unscaled reward per step
    imitation: jax.Array        # mean imitation reward per step (0 without imitation)
    episodes: jax.Array         # episodes that ended in this rollout
    successes: jax.Array        # of which successful at their last step
    success_rate: jax.Array     # successes / episodes (nan when none ended)
    episode_return: jax.Array   # mean return of the ended episodes (nan when none)
    policy_loss: jax.Array
    value_loss: jax.Array
    entropy: jax.Array
    approx_kl: jax.Array
    clip_fraction: jax.Array
    grad_norm: jax.Array
    learning_rate: jax.Array
    height_offset: jax.Array


class Trainer(NamedTuple):
    config: PPOConfig
    env: AssemblyEnv
    model: ActorCritic
    init: Callable[[jax.Array, PPOHyperparams], TrainState]
    update: Callable[[TrainState], tuple[TrainState, UpdateMetrics]]
    policy: Callable[[TrainState], Policy]
    demo_paths: Optional[np.ndarray]  # the imitation reward's reference paths (None without imitation)
    base: Optional[BasePolicy] = None  # the frozen base a residual learns on (None: a plain policy)


def learning_rate_schedule(config: PPOConfig, hp: PPOHyperparams) -> optax.Schedule:
    """Optimiser step -> learning rate: linear decay to 0 over the run when `anneal_lr`."""
    steps = config.num_updates * config.update_epochs * config.num_minibatches
    if config.anneal_lr:
        return optax.linear_schedule(hp.learning_rate, 0.0, steps)
    return optax.constant_schedule(hp.learning_rate)


def make_optimizer(config: PPOConfig, hp: PPOHyperparams) -> optax.GradientTransformation:
    """Adam with global-norm clipping (both may be traced through `hp`)."""
    return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm),
                       optax.adam(learning_rate_schedule(config, hp), eps=1e-5))


def curriculum_step(offset, episodes, success_rate, c: CurriculumConfig):
    """AutoMate's rule: raise the start height after a good rollout, lower it after a bad one.

    offset, episodes (ended in the rollout), success_rate: [] -> new offset [].
    """
    change = jnp.where(success_rate > c.raise_above, c.step, jnp.where(success_rate < c.lower_below, -c.step, 0.0))
    return jnp.clip(offset + jnp.where(episodes > 0, change, 0.0), c.minimum, c.maximum)


def _goal_relative_fingertip(env: AssemblyEnv, states: EnvState) -> jax.Array:
    """[B, 3] fingertip position relative to the true goal fingertip (the demos' frame)."""
    goal = states.info.goal_pos + jnp.array([0.0, 0.0, env.assembly.plug_length])
    return states.physics.tip_pos - goal


def _where_done(done, new, old):
    return jax.tree.map(lambda n, o: jnp.where(done.reshape(done.shape + (1,) * (n.ndim - 1)), n, o), new, old)


def make_trainer(config: PPOConfig, env: Optional[AssemblyEnv] = None, sampler: Optional[Sampler] = None,
                 demo_paths: Optional[np.ndarray] = None, base: Optional[BasePolicy] = None) -> Trainer:
    """Build the pure `init`, `update` and `policy` functions for one static config.

    env: defaults to `AssemblyEnv(config.env)`. sampler: reset distribution
    `key -> init [3]`, default uniform over the env's θ box. demo_paths: [N, T, 3]
    reversed disassembly paths (`Demos.assembly_paths()`), required iff
    `config.imitation` is set. base: a frozen base policy; PPO then learns a residual on
    top of it (`ppo.base`; its parameters go to `init`), with a zero-initialised actor head.
    """
    env = AssemblyEnv(config.env) if env is None else env
    sampler = env_uniform(env) if sampler is None else sampler
    imit = config.imitation
    if imit is not None:
        if demo_paths is None or np.asarray(demo_paths).ndim != 3 or len(demo_paths) == 0:
            raise ValueError("config.imitation is set: pass demo_paths [N, T, 3] (Demos.assembly_paths())")
        paths = jnp.asarray(demo_paths, jnp.float32)
    history = imit.history if imit is not None else 1
    if base is not None and base.action_size != env.action_size:
        raise ValueError(f"the base acts in {base.action_size} dimensions, the environment in {env.action_size}")
    # with a base, the actor sees [observation, base action] and starts at a zero residual
    obs_size = env.observation_size + (0 if base is None else base.action_size)
    model = ActorCritic(env.action_size, config.actor_hidden, config.critic_hidden, config.activation,
                        config.memory, config.memory_size, config.memory_layers,
                        actor_head_scale=0.01 if base is None else 0.0, memory_layer_norm=config.memory_layer_norm,
                        sigma=config.sigma)
    B = config.num_envs

    def shifted(offset) -> Sampler:
        """The reset distribution, raised by the curriculum's height offset (when there is a curriculum)."""
        if config.curriculum is None:
            return sampler
        return lambda key: sampler(key).at[2].add(offset)  # θ_z (θ may carry a yaw after it)

    def critic_input(states: EnvState):
        return states.critic_obs if config.asymmetric_critic else states.obs

    # Orthogonal initialisers run LAPACK QR. Batched over seeds (vmap), two concurrent QR
    # calls each wait on XLA:CPU's intra-op pool for their batch and deadlock a 2-thread
    # pool (seen with jaxlib 0.10.2); under vmap, initialise seed after seed instead.
    @jax.custom_batching.sequential_vmap
    def init_params(key):
        critic_size = env.critic_observation_size if config.asymmetric_critic else env.observation_size
        return model.init(key, jnp.zeros(obs_size), jnp.zeros(critic_size), initial_carry(model, (), obs_size))

    def policy_input(states: EnvState, base_params, base_carry, key):
        """(the actor's observation [B, d], base actions [B, A] or None, the base's carry)."""
        if base is None:
            return states.obs, None, base_carry
        base_action, base_carry = base.act(base_params, base_carry, states.obs, key)
        return jnp.concatenate([states.obs, base_action], axis=-1), base_action, base_carry

    def init(key: jax.Array, hparams: Optional[PPOHyperparams] = None, base_params: Any = None) -> TrainState:
        hp = default_hyperparams(config) if hparams is None else hparams
        if (base is None) != (base_params is None):
            raise ValueError("pass base_params exactly when the trainer has a base policy")
        key, k_params, k_inits, k_resets, k_clock = jax.random.split(key, 5)
        params = flax.core.unfreeze(init_params(k_params))
        if config.sigma == "fixed":
            params["params"]["log_std"] = jnp.full(env.action_size, hp.init_log_std)
        else:  # a linear head that starts state-independent (zero kernel) at the initial log-std
            params["params"]["actor"]["sigma"]["bias"] = jnp.full(env.action_size, hp.init_log_std)
        offset = jnp.asarray(config.curriculum.initial if config.curriculum else 0.0, jnp.float32)
        inits = jax.vmap(shifted(offset))(jax.random.split(k_inits, B))
        states = jax.vmap(env.reset)(jax.random.split(k_resets, B), inits)
        # staggered starts: each environment's first episode is cut short by a random number
        # of steps, so episodes end (and restart) at every step of a rollout, not in lockstep
        if config.stagger_starts:
            elapsed = jax.random.randint(k_clock, (B,), 0, env.config.episode_steps)
            states = jax.vmap(env.advance_clock)(states, elapsed)
        # the base's first actions (from its state after these) seed the statistics of the actor's input
        base_carry = None if base is None else base.start(B)
        first_input, _, base_carry = policy_input(states, base_params, base_carry, jax.random.fold_in(k_clock, 1))
        obs_stats, critic_stats = init_stats(obs_size), init_stats(critic_input(states).shape[-1])
        if config.normalize_obs:
            obs_stats, critic_stats = update_stats(obs_stats, first_input), update_stats(critic_stats, critic_input(states))
        window = jax.vmap(lambda p: fresh_window(p, history))(_goal_relative_fingertip(env, states))
        return TrainState(params=params, opt_state=make_optimizer(config, hp).init(params), obs_stats=obs_stats,
                          critic_stats=critic_stats, env_state=states,
                          policy_carry=initial_carry(model, (B,), obs_size), window=window,
                          episode_return=jnp.zeros(B), key=key, update=jnp.zeros((), jnp.int32),
                          height_offset=offset, hparams=hp, base_params=base_params, base_carry=base_carry)

    def rollout(state: TrainState, key: jax.Array):
        hp = state.hparams
        step = step_with_reset(env, shifted(state.height_offset))
        env_weights = {k: v for k, v in hp.reward_weights.items() if k != IMITATION_TERM}

        def act(carry, key):
            states, memory, window, ep_return, base_carry = carry
            k_act, k_env = jax.random.split(key)
            # (a key of its own for the base, leaving the streams of base-free runs as they were)
            obs, base_action, base_carry = policy_input(states, state.base_params, base_carry, jax.random.fold_in(key, 1))
            obs_n = normalize(state.obs_stats, obs, config.obs_clip)
            cobs_n = normalize(state.critic_stats, critic_input(states), config.obs_clip)
            next_memory, mean, log_std = model.apply(state.params, obs_n, memory, method=ActorCritic.policy)
            value = model.apply(state.params, cobs_n, method=ActorCritic.value)
            dist = action_distribution(mean, log_std)
            action = dist.sample(seed=k_act)
            env_action = action if base is None else base_action + base.scale * action
            next_states, stepped = step(k_env, states, env_action)
            next_value = model.apply(state.params, normalize(state.critic_stats, critic_input(stepped), config.obs_clip),
                                     method=ActorCritic.value)
            reward = combine_reward(stepped.terms, env_weights)
            r_imit = jnp.zeros(B)
            if imit is not None:
                window = jax.vmap(push_window)(window, _goal_relative_fingertip(env, stepped))
                r_imit = jax.vmap(lambda w: imitation_reward(w, paths, imit.gamma, imit.max_segment,
                                                                  imit.length_scale).reward)(window)
                reward = reward + hp.reward_weights[IMITATION_TERM] * r_imit
            done = stepped.done
            restarted = jax.vmap(lambda p: fresh_window(p, history))(_goal_relative_fingertip(env, next_states))
            window = _where_done(done, restarted, window)
            ep_return = ep_return + reward
            info = dict(reward=reward, imitation=r_imit, done=done, success=stepped.success & stepped.truncated,
                        final_return=jnp.where(done, ep_return, 0.0))
            transition = Transition(obs=obs, critic_obs=critic_input(states), action=action,
                                    log_prob=dist.log_prob(action), value=value, next_value=next_value,
                                    reward=reward * hp.reward_scale, terminated=stepped.terminated, done=done)
            if base is not None:
                base_carry = base.restart(base_carry, done)
            carry = (next_states, restart_carry(next_memory, done), window, jnp.where(done, 0.0, ep_return), base_carry)
            return carry, (transition, info)

        carry = (state.env_state, state.policy_carry, state.window, state.episode_return, state.base_carry)
        carry, (batch, info) = jax.lax.scan(act, carry, jax.random.split(key, config.num_steps))
        return carry, batch, info

    def loss_fn(params, obs_stats, critic_stats, hp, mb: Transition, memory, first, advantages, returns):
        """mb: [T, b] transitions of b environments (whole rollouts, so the actor's memory can be
        replayed from `memory`, its state at step 0); first [T, b]: the step starts an episode."""
        means, log_std = policy_sequence(model, params, normalize(obs_stats, mb.obs, config.obs_clip), memory, first)
        value = model.apply(params, normalize(critic_stats, mb.critic_obs, config.obs_clip), method=ActorCritic.value)
        dist = action_distribution(means, log_std)
        log_ratio = (dist.log_prob(mb.action) - mb.log_prob).reshape(-1)
        policy_loss, clip_fraction = losses.clipped_policy_loss(
            log_ratio, losses.normalize_advantages(advantages.reshape(-1)), hp.clip_eps)
        value_loss = losses.clipped_value_loss(value.reshape(-1), mb.value.reshape(-1), returns.reshape(-1),
                                               hp.value_clip)
        entropy = jnp.mean(dist.entropy())
        total = policy_loss + hp.vf_coef * value_loss - hp.ent_coef * entropy
        return total, dict(policy_loss=policy_loss, value_loss=value_loss, entropy=entropy,
                           approx_kl=losses.approx_kl(log_ratio), clip_fraction=clip_fraction)

    def update(state: TrainState) -> tuple[TrainState, UpdateMetrics]:
        hp = state.hparams
        key, k_roll, k_epochs = jax.random.split(state.key, 3)
        (env_state, memory, window, ep_return, base_carry), batch, info = rollout(state, k_roll)
        advantages, returns = losses.gae(batch.reward, batch.value, batch.next_value, batch.terminated, batch.done,
                                         hp.gamma, hp.gae_lambda)
        # the memory restarts after every episode end (the first step of a rollout starts from the
        # carry saved in the state, already restarted)
        first = jnp.concatenate([jnp.zeros((1, B), bool), batch.done[:-1]])
        optimizer = make_optimizer(config, hp)

        def minibatch_step(carry, envs):
            params, opt_state = carry
            pick = lambda x: x[:, envs]  # noqa: E731  ([T, B, ...] -> [T, b, ...])
            # (on a device mesh, each device computes its share of the minibatch: refinery_jax.mesh)
            mb, adv, ret, fst = split_envs(jax.tree.map(pick, (batch, advantages, returns, first)), dim=1)
            mem = split_envs(jax.tree.map(lambda x: x[envs], state.policy_carry), dim=0)
            grads, stats = jax.grad(loss_fn, has_aux=True)(params, state.obs_stats, state.critic_stats, hp, mb, mem,
                                                           fst, adv, ret)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            stats["grad_norm"] = optax.tree.norm(grads)
            return (optax.apply_updates(params, updates), opt_state), stats

        def epoch(carry, key):  # minibatches of whole environments' rollouts
            order = jax.random.permutation(key, B).reshape(config.num_minibatches, -1)
            return jax.lax.scan(minibatch_step, carry, order)

        (params, opt_state), stats = jax.lax.scan(epoch, (state.params, state.opt_state),
                                                  jax.random.split(k_epochs, config.update_epochs))
        obs_stats, critic_stats = state.obs_stats, state.critic_stats
        if config.normalize_obs:
            obs_stats, critic_stats = update_stats(obs_stats, batch.obs), update_stats(critic_stats, batch.critic_obs)

        episodes, successes = jnp.sum(info["done"]), jnp.sum(info["success"])
        rate = successes / jnp.maximum(episodes, 1)
        offset = state.height_offset
        if config.curriculum is not None:
            offset = curriculum_step(offset, episodes, rate, config.curriculum)
        # the learning rate the next optimiser step will use
        lr = learning_rate_schedule(config, hp)((state.update + 1) * config.update_epochs * config.num_minibatches)
        nan = jnp.asarray(jnp.nan)
        metrics = UpdateMetrics(
            env_steps=(state.update + 1) * config.batch_size, reward=jnp.mean(info["reward"]),
            imitation=jnp.mean(info["imitation"]), episodes=episodes, successes=successes,
            success_rate=jnp.where(episodes > 0, rate, nan),
            episode_return=jnp.where(episodes > 0, jnp.sum(info["final_return"]) / jnp.maximum(episodes, 1), nan),
            learning_rate=lr, height_offset=offset,
            **{k: jnp.mean(v) for k, v in stats.items()})
        new_state = state.replace(params=params, opt_state=opt_state, obs_stats=obs_stats, critic_stats=critic_stats,
                                  env_state=env_state, policy_carry=memory, window=window, episode_return=ep_return,
                                  key=key, base_carry=base_carry,
                                  update=state.update + 1, height_offset=offset)
        return new_state, metrics

    def policy(state: TrainState) -> Policy:
        return Policy(params=state.params, obs_stats=state.obs_stats, base_params=state.base_params)

    return Trainer(config=config, env=env, model=model, init=init, update=update, policy=policy,
                   demo_paths=None if imit is None else np.asarray(demo_paths), base=base)


def make_chunk(trainer: Trainer, num_updates: int):
    """`chunk(state) -> (state, metrics[num_updates])`: a scan of updates (jit it)."""

    def chunk(state: TrainState):
        return jax.lax.scan(lambda s, _: trainer.update(s), state, None, length=num_updates)

    return chunk


def make_train(config: PPOConfig, env: Optional[AssemblyEnv] = None, sampler: Optional[Sampler] = None,
               demo_paths: Optional[np.ndarray] = None):
    """`train(key, hparams=None) -> (TrainState, UpdateMetrics[num_updates])`, pure and jittable."""
    trainer = make_trainer(config, env, sampler, demo_paths)
    run = make_chunk(trainer, config.num_updates)

    def train(key: jax.Array, hparams: Optional[PPOHyperparams] = None):
        return run(trainer.init(key, hparams))

    return train
