"""Validate every registered task with the privileged scripted insertion.

For each task and embodiment: `--num-starts` episodes from randomised starts near the
nominal one (θ = (0, 0, depth + 15 mm) + U(±`--spread`)^3, plus the environment's usual
socket-pose and plug-yaw randomisation), run in one vmapped batch. Reports the scripted
success rate and the deepest contact penetration seen in any step (read from MJX's
contacts: NaN with `--backend c`).

`--multipart` validates the stages of the multi-part assemblies instead (all registered,
or `--assemblies a,b`). Per stage, besides success and penetration: the largest
displacement of any earlier (loose) part from its assembled pose during the scripted
insertions (max and mean over episodes), and in as many "hold" episodes, in which the
hand stays still above the socket for the same 10 s, how far the loose parts move with
nothing touching them. Per assembly, the product of its stages' success rates.

The last line of stdout is a JSON list, one object per (task, embodiment) (with --json).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from refinery_jax.assets.multipart import multipart_names, stage_names
from refinery_jax.assets.registry import task_names
from refinery_jax.assets.scene import EMBODIMENTS
from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig
from refinery_jax.envs.physics import BACKENDS, resolve_backend
from refinery_jax.envs.scripted import run_scripted_episode, run_scripted_episode_metrics

NOMINAL_HEIGHT = 0.015  # tip above the socket's top face at the nominal start (m)


def validate(task: str, embodiment: str, num_starts: int, spread: float, seed: int, backend: str) -> dict:
    env = AssemblyEnv(EnvConfig(task=task, embodiment=embodiment, backend=backend))
    key_inits, key_episodes = jax.random.split(jax.random.key(seed))
    nominal = jnp.array([0.0, 0.0, env.assembly.depth + NOMINAL_HEIGHT])
    inits = nominal + jax.random.uniform(key_inits, (num_starts, 3), minval=-spread, maxval=spread)
    keys = jax.random.split(key_episodes, num_starts)
    start = time.perf_counter()
    _, success, penetration = jax.jit(jax.vmap(lambda k, i: run_scripted_episode(env, k, i)))(keys, inits)
    success = jax.block_until_ready(success)
    return {
        "task": task,
        "backend": env.backend_name,
        "embodiment": embodiment,
        "scripted_success_rate": float(jnp.mean(success)),
        "max_penetration_mm": float(jnp.max(penetration)) * 1e3,
        "num_starts": num_starts,
        "clearance_mm": env.assembly.clearance * 1e3,
        "wall_s": time.perf_counter() - start,
    }


def validate_stage(task: str, embodiment: str, num_starts: int, spread: float, seed: int, backend: str) -> dict:
    """Scripted insertions and as many hold episodes of one multi-part stage, in one batch."""
    env = AssemblyEnv(EnvConfig(task=task, embodiment=embodiment, backend=backend))
    key_inits, key_episodes = jax.random.split(jax.random.key(seed))
    nominal = jnp.array([0.0, 0.0, env.assembly.depth + NOMINAL_HEIGHT])
    inits = nominal + jax.random.uniform(key_inits, (num_starts, 3), minval=-spread, maxval=spread)
    # hold episodes start at the top of the reset box, the hand kept still there
    inits = jnp.concatenate([inits, jnp.tile(jnp.asarray(env.init_high), (num_starts, 1))])
    hold = jnp.arange(2 * num_starts) >= num_starts
    keys = jax.random.split(key_episodes, 2 * num_starts)
    start = time.perf_counter()
    out = jax.jit(jax.vmap(lambda k, i, h: run_scripted_episode_metrics(env, k, i, hold=h)))(keys, inits, hold)
    out = jax.block_until_ready({k: v for k, v in out.items() if k != "state"})
    scripted, held = slice(0, num_starts), slice(num_starts, None)
    mm = lambda x: float(x) * 1e3  # noqa: E731
    return {
        "task": task,
        "backend": env.backend_name,
        "embodiment": embodiment,
        "loose_parts": len(env.assembly.free_parts),
        "scripted_success_rate": float(jnp.mean(out["success"][scripted])),
        "max_penetration_mm": mm(jnp.max(out["penetration"][scripted])),
        "max_prior_displacement_mm": mm(jnp.max(out["prior_displacement"][scripted])),
        "mean_prior_displacement_mm": mm(jnp.mean(out["prior_displacement"][scripted])),
        "max_final_prior_displacement_mm": mm(jnp.max(out["final_prior_displacement"][scripted])),
        "hold_max_prior_displacement_mm": mm(jnp.max(out["prior_displacement"][held])),
        "num_starts": num_starts,
        "clearance_mm": env.assembly.clearance * 1e3,
        "wall_s": time.perf_counter() - start,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(task_names()), help="comma-separated task names")
    parser.add_argument("--embodiments", default=",".join(EMBODIMENTS))
    parser.add_argument("--num-starts", type=int, default=None, help="episodes per task (128; --multipart: 16)")
    parser.add_argument("--spread", type=float, default=0.002, help="± box around the nominal start (m)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line last")
    parser.add_argument("--multipart", action="store_true", help="validate the stages of multi-part assemblies")
    parser.add_argument("--assemblies", default=",".join(multipart_names()),
                        help="with --multipart: comma-separated assembly names")
    parser.add_argument("--backend", default="mjx", choices=BACKENDS,
                        help="physics (default mjx, whose contacts give the penetration; c: success and "
                             "displacements only)")
    args = parser.parse_args()
    try:
        backend = resolve_backend(args.backend)
    except ValueError as error:
        parser.error(str(error))
    tasks, embodiments = args.tasks.split(","), args.embodiments.split(",")
    if args.num_starts is None:
        args.num_starts = 16 if args.multipart else 128
    if args.multipart:
        for name in args.assemblies.split(","):
            if name not in multipart_names():
                parser.error(f"unknown assembly {name!r}; registered: {', '.join(multipart_names())}")
        tasks = [t for name in args.assemblies.split(",") for t in stage_names(name)]
    for name in [] if args.multipart else tasks:
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
            if not args.multipart:
                row = validate(task, embodiment, args.num_starts, args.spread, args.seed, backend)
                rows.append(row)
                print(f"{task:28s} {embodiment:14s} success {row['scripted_success_rate']:.3f}  "
                      f"max penetration {row['max_penetration_mm']:.3f} mm  ({row['wall_s']:.0f} s)", flush=True)
                continue
            row = validate_stage(task, embodiment, args.num_starts, args.spread, args.seed, backend)
            rows.append(row)
            print(f"{task:18s} {embodiment:14s} success {row['scripted_success_rate']:.3f}  "
                  f"penetration {row['max_penetration_mm']:.3f} mm  earlier parts moved max "
                  f"{row['max_prior_displacement_mm']:.3f} mm (mean {row['mean_prior_displacement_mm']:.3f}), "
                  f"untouched {row['hold_max_prior_displacement_mm']:.3f} mm  ({row['wall_s']:.0f} s)", flush=True)
        if args.multipart:
            for name in args.assemblies.split(","):
                stages = [r for r in rows if r["task"].split("/")[0] == name and r["embodiment"] == embodiment]
                product = float(np.prod([r["scripted_success_rate"] for r in stages]))
                print(f"{name:18s} {embodiment:14s} product of stage success rates {product:.3f}", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=1))
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
