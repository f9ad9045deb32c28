"""Refinery on one task: Baseline, Deployment, Fine-tune, Refinery and a uniform fine-tuning control.

    python experiments/refinery.py --task square_peg --preset quick --seeds 2 --out runs/refinery_square_peg

For seeds 0..S-1 (one vmap per stage): train the PPO specialists (the preset of the
same name; or load those of an experiments/train_specialist.py run with --baselines) → Baseline (uniform θ) → Deployment (baseline + success GMM, Algorithm 2)
→ Fine-tune (BO-guided, Algorithm 1; uniform θ) → Refinery (fine-tuned + GMM) →
Uniform fine-tune (the same rounds and env steps with uniform resets: the control the
paper does not report). Each row is measured on fresh trials used for nothing else.

Writes into --out: config.json, specialists/ (orbax checkpoints of the specialists),
stages/ (each finished stage, so --resume skips it), results.json (the table),
arrays.npz (everything the notebook needs), figures/*.png, log.txt, tensorboard/ and
metrics.jsonl (training, fine-tuning and evaluation scalars).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from refinery_jax.assets.registry import DEFAULT_TASK, task_names  # noqa: E402
from refinery_jax.refinery.presets import add_budget_arguments, add_device_arguments, configure_from_args  # noqa: E402
from refinery_jax.run_dirs import prepare_run_dir, write_run_config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--task", default=DEFAULT_TASK, help=f"registered task (default {DEFAULT_TASK})")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds, 0..S-1 (default 1)")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="run directory")
    add_budget_arguments(parser)
    parser.add_argument("--baselines", type=pathlib.Path, default=None,
                        help="a finished run of experiments/train_specialist.py (or of this script; same task and "
                             "preset, seeds 0..S-1 among its seeds) whose specialists to start from, untrained here")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNGs and success maps")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    group.add_argument("--overwrite", action="store_true", help="move an existing --out aside and start over")
    add_device_arguments(parser, distributed=False)  # (one process: its evaluation tables are gathered on the host)
    args = parser.parse_args(argv)
    import numpy as np

    from refinery_jax.refinery.presets import mesh_from_args, resolve_backend_arg

    resolve_backend_arg(parser, args)  # first: choosing MJX sets its XLA CPU flag before JAX starts
    if args.task not in task_names():
        parser.error(f"unknown task {args.task!r}; registered tasks: {', '.join(task_names())}")
    if args.seeds < 1:
        parser.error("--seeds must be positive")
    args.configs = configure_from_args(parser, args, args.task)
    args.mesh = mesh_from_args(parser, args)
    if args.mesh is not None:
        from refinery_jax.mesh import check_fits

        try:
            check_fits(args.mesh, args.configs[0].config.num_envs, args.seeds)
        except ValueError as error:
            parser.error(f"{error} (--devices, --seed-axis)")
    args.baseline = None
    if args.baselines is not None:  # loaded here: a bad run ends before anything is written or compiled
        from refinery_jax.refinery.specialists import specialists_option

        if args.baseline_updates is not None:
            parser.error("--baselines and --baseline-updates exclude each other (the loaded specialists are trained)")
        args.baseline = specialists_option(parser, "--baselines", args.baselines, range(args.seeds), task=args.task,
                                           preset=args.preset)
        import json

        trained = json.loads((args.baselines / "config.json").read_text()).get("ppo", {}).get("env", {})
        env = args.configs[0].config.env
        for name in ("init_xy", "init_height"):  # the Baseline row is the specialists on their own θ box
            if name in trained and tuple(np.atleast_1d(trained[name])) != tuple(np.atleast_1d(getattr(env, name))):
                parser.error(f"--baselines: its specialists were trained with {name} {trained[name]}, this run has "
                             f"{getattr(env, name)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    spec, comparison_config = args.configs
    resume = prepare_run_dir(args.out, args.resume, args.overwrite,
                             unfinished_markers=("config.json", "specialists", "stages"))
    t_start = time.time()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    import jax

    from refinery_jax.logging_utils import RunLog, ScalarLogger

    progress = RunLog(out)

    from refinery_jax.compile_cache import enable_compile_cache

    enable_compile_cache()  # each program compiles once per machine

    from refinery_jax.evaluation import save_success_map, success_map
    from refinery_jax.refinery import format_table
    from refinery_jax.refinery import plots
    from refinery_jax.refinery.experiment import refine_task
    from refinery_jax.refinery.results_io import RunData, add_success_map, pack_arrays, save_run
    from refinery_jax.refinery.specialists import run_identity, seed_keys

    config = spec.config
    seeds = list(range(args.seeds))
    loaded = (str(args.baselines.resolve()),) if args.baselines else ()  # loaded specialists are part of the run
    run_id = run_identity(spec, args.task, args.preset, seeds, extra=(comparison_config,) + loaded)
    from refinery_jax.mesh import describe

    write_run_config(out, {**run_id, "args": {k: str(v) for k, v in vars(args).items()
                                              if k not in ("configs", "baseline", "mesh")},
                           "ppo": dataclasses.asdict(config), "comparison": dataclasses.asdict(comparison_config),
                           "jax_version": jax.__version__, "device": str(jax.devices()[0]),
                           "devices": describe(args.mesh)}, resume)
    progress(f"{args.task}, preset {args.preset}, seeds {seeds}, physics backend {config.env.backend}")

    k_train, k_compare, k_maps = seed_keys(seeds)
    with ScalarLogger(out) as logger:
        run = refine_task(spec, comparison_config, k_train, k_compare, out, run_id, resume, progress, logger=logger,
                          specialists=args.baseline, mesh=args.mesh)
    trainer, evaluate, state, result, table = run
    env = trainer.env
    low, high = env.init_low, env.init_high
    progress("results (fresh trials per row: %d)\n%s" % (comparison_config.eval_trials, format_table(table)))

    # --- arrays for the notebook, figures ---------------------------------------------------------------
    arrays = pack_arrays(result, low, high, comparison_config.finetune)
    results = {**run_id, "methods": table, "eval_trials": comparison_config.eval_trials,
               "specialist_env_steps": int(state.update[0]) * config.batch_size,  # loaded ones included "acquisition": args.acquisition,
               "selection": args.selection, "jax_version": jax.__version__, "device": str(jax.devices()[0]),
               "backend": config.env.backend, "resumed": resume, "devices": describe(args.mesh)}
    if not args.no_figures:
        fig_dir = out / "figures"
        progress("[success maps before and after fine-tuning, seed 0; figures]")
        first = lambda tree: jax.tree.map(lambda a: a[0], tree)  # noqa: E731
        for tag, train_state in (("before", state), ("after", result.finetune.train)):
            smap = success_map(evaluate, trainer.policy(first(train_state)), k_maps[0], low, high, nx=5, ny=5, nz=2,
                               trials=8)
            save_success_map(smap, fig_dir, stem=f"success_map_{tag}", title=f"{args.task} seed 0, {tag} fine-tuning")
            add_success_map(arrays, tag, smap)
        results["figures"] = plots.draw_run_figures(RunData.from_memory(results, arrays), fig_dir, args.task)
    results["wall_s"] = time.time() - t_start
    save_run(out, results, arrays)
    progress(f"wrote {out / 'results.json'} ({results['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
