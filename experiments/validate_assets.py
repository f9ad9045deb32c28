"""Validate every registered task with the privileged scripted insertion.

For each task and embodiment: `--num-starts` episodes from randomised starts near the
nominal one (θ = (0, 0, depth + 15 mm) + U(±`--spread`)^3, plus the environment's usual
socket-pose and plug-yaw randomisation), run in one vmapped batch. Reports the scripted
success rate and the deepest contact penetration seen in any step.

The last line of stdout is a JSON list, one object per (task, embodiment) (with --json).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import refinery_jax  # noqa: F401  (sets the XLA CPU flag before JAX starts)
import jax
import jax.numpy as jnp

from refinery_jax.assets.registry import task_names
from refinery_jax.assets.scene import EMBODIMENTS
from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig
from refinery_jax.envs.scripted import run_scripted_episode

NOMINAL_HEIGHT = 0.015  # tip above the socket's top face at the nominal start (m)


def validate(task: str, embodiment: str, num_starts: int, spread: float, seed: int) -> dict:
    env = AssemblyEnv(EnvConfig(task=task, embodiment=embodiment))
    key_inits, key_episodes = jax.random.split(jax.random.key(seed))
    nominal = jnp.array([0.0, 0.0, env.assembly.depth + NOMINAL_HEIGHT])
    inits = nominal + jax.random.uniform(key_inits, (num_starts, 3), minval=-spread, maxval=spread)
    keys = jax.random.split(key_episodes, num_starts)
    start = time.perf_counter()
    _, success, penetration = jax.jit(jax.vmap(lambda k, i: run_scripted_episode(env, k, i)))(keys, inits)
    success = jax.block_until_ready(success)
    return {
        "task": task,
        "embodiment": embodiment,
        "scripted_success_rate": float(jnp.mean(success)),
        "max_penetration_mm": float(jnp.max(penetration)) * 1e3,
        "num_starts": num_starts,
        "clearance_mm": env.assembly.clearance * 1e3,
        "wall_s": time.perf_counter() - start,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(task_names()), help="comma-separated task names")
    parser.add_argument("--embodiments", default=",".join(EMBODIMENTS))
    parser.add_argument("--num-starts", type=int, default=128)
    parser.add_argument("--spread", type=float, default=0.002, help="± box around the nominal start (m)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line last")
    args = parser.parse_args()
    tasks, embodiments = args.tasks.split(","), args.embodiments.split(",")
    for name in tasks:
        if name not in task_names():
            parser.error(f"unknown task {name!r}; registered: {', '.join(task_names())}")
    for name in embodiments:
        if name not in EMBODIMENTS:
            parser.error(f"unknown embodiment {name!r}; choose from {', '.join(EMBODIMENTS)}")
    if args.out is not None and args.out.exists():
        parser.error(f"{args.out} exists; choose another path (results are never overwritten)")

    rows = []
    for embodiment in embodiments:
        for task in tasks:
            row = validate(task, embodiment, args.num_starts, args.spread, args.seed)
            rows.append(row)
            print(f"{task:28s} {embodiment:14s} success {row['scripted_success_rate']:.3f}  "
                  f"max penetration {row['max_penetration_mm']:.3f} mm  ({row['wall_s']:.0f} s)", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=1))
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
