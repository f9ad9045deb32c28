"""Train PPO specialists on one task, evaluate them on fresh initial conditions, map success.

    python experiments/train_specialist.py --task square_peg --preset quick --seeds 1 --out runs/square_peg

Seeds 0..S-1 train as one vmapped run (`refinery.specialists`, the trainer and checkpoint
layout every script shares, so `experiments/refinery.py --specialists DIR` and
`experiments/sequence.py --init-from DIR` can start from these). Writes into --out:
config.json, specialists/ (orbax checkpoints after every chunk of updates: a killed run
continues with --resume to the same final parameters), tensorboard/ and metrics.jsonl
(scalars per update and the final evaluation), log.txt, results.json (per seed: success
on --eval-episodes fresh trials, training curve, wall times), success_map.{png,npz,json}
(seed 0). A directory holding a finished run (results.json) or an unfinished one is never
reused silently: pass --resume to continue an unfinished run, or --overwrite to start over
(the old directory is moved aside to DIR.old-<time>, not deleted).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from refinery_jax.assets.registry import DEFAULT_TASK, get_assembly, task_names  # noqa: E402
from refinery_jax.ppo.presets import PRESETS  # noqa: E402
from refinery_jax.run_dirs import prepare_run_dir, write_run_config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    from refinery_jax.refinery.presets import add_backend_argument, add_device_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--task", default=DEFAULT_TASK, help=f"registered task (default {DEFAULT_TASK}): "
                        + ", ".join(task_names()) + "; or a multi-part stage ASSEMBLY/i")
    parser.add_argument("--preset", default="quick", choices=PRESETS, help="training recipe and budget (default quick)")
    parser.add_argument("--embodiment", default="floating_hand", help="floating_hand (default) or franka")
    add_backend_argument(parser)
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds, 0..S-1, trained as one vmap (default 1)")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="run directory")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    group.add_argument("--overwrite", action="store_true", help="move an existing --out aside and start over")
    parser.add_argument("--updates", type=int, default=None, help="override the preset's number of PPO updates "
                        "(a multiple of the chunk size)")
    parser.add_argument("--memory", choices=("none", "lstm", "history"), default=None,
                        help="override the preset's actor memory (quick: none; paper: lstm)")
    parser.add_argument("--memory-size", type=int, default=None,
                        help="LSTM width (default 128) or observations in the history (default 4) with --memory")
    parser.add_argument("--eval-episodes", type=int, default=1000, help="fresh uniform inits evaluated per seed")
    parser.add_argument("--map-grid", type=int, default=5, help="success-map cells per axis (x and y)")
    parser.add_argument("--map-z", type=int, default=2, help="success-map z slices")
    parser.add_argument("--map-trials", type=int, default=8, help="episodes per success-map cell")
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    from refinery_jax.refinery.presets import mesh_from_args, resolve_backend_arg

    resolve_backend_arg(parser, args)  # first: choosing MJX sets its XLA CPU flag before JAX starts
    try:  # a registered task or a multi-part stage "ASSEMBLY/i"
        get_assembly(args.task)
    except ValueError as error:
        parser.error(str(error))
    if args.updates is not None and args.updates < 1:
        parser.error("--updates must be positive")
    if min(args.seeds, args.eval_episodes, args.map_grid, args.map_z, args.map_trials) < 1:
        parser.error("--seeds, --eval-episodes, --map-grid, --map-z and --map-trials must be positive")
    from refinery_jax.ppo.config import DEFAULT_MEMORY_SIZE
    from refinery_jax.ppo.presets import preset

    try:
        args.spec = preset(args.preset, args.task, args.backend, args.embodiment)
    except ValueError as error:
        parser.error(str(error))
    changes = {}
    if args.updates is not None:
        if args.updates % args.spec.chunk_updates:
            parser.error(f"--updates must be a multiple of the chunk size {args.spec.chunk_updates}")
        changes["num_updates"] = args.updates
    if args.memory is not None:  # one layer of the kind's usual size unless --memory-size says otherwise
        changes.update(memory=args.memory, memory_layers=1, memory_size=DEFAULT_MEMORY_SIZE.get(args.memory, args.spec.config.memory_size))
    if args.memory_size is not None:
        changes["memory_size"] = args.memory_size
    try:
        args.spec = dataclasses.replace(args.spec, config=dataclasses.replace(args.spec.config, **changes))
    except ValueError as error:
        parser.error(str(error))
    args.mesh = mesh_from_args(parser, args)
    if args.mesh is not None:
        from refinery_jax.mesh import check_fits

        try:
            check_fits(args.mesh, args.spec.config.num_envs, args.seeds)
            check_fits(args.mesh, args.eval_episodes, args.seeds)
        except ValueError as error:
            parser.error(f"{error} (--devices, --seed-axis; episodes: --eval-episodes)")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import jax
    import numpy as np

    # a multi-process run (--distributed): every process runs this with the same arguments; process 0
    # prepares --out and writes the run's record there, the others their logs into out/process_<i>;
    # the checkpoints in out/specialists are written by all of them together
    primary = jax.process_index() == 0
    resume = args.resume
    if primary:
        resume = prepare_run_dir(args.out, args.resume, args.overwrite, unfinished_markers=("config.json", "specialists"))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("run directory prepared")
    t_start = time.time()
    from refinery_jax.refinery.specialists import SPECIALISTS_DIR

    checkpoints = args.out / SPECIALISTS_DIR
    out = args.out if primary else args.out / f"process_{jax.process_index()}"
    out.mkdir(parents=True, exist_ok=True)

    from refinery_jax.compile_cache import enable_compile_cache

    enable_compile_cache()  # each program compiles once per machine
    from refinery_jax.envs.samplers import env_uniform
    from refinery_jax.evaluation import make_evaluate, save_success_map, success_map, summarize
    from refinery_jax.logging_utils import RunLog, ScalarLogger
    from refinery_jax.refinery.specialists import (
        build_trainer,
        run_identity,
        seed_keys,
        train_specialists,
    )

    spec, config = args.spec, args.spec.config
    seeds = list(range(args.seeds))
    progress = RunLog(out)
    run_id = run_identity(spec, args.task, args.preset, seeds)
    from refinery_jax.mesh import batch_sharding, describe, to_host, use_mesh

    write_run_config(out, {**run_id, "args": {k: str(v) for k, v in vars(args).items() if k not in ("spec", "mesh")},
                           "ppo": dataclasses.asdict(config), "hparams": spec.hparams,
                           "jax_version": jax.__version__, "device": str(jax.devices()[0]),
                           "devices": describe(args.mesh)}, resume)
    progress(f"task {args.task} | {args.embodiment} | preset {args.preset} | seeds {seeds} | physics backend "
             f"{config.env.backend} | "
             f"{config.num_envs} envs x {config.num_steps} steps x {config.num_updates} updates = "
             f"{config.total_env_steps:,} env steps per seed")
    k_train, k_after, k_maps = seed_keys(seeds)
    with ScalarLogger(out) as logger:
        trainer, hparams = build_trainer(spec, progress)
        t_train = time.time()
        state = train_specialists(trainer, hparams, k_train, spec.chunk_updates, checkpoints, run_id,
                                  resume, progress, logger=logger, mesh=args.mesh)
        train_wall = time.time() - t_train

        progress(f"evaluating: {args.eval_episodes} fresh trials per seed")
        t_eval = time.time()
        env = trainer.env
        evaluate = make_evaluate(env, trainer.model, obs_clip=config.obs_clip)
        split = jax.vmap(lambda k: jax.random.split(k, 2))(k_after)
        inits = jax.vmap(lambda k: jax.vmap(env_uniform(env))(jax.random.split(k, args.eval_episodes)))(split[:, 0])
        if args.mesh is not None:  # the trials split over the mesh like the training environments
            inits = jax.device_put(inits, batch_sharding(args.mesh, seeds_batched=True))
        with use_mesh(args.mesh):
            policies = jax.vmap(trainer.policy)(state)
            result = to_host(jax.jit(jax.vmap(evaluate))(policies, inits, split[:, 1]))
        eval_wall = time.time() - t_eval
        rates = np.asarray(result.success).mean(axis=1)
        logger.log(int(config.total_env_steps), {"eval/success": float(rates.mean())})
        first = jax.tree.map(lambda a: a[0], to_host(policies))
        smap = success_map(evaluate, first, k_maps[0], env.init_low, env.init_high, nx=args.map_grid,
                           ny=args.map_grid, nz=args.map_z, trials=args.map_trials)
        map_paths = save_success_map(smap, out, title=f"{args.task} seed 0")
        map_stats = summarize(smap)

    curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    results = {
        **run_id,
        "success_rate": float(rates.mean()),
        "success_per_seed": rates.tolist(),
        "eval_episodes": args.eval_episodes,
        "mean_return": float(np.mean(result.returns)),
        "env_steps": int(config.total_env_steps),
        "train_wall_s": train_wall,
        "eval_wall_s": eval_wall,
        "wall_s": time.time() - t_start,
        "training_curve": [{"env_steps": r["step"], "success": r["train/chunk_success"], "wall_s": r["train/wall_s"]}
                           for r in curve if "train/wall_s" in r],
        "success_map": {**map_stats, **map_paths},
        "resumed": resume,
        "devices": describe(args.mesh),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    progress(f"success {results['success_rate']:.3f} on {args.eval_episodes} fresh trials per seed "
             f"({np.round(rates, 3).tolist()}) | {config.total_env_steps:,} env steps | training {train_wall:.0f} s, "
             f"evaluation {eval_wall:.0f} s, total {results['wall_s']:.0f} s -> {out / 'results.json'}")


if __name__ == "__main__":
    main()
