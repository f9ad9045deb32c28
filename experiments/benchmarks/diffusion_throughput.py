"""Diffusion base policy costs on this machine, per U-Net width: BC training throughput,
planning latency, the base + residual action latency, and residual PPO's environment
steps/s against the plain specialist's (issue 19's benchmark).

For each `--widths` entry (down_dims, e.g. 16,32,64): parameter count; behaviour-cloning
samples/s (`--updates` jitted updates at batch `--batch`, as `train_bc` runs them, chunks of 32 x 6
actions, 31-value observations, after a warm-up run); DDIM planning latency of one chunk
for 1 and for 256 environments (`--inference-steps`, default 4), and per control step
amortised over the 8 executed actions (goal: <= 10 ms at batch 1); the residual MLP's
latency at the same batches and base + residual per control step (amortised plan + residual).
With `--ppo-task`, one PPO update of the quick preset (256 environments x 25 steps, C
backend) with a residual on a diffusion base of each width, and without a base, timed in the
same process: environment steps/s and the ratio. The last line is one JSON object. Noisy on
a shared machine: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from refinery_jax.diffusion.policy import (  # noqa: E402
    DiffusionConfig,
    DiffusionPolicy,
    fit_normalizer,
    init_bc,
    make_bc_update,
    make_planner,
)

OBS, ACTIONS = 31, 6


def _timed(fn, *args, repeats=3):
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def measure(dims, batch: int, updates: int, inference_steps: int) -> dict:
    config = DiffusionConfig(down_dims=dims, batch_size=batch, inference_steps=inference_steps)
    state = init_bc(config, jax.random.key(0), OBS, ACTIONS, updates)
    update = make_bc_update(config, ACTIONS, updates)
    obs, chunks = jnp.zeros((batch, OBS)), jnp.zeros((batch, config.prediction, ACTIONS))
    step = jax.jit(update)  # one jitted call per update, as `train_bc` runs them

    def run(state, key):
        for k in jax.random.split(key, updates):
            state, _ = step(state, obs, chunks, k)
        return state

    train_s = _timed(run, state, jax.random.key(1), repeats=1)
    box = jnp.stack([-jnp.ones(ACTIONS), jnp.ones(ACTIONS)])
    policy = DiffusionPolicy(params=state.params, obs_norm=fit_normalizer(jnp.stack([-jnp.ones(OBS), jnp.ones(OBS)])),
                             act_norm=fit_normalizer(box))
    plan = jax.jit(make_planner(config, ACTIONS))
    row = {"down_dims": list(dims), "parameters": int(sum(x.size for x in jax.tree.leaves(state.params))),
           "bc_samples_per_s": batch * updates / train_s, "bc_s_per_update": train_s / updates}
    for envs in (1, 256):
        keys, o = jax.random.split(jax.random.key(2), envs), jnp.zeros((envs, OBS))
        seconds = _timed(plan, policy, keys, o)
        row[f"plan_ms_batch_{envs}"] = 1e3 * seconds
        row[f"per_step_ms_batch_{envs}"] = 1e3 * seconds / config.execution
    return row


def residual_latency(hidden=(128, 128)) -> dict:
    """The residual MLP's mean action ([obs, base action] in) at batch 1 and 256, in ms."""
    from refinery_jax.ppo.networks import ActorCritic, Policy, initial_carry, policy_action
    from refinery_jax.ppo.normalization import init_stats

    size = OBS + ACTIONS
    model = ActorCritic(action_size=ACTIONS, actor_hidden=hidden, critic_hidden=hidden)
    params = model.init(jax.random.key(0), jnp.zeros(size), jnp.zeros(size), initial_carry(model, (), size))
    policy = Policy(params=params, obs_stats=init_stats(size))
    act = jax.jit(lambda p, x: policy_action(model, p, initial_carry(model, x.shape[:-1], size), x,
                                             jax.random.key(0), True)[1])
    return {f"residual_ms_batch_{b}": 1e3 * _timed(act, policy, jnp.zeros((b, size))) for b in (1, 256)}


def ppo_steps_per_s(task: str, widths, inference_steps: int) -> dict:
    """Env steps/s of one quick-preset PPO update: plain, and a residual on each width's base."""
    from refinery_jax.diffusion.policy import init_bc
    from refinery_jax.envs.assembly_env import AssemblyEnv
    from refinery_jax.ppo import default_hyperparams, make_trainer
    from refinery_jax.ppo.presets import preset
    from refinery_jax.residual.bases import diffusion_base

    spec = preset("quick", task, "c")
    env = AssemblyEnv(spec.config.env)
    hp = default_hyperparams(spec.config, **spec.hparams)
    steps = spec.config.num_envs * spec.config.num_steps
    out = {"task": task, "env_steps_per_update": steps}
    box = lambda n: fit_normalizer(jnp.stack([-jnp.ones(n), jnp.ones(n)]))  # noqa: E731
    for dims in [None] + list(widths):
        if dims is None:
            trainer, state = make_trainer(spec.config, env), None
            state = jax.jit(trainer.init)(jax.random.key(0), hp)
            name = "plain"
        else:
            config = DiffusionConfig(down_dims=dims, inference_steps=inference_steps)
            trainer = make_trainer(spec.config, env, base=diffusion_base(config, ACTIONS))
            base = DiffusionPolicy(params=init_bc(config, jax.random.key(1), env.observation_size, ACTIONS, 1).ema,
                                   obs_norm=box(env.observation_size), act_norm=box(ACTIONS))
            state = jax.jit(trainer.init)(jax.random.key(0), hp, base)
            name = "residual_" + "_".join(map(str, dims))
        print(f"PPO update: {name}", file=sys.stderr, flush=True)
        update = jax.jit(trainer.update)
        state, _ = jax.block_until_ready(update(state))  # compile, and queues past their first plan
        seconds = _timed(lambda s: update(s)[0], state, repeats=2)
        out[f"{name}_env_steps_per_s"] = steps / seconds
        print(f"  {steps / seconds:.0f} env steps/s", file=sys.stderr, flush=True)
    for key in [k for k in out if k.startswith("residual_")]:
        out[key.replace("env_steps_per_s", "vs_plain")] = out[key] / out["plain_env_steps_per_s"]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--widths", nargs="+", default=["16,32,64", "32,64,128", "64,128,256"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--inference-steps", type=int, default=4)
    parser.add_argument("--ppo-task", default=None, help="also time residual PPO on this task (e.g. square_peg)")
    args = parser.parse_args()
    widths = [tuple(int(w) for w in entry.split(",")) for entry in args.widths]
    residual = residual_latency()
    rows = []
    for dims in widths:
        print(f"width {dims}", file=sys.stderr, flush=True)
        row = measure(dims, args.batch, args.updates, args.inference_steps)
        for b in (1, 256):
            row[f"base_residual_per_step_ms_batch_{b}"] = row[f"per_step_ms_batch_{b}"] + residual[f"residual_ms_batch_{b}"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)  # (each width as it finishes)
    result = {"device": str(jax.devices()[0]), "cpus": os.cpu_count(), "residual": residual, "rows": rows}
    if args.ppo_task is not None:
        result["ppo"] = ppo_steps_per_s(args.ppo_task, widths, args.inference_steps)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
