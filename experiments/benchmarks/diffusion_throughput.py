"""Diffusion base policy costs on this machine, per U-Net width: BC training throughput and
planning latency (issue 19's benchmark; residual PPO's env steps/s is not measured yet).

For each `--widths` entry (down_dims, e.g. 16,32,64): parameter count; behaviour-cloning
samples/s (one jitted scan of `--updates` updates at batch `--batch`, chunks of 32 x 6
actions, 31-value observations, after a warm-up scan); DDIM planning latency of one chunk
for 1 and for 256 environments (`--inference-steps`, default 4), and per control step
amortised over the 8 executed actions (goal: <= 10 ms at batch 1). The last line is one
JSON object. Noisy on a shared machine: compare widths within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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
    scan = jax.jit(lambda s, k: jax.lax.scan(lambda s, k: update(s, obs, chunks, k), s, jax.random.split(k, updates)))
    train_s = _timed(scan, state, jax.random.key(1), repeats=1)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--widths", nargs="+", default=["16,32,64", "32,64,128", "64,128,256"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--inference-steps", type=int, default=4)
    args = parser.parse_args()
    rows = [measure(tuple(int(w) for w in widths.split(",")), args.batch, args.updates, args.inference_steps)
            for widths in args.widths]
    print(json.dumps({"device": str(jax.devices()[0]), "cpus": os.cpu_count(), "rows": rows}))


if __name__ == "__main__":
    main()
