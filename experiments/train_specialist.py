"""Train a PPO specialist on one task, evaluate it on fresh initial conditions, map its success.

    python experiments/train_specialist.py --task square_peg --preset quick --seed 0 --out runs/square_peg_s0

Writes into --out: checkpoints/ (orbax, after every chunk of updates: a killed run
continues with --resume to the same final parameters), metrics.jsonl and
tensorboard/ (scalars per update), results.json, success_map.{png,npz,json}.
A directory holding a finished run (results.json) or an unfinished one is never
reused silently: pass --resume to continue an unfinished run, or --overwrite to
start over (the old directory is moved aside to DIR.old-<time>, not deleted).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import refinery_jax  # noqa: E402,F401  (sets the XLA CPU flag before JAX starts)
from refinery_jax.assets.registry import DEFAULT_TASK, task_names  # noqa: E402
from refinery_jax.ppo.presets import PRESETS  # noqa: E402
from refinery_jax.run_dirs import prepare_run_dir  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--task", default=DEFAULT_TASK, help=f"registered task (default {DEFAULT_TASK}): "
                        + ", ".join(task_names()))
    parser.add_argument("--preset", default="quick", choices=PRESETS, help="training budget (default quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=pathlib.Path, help="run directory")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    group.add_argument("--overwrite", action="store_true", help="move an existing --out aside and start over")
    parser.add_argument("--updates", type=int, default=None, help="override the preset's number of PPO updates "
                        "(a multiple of the chunk size)")
    parser.add_argument("--eval-episodes", type=int, default=1000, help="fresh uniform inits evaluated at the end")
    parser.add_argument("--map-grid", type=int, default=5, help="success-map cells per axis (x and y)")
    parser.add_argument("--map-z", type=int, default=2, help="success-map z slices")
    parser.add_argument("--map-trials", type=int, default=8, help="episodes per success-map cell")
    args = parser.parse_args(argv)
    if args.task not in task_names():
        parser.error(f"unknown task {args.task!r}; registered tasks: {', '.join(task_names())}")
    if args.updates is not None and args.updates < 1:
        parser.error("--updates must be positive")
    if min(args.eval_episodes, args.map_grid, args.map_z, args.map_trials) < 1:
        parser.error("--eval-episodes, --map-grid, --map-z and --map-trials must be positive")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    resume = prepare_run_dir(args.out, args.resume, args.overwrite, unfinished_markers=("checkpoints",))
    t_start = time.time()

    import jax

    from refinery_jax.compile_cache import enable_compile_cache

    enable_compile_cache()  # each program compiles once per machine
    import numpy as np

    from refinery_jax.checkpoints import config_fingerprint, latest_step, restore_checkpoint, save_checkpoint
    from refinery_jax.envs.assembly_env import AssemblyEnv
    from refinery_jax.envs.demos import DemoConfig, make_generator
    from refinery_jax.envs.samplers import env_uniform
    from refinery_jax.evaluation import make_evaluate, save_success_map, success_map, summarize
    from refinery_jax.logging_utils import ScalarLogger
    from refinery_jax.ppo import default_hyperparams, make_chunk, make_trainer
    from refinery_jax.ppo.presets import preset

    spec = preset(args.preset, args.task)
    config = spec.config
    if args.updates is not None:
        if args.updates % spec.chunk_updates:
            sys.exit(f"error: --updates must be a multiple of the chunk size {spec.chunk_updates}")
        config = dataclasses.replace(config, num_updates=args.updates)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    run_id = {"fingerprint": config_fingerprint((config, spec, args.seed)), "task": args.task,
              "preset": args.preset, "seed": args.seed}

    key = jax.random.key(args.seed)
    k_train, k_demos, k_eval_inits, k_eval, k_map = jax.random.split(key, 5)
    env = AssemblyEnv(config.env)
    demo_paths = None
    if config.imitation is not None:
        demos = jax.jit(make_generator(env, DemoConfig(num_attempts=config.imitation.num_demos)))(k_demos)
        demo_paths = demos.assembly_paths()
        print(f"demos: {len(demo_paths)} valid of {config.imitation.num_demos} disassemblies", flush=True)
        if len(demo_paths) == 0:
            sys.exit("error: no valid disassembly demonstration; cannot build the imitation reward")
    trainer = make_trainer(config, env, demo_paths=demo_paths)
    hparams = default_hyperparams(config, imitation_weight=spec.imitation_weight, **spec.hparams)
    init = jax.jit(trainer.init)
    chunk = jax.jit(make_chunk(trainer, spec.chunk_updates))

    state = init(k_train, hparams)
    train_wall = 0.0
    if resume:
        state, meta = restore_checkpoint(ckpt_dir, state, expected_meta=run_id)
        train_wall = meta["train_wall_s"]
        print(f"resumed {ckpt_dir} at update {int(state.update)} / {config.num_updates}", flush=True)

    print(f"task {args.task} | preset {args.preset} | seed {args.seed} | {config.num_envs} envs x "
          f"{config.num_steps} steps x {config.num_updates} updates = {config.total_env_steps:,} env steps", flush=True)
    rate = None  # training success rate of the last chunk
    with ScalarLogger(out) as logger:
        while int(state.update) < config.num_updates:
            t0 = time.time()
            state, metrics = chunk(state)
            metrics = jax.device_get(metrics)
            train_wall += time.time() - t0
            for i in range(spec.chunk_updates):
                logger.log(int(metrics.env_steps[i]), {f"train/{k}": v[i] for k, v in metrics.__dict__.items()})
            episodes = int(metrics.episodes.sum())
            rate = float(metrics.successes.sum()) / max(episodes, 1)
            print(f"[update {int(state.update):5d}/{config.num_updates}] steps {int(metrics.env_steps[-1]):>10,} | "
                  f"success {rate:.3f} ({episodes} episodes) | return {np.nanmean(metrics.episode_return):7.2f} | "
                  f"reward {metrics.reward.mean():.3f} | kl {metrics.approx_kl.mean():.4f} | "
                  f"train {train_wall:6.0f} s", flush=True)
            save_checkpoint(ckpt_dir, int(state.update), state, {**run_id, "train_wall_s": train_wall})

    print("evaluating ...", flush=True)
    t_eval = time.time()
    evaluate = make_evaluate(env, trainer.model, obs_clip=config.obs_clip)
    policy = trainer.policy(state)
    inits = jax.vmap(env_uniform(env))(jax.random.split(k_eval_inits, args.eval_episodes))
    result = jax.device_get(evaluate(policy, inits, k_eval))
    smap = success_map(evaluate, policy, k_map, env.init_low, env.init_high, nx=args.map_grid, ny=args.map_grid,
                       nz=args.map_z, trials=args.map_trials)
    map_paths = save_success_map(smap, out, title=f"{args.task} seed {args.seed}")
    map_stats = summarize(smap)
    eval_wall = time.time() - t_eval

    results = {
        **run_id,
        "success_rate": float(np.mean(result.success)),
        "eval_episodes": args.eval_episodes,
        "mean_return": float(np.mean(result.returns)),
        "mean_length": float(np.mean(result.lengths)),
        "env_steps": int(state.update) * config.batch_size,
        "wall_s": time.time() - t_start,
        "train_wall_s": train_wall,
        "eval_wall_s": eval_wall,
        "spatial_std": map_stats["spatial_std"],
        "spatial_std_denoised": map_stats["spatial_std_denoised"],
        "success_map": {**map_stats, **map_paths},
        "final_train_success_rate": rate,
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
        "hparams": {k: (float(v) if not isinstance(v, dict) else {n: float(w) for n, w in v.items()})
                    for k, v in dataclasses.asdict(state.hparams).items()} if dataclasses.is_dataclass(state.hparams)
        else None,
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0]),
        "resumed": resume,
        "latest_checkpoint": latest_step(ckpt_dir),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"success {results['success_rate']:.3f} on {args.eval_episodes} fresh inits | spatial std "
          f"{results['spatial_std']:.3f} (denoised {results['spatial_std_denoised']:.3f}) | "
          f"{results['env_steps']:,} env steps | {results['wall_s']:.0f} s "
          f"-> {out / 'results.json'}", flush=True)


if __name__ == "__main__":
    main()
