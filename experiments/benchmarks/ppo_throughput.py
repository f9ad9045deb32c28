"""PPO training throughput: our PPO (`refinery_jax.ppo`) vs Brax's PPO on the same environment.

Both learners train on the same `AssemblyEnv` (default task, floating hand, `EnvConfig()`)
with θ drawn uniformly (`samplers.env_uniform`), the same number of environments, unroll
length, minibatches, epochs per rollout and network sizes ((128, 128) ELU actor and critic,
asymmetric critic on the privileged observation, observation normalisation, a Gaussian
policy with a state-independent log-std), and matching PPO hyperparameters. Measured:

- `ours_steps_per_s`: environment steps/s of `make_chunk(trainer, U)` (U = `--updates`),
  jitted, run once (compile + run), then timed on a second call;
- `brax_steps_per_s`: environment steps/s of `brax.training.agents.ppo.train` over its second
  training epoch (U training steps); its first epoch (U training steps) compiles and runs;
- `ratio`: ours / brax; `*_compile_s`: first segment minus timed segment (same work), so
  both sides' compile times are estimated the same way.

The two learners' timed segments cover the same environment steps (updates U+1 .. 2U of a
run from fresh environments), so they contain the same episode ends; keep U a multiple of
episode_steps / unroll (75 / 25 = 3 by default) so that the first segment does too and the
compile estimates are not skewed by resets. The last line of stdout is one JSON object.

The learners still differ in ways that change the work per env step a little: Brax resets an
env by restoring its cached first state (ours draws a fresh θ and solves IK, only in rollout
steps where some episode ended), recomputes values and GAE inside every minibatch loss
(ours: once per rollout, plus a critic pass on each reached state for truncation
bootstrapping), samples minibatches of whole trajectories (ours: of transitions), keeps its
learning rate constant (ours: linear decay) and runs through `pmap` on one device.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig, EnvState
from refinery_jax.envs.samplers import Sampler, env_uniform
from refinery_jax.ppo import PPOConfig, default_hyperparams, make_chunk, make_trainer

# the PPO hyperparameters both learners use (ours: `default_hyperparams`; mirrored into Brax)
HIDDEN = (128, 128)


# ---------------------------------------------------------------------------------------------
# our environment behind Brax's Env interface (benchmark only)
# ---------------------------------------------------------------------------------------------

def make_brax_adapter(env: AssemblyEnv, sampler: Sampler | None = None):
    """A `brax.envs.base.Env` over `env`: reset draws θ from `sampler` (default uniform box).

    The Brax `State` holds our `EnvState` as `pipeline_state`; `obs` is a dict with the policy
    observation under "state" and the privileged (critic) observation under
    "privileged_state", which Brax's networks select with `policy_obs_key` / `value_obs_key`.
    `done` is set only on divergence (our `terminated`): the time limit is left to Brax's
    `EpisodeWrapper` (episode_length = env.config.episode_steps, the same 75 steps our env
    truncates at), so that Brax marks it as a truncation and not a termination.
    """
    from brax.envs.base import Env, State

    sampler = env_uniform(env) if sampler is None else sampler

    def to_brax(s: EnvState, info: dict) -> State:
        return State(pipeline_state=s, obs={"state": s.obs, "privileged_state": s.critic_obs},
                     reward=s.reward, done=s.terminated.astype(jnp.float32),
                     metrics={"success": s.success.astype(jnp.float32)}, info=info)

    class AssemblyBraxEnv(Env):
        def reset(self, rng: jax.Array) -> State:
            k_init, k_reset = jax.random.split(rng)
            return to_brax(env.reset(k_reset, sampler(k_init)), {})

        def step(self, state: State, action: jax.Array) -> State:
            # keep `state.info` (the same dict object): Brax's wrappers store their counters there
            return to_brax(env.step(state.pipeline_state, action), state.info)

        @property
        def observation_size(self):
            return {"state": (env.observation_size,), "privileged_state": (env.critic_observation_size,)}

        @property
        def action_size(self) -> int:
            return env.action_size

        @property
        def backend(self) -> str:
            return "mjx"

    return AssemblyBraxEnv()


def _ensure_device_put_replicated():
    """brax 0.14 calls `jax.device_put_replicated`, which jax 0.10 no longer has.

    Stand-in for the single-device case only (what this benchmark uses): stack a leading
    device axis of size 1 and put the tree on that device, which is what the old function
    returned for one device.
    """
    if hasattr(jax, "device_put_replicated"):
        return

    def device_put_replicated(x, devices):
        devices = list(devices)
        if len(devices) != 1:
            raise NotImplementedError("benchmark stand-in for jax.device_put_replicated handles one device")
        return jax.device_put(jax.tree.map(lambda a: jnp.asarray(a)[None], x), devices[0])

    jax.device_put_replicated = device_put_replicated


# ---------------------------------------------------------------------------------------------
# the two measurements
# ---------------------------------------------------------------------------------------------

def ppo_config(env_config: EnvConfig, num_envs: int, unroll: int, updates: int, epochs: int,
               minibatches: int) -> PPOConfig:
    return PPOConfig(env=env_config, num_envs=num_envs, num_steps=unroll, num_updates=2 * updates,
                     update_epochs=epochs, num_minibatches=minibatches, actor_hidden=HIDDEN, critic_hidden=HIDDEN,
                     activation="elu", asymmetric_critic=True, normalize_obs=True)


def measure_ours(env: AssemblyEnv, config: PPOConfig, updates: int, seed: int, log) -> dict:
    trainer = make_trainer(config, env)
    start = time.perf_counter()
    state = jax.block_until_ready(jax.jit(trainer.init)(jax.random.key(seed)))
    init_s = time.perf_counter() - start
    chunk = jax.jit(make_chunk(trainer, updates))
    start = time.perf_counter()
    state, _ = jax.block_until_ready(chunk(state))          # compile + U updates
    first_s = time.perf_counter() - start
    log(f"ours: init {init_s:.1f} s, first chunk (compile + {updates} updates) {first_s:.1f} s")
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(chunk(state))    # U updates, compiled
    timed_s = time.perf_counter() - start
    steps = updates * config.batch_size
    log(f"ours: timed chunk {timed_s:.1f} s, {steps / timed_s:.0f} steps/s")
    return dict(steps_per_s=steps / timed_s, timed_s=timed_s, first_s=first_s, compile_s=first_s - timed_s,
                init_s=init_s, env_steps_total=int(metrics.env_steps[-1]))


def measure_brax(env: AssemblyEnv, config: PPOConfig, updates: int, seed: int, log) -> dict:
    from brax.training.agents.ppo import networks as brax_networks
    from brax.training.agents.ppo import train as brax_ppo
    from flax import linen

    _ensure_device_put_replicated()
    hp = default_hyperparams(config)
    num_envs, unroll, minibatches = config.num_envs, config.num_steps, config.num_minibatches
    # Step-count mapping. Brax: one training step unrolls `batch_size * num_minibatches / num_envs`
    # times `unroll_length` steps of all `num_envs` envs, i.e. batch_size * unroll_length *
    # num_minibatches env steps, then runs `num_updates_per_batch` epochs of `num_minibatches`
    # minibatches of `batch_size` trajectories each. With batch_size = num_envs / num_minibatches
    # that is one unroll of num_envs x unroll_length = our batch (num_envs * num_steps) per
    # training step, and minibatches of num_envs * unroll / num_minibatches transitions, as ours.
    batch_size = num_envs // minibatches
    steps_per_update = batch_size * unroll * minibatches
    assert steps_per_update == config.batch_size
    # Timing. Brax trains in `num_evals - 1` epochs of ceil(num_timesteps / ((num_evals - 1) *
    # steps_per_update)) training steps, each a call of one pmapped program that it times itself
    # (`training/sps`, `training/walltime`, reported through `progress_fn` after each epoch). With
    # num_evals = 3 and num_timesteps = 2 U steps_per_update: epoch 1 = compile + U training steps,
    # epoch 2 = U training steps, timed. Evaluation: run_evals=False skips every evaluation rollout
    # (progress_fn then receives the training metrics); Brax still builds its Evaluator, which
    # compiles and runs one reset of `num_eval_envs` envs (set to 1) outside both epochs.
    # Auto-reset: Brax's AutoResetWrapper restores each env's cached first state (same θ every
    # episode) instead of drawing a fresh θ and solving IK as ours does, which makes Brax slightly
    # cheaper per step, never more expensive.
    network_factory = functools.partial(
        brax_networks.make_ppo_networks, policy_hidden_layer_sizes=HIDDEN, value_hidden_layer_sizes=HIDDEN,
        activation=linen.elu, policy_obs_key="state", value_obs_key="privileged_state",
        distribution_type="normal", noise_std_type="log", init_noise_std=float(np.exp(hp.init_log_std)))
    epochs_seen = []

    def progress(step, metrics):
        epochs_seen.append(dict(step=int(step), sps=float(metrics["training/sps"]),
                                walltime=float(metrics["training/walltime"])))
        log(f"brax: epoch {len(epochs_seen)} done at {int(step)} env steps, walltime {epochs_seen[-1]['walltime']:.1f} s")

    start = time.perf_counter()
    brax_ppo.train(
        environment=make_brax_adapter(env), num_timesteps=2 * updates * steps_per_update,
        num_envs=num_envs, episode_length=env.config.episode_steps, action_repeat=1,
        unroll_length=unroll, batch_size=batch_size, num_minibatches=minibatches,
        num_updates_per_batch=config.update_epochs, network_factory=network_factory,
        learning_rate=float(hp.learning_rate), entropy_cost=float(hp.ent_coef), discounting=float(hp.gamma),
        gae_lambda=float(hp.gae_lambda), clipping_epsilon=float(hp.clip_eps),
        clipping_epsilon_value=float(hp.value_clip), max_grad_norm=float(hp.max_grad_norm),
        reward_scaling=float(hp.reward_scale), vf_loss_coefficient=float(hp.vf_coef),
        normalize_observations=True, normalize_advantage=True, seed=seed,
        num_evals=3, run_evals=False, num_eval_envs=1, progress_fn=progress)
    total_s = time.perf_counter() - start
    if len(epochs_seen) != 2 or epochs_seen[-1]["step"] != 2 * updates * steps_per_update:
        raise RuntimeError(f"expected 2 Brax epochs of {updates} training steps, got {epochs_seen}")
    first_s = epochs_seen[0]["walltime"]
    timed_s = epochs_seen[1]["walltime"] - first_s
    log(f"brax: timed epoch {timed_s:.1f} s, {updates * steps_per_update / timed_s:.0f} steps/s")
    return dict(steps_per_s=updates * steps_per_update / timed_s, sps_reported=epochs_seen[1]["sps"],
                timed_s=timed_s, first_s=first_s, compile_s=first_s - timed_s, total_s=total_s,
                env_steps_total=epochs_seen[-1]["step"], batch_size=batch_size)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=None, help="default: the registry's default task")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--unroll", type=int, default=25, help="rollout steps per update (both learners)")
    parser.add_argument("--updates", type=int, default=6,
                        help="updates (Brax: training steps) per segment; one segment compiles, one is timed")
    parser.add_argument("--epochs", type=int, default=4, help="PPO epochs per rollout")
    parser.add_argument("--minibatches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print only the JSON line (always the last line)")
    args = parser.parse_args(argv)
    if min(args.num_envs, args.unroll, args.updates, args.epochs, args.minibatches) < 1:
        parser.error("counts must be positive")
    if args.num_envs % args.minibatches:
        parser.error("--num-envs must be divisible by --minibatches (Brax's batch_size = num_envs / minibatches)")

    def log(line):
        if not args.json:
            print(line, flush=True)

    import brax

    env_config = EnvConfig() if args.task is None else EnvConfig(task=args.task)
    env = AssemblyEnv(env_config)
    config = ppo_config(env_config, args.num_envs, args.unroll, args.updates, args.epochs, args.minibatches)
    ours = measure_ours(env, config, args.updates, args.seed, log)
    theirs = measure_brax(env, config, args.updates, args.seed, log)
    result = {
        "task": env_config.task,
        "embodiment": env_config.embodiment,
        "num_envs": args.num_envs,
        "unroll_length": args.unroll,
        "num_minibatches": args.minibatches,
        "update_epochs": args.epochs,
        "hidden": list(HIDDEN),
        "updates_timed": args.updates,
        "env_steps_per_update": config.batch_size,
        "env_steps_timed": args.updates * config.batch_size,
        "ours_steps_per_s": ours["steps_per_s"],
        "brax_steps_per_s": theirs["steps_per_s"],
        "ratio": ours["steps_per_s"] / theirs["steps_per_s"],
        "ours_timed_s": ours["timed_s"],
        "brax_timed_s": theirs["timed_s"],
        "ours_compile_s": ours["compile_s"],
        "brax_compile_s": theirs["compile_s"],
        "compile_s_method": "first segment wall time minus timed segment wall time (same updates), both learners",
        "ours_first_chunk_s": ours["first_s"],
        "brax_first_epoch_s": theirs["first_s"],
        "ours_init_s": ours["init_s"],
        "brax_total_s": theirs["total_s"],
        "brax_sps_reported": theirs["sps_reported"],
        "brax_batch_size": theirs["batch_size"],
        "ours_env_steps_total": ours["env_steps_total"],
        "brax_env_steps_total": theirs["env_steps_total"],
        "brax_autoreset": "cached first state (ours: fresh θ + IK reset)",
        "device": str(jax.devices()[0]),
        "jax_version": jax.__version__,
        "brax_version": brax.__version__,
    }
    if not args.json:
        print(json.dumps(result, indent=1), flush=True)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
