"""Which acquisition should choose where to fine-tune? UCB, PI, EI, log-EI and uniform resets.

    python experiments/acquisition_ablation.py --task square_peg --preset quick --seeds 2 --out runs/ablation

The same specialists (seeds 0..S-1, trained here or taken from a finished run of
`experiments/train_specialist.py` or `experiments/refinery.py` with --baselines DIR) are fine-tuned with each
acquisition for the same fixed number of rounds (the convergence rule is off so every
arm gets the same PPO updates and env steps), plus the uniform-reset control; each
policy is then evaluated on the same fresh uniform trials (θ and episode keys), and each
arm's paired difference to the uniform control is reported with its 95 % CI and McNemar
p-value. Writes results.json (per arm: mean, std, 95 % CI, per seed, `vs_uniform`), figures/acquisitions.png (like the paper's Fig. 3), stages/
(finished arms; --resume skips them), log.txt, tensorboard/ and metrics.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from refinery_jax.assets.registry import DEFAULT_TASK, task_names  # noqa: E402
from refinery_jax.run_dirs import prepare_run_dir, write_run_config  # noqa: E402
from refinery_jax.success_models.acquisition import ACQUISITIONS  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--task", default=DEFAULT_TASK, help=f"registered task (default {DEFAULT_TASK})")
    parser.add_argument("--preset", default="quick", choices=("quick", "paper"))
    from refinery_jax.refinery.presets import add_backend_argument

    add_backend_argument(parser)
    parser.add_argument("--seeds", type=int, default=2, help="number of seeds, 0..S-1 (default 2)")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--acquisitions", nargs="+", default=list(ACQUISITIONS), choices=ACQUISITIONS)
    parser.add_argument("--rounds", type=int, default=None, help="fine-tuning rounds per arm (default: the "
                        "preset's max_rounds)")
    parser.add_argument("--eval-trials", type=int, default=1000, help="fresh trials per arm and seed")
    parser.add_argument("--baselines", type=pathlib.Path, default=None,
                        help="a finished run of experiments/train_specialist.py or refinery.py (same task and "
                             "preset, seeds 0..S-1 among its seeds) whose specialists to start from")
    parser.add_argument("--baseline-updates", type=int, default=None, help="override the specialists' PPO updates")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true")
    group.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    from refinery_jax.refinery.presets import resolve_backend_arg

    resolve_backend_arg(parser, args)  # first: choosing MJX sets its XLA CPU flag before JAX starts
    if args.task not in task_names():
        parser.error(f"unknown task {args.task!r}; registered tasks: {', '.join(task_names())}")
    for name in ("seeds", "rounds", "eval_trials", "baseline_updates"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    args.baseline = None
    if args.baselines is not None:  # loaded here: a bad run ends before anything is written or compiled
        from refinery_jax.refinery.specialists import specialists_option

        args.baseline = specialists_option(parser, "--baselines", args.baselines, range(args.seeds), task=args.task,
                                           preset=args.preset)
    from refinery_jax.refinery.presets import configure

    try:
        args.configs = configure(args.preset, args.task, baseline_updates=args.baseline_updates, backend=args.backend)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    spec, comparison = args.configs
    base_finetune = comparison.finetune
    rounds = args.rounds or base_finetune.max_rounds
    # the convergence window is longer than the run: every arm runs exactly `rounds` rounds
    base_finetune = dataclasses.replace(base_finetune, max_rounds=rounds, window=rounds + 1)
    resume = prepare_run_dir(args.out, args.resume, args.overwrite,
                             unfinished_markers=("config.json", "stages", "specialists"))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    import jax

    from refinery_jax.logging_utils import RunLog, ScalarLogger

    progress = RunLog(out)
    logger = ScalarLogger(out)

    from refinery_jax.compile_cache import enable_compile_cache

    enable_compile_cache()  # each program compiles once per machine
    import numpy as np

    from refinery_jax.checkpoints import stage_cache
    from refinery_jax.evaluation import make_evaluate
    from refinery_jax.refinery import format_table, make_finetune, run_rounds, summarize_seeds
    from refinery_jax.refinery.finetune import share_programs
    from refinery_jax.refinery.plots import plot_table
    from refinery_jax.refinery.stats import paired_difference
    from refinery_jax.refinery.specialists import (
        SPECIALISTS_DIR,
        build_trainer,
        run_identity,
        seed_keys,
        train_specialists,
    )
    from refinery_jax.success_models import ProposalConfig

    config = spec.config
    seeds = list(range(args.seeds))
    run_id = run_identity(spec, args.task, args.preset, seeds, extra=(base_finetune, args.eval_trials))
    # the arms' keys depend on the list of acquisitions, and the specialists on --baselines
    write_run_config(out, {**run_id, "args": {k: str(v) for k, v in vars(args).items() if k not in ("configs", "baseline")},
                           "finetune": dataclasses.asdict(base_finetune)},
                     resume, must_match=("fingerprint", "args.acquisitions", "args.baselines"))
    k_train, k_compare, _ = seed_keys(seeds)
    trainer, hparams = build_trainer(spec, progress)
    env = trainer.env
    if args.baselines is not None:
        baseline = args.baseline
        progress(f"specialists from {args.baselines}")
    else:
        baseline = train_specialists(trainer, hparams, k_train, spec.chunk_updates, out / SPECIALISTS_DIR, run_id,
                                     resume, progress, logger=logger)

    evaluate = make_evaluate(env, trainer.model, obs_clip=config.obs_clip)
    cache = stage_cache(out / "stages", run_id, resume, progress)
    low, high = env.init_low, env.init_high
    # one key per purpose: arm a fine-tunes with stream a, all arms are evaluated on the same fresh θ
    k_arms = jax.vmap(lambda k: jax.random.split(k, len(args.acquisitions) + 2))(k_compare)
    k_fresh = k_arms[:, -1]

    batch_evaluate, policies = jax.jit(jax.vmap(evaluate)), jax.jit(jax.vmap(trainer.policy))
    draw = jax.jit(jax.vmap(lambda k: jax.random.uniform(k, (args.eval_trials, len(low)), minval=low, maxval=high)))

    def fresh_success(train_states, keys):
        """Every arm is evaluated on the same fresh θ and episode keys (paired comparison)."""
        ks = jax.vmap(jax.random.split)(keys)
        return batch_evaluate(policies(train_states), draw(ks[:, 0]), ks[:, 1]).success

    programs = []  # the first arm's fine-tuning; every other arm reuses its compiled PPO rounds

    def finetuned(name, finetune_config, key_index, budget=None):
        finetune = make_finetune(finetune_config, trainer, evaluate)
        if programs:
            finetune = share_programs(finetune, programs[0])
        else:
            programs.append(finetune)
        init = lambda: jax.vmap(finetune.init)(k_arms[:, key_index], baseline, budget)  # noqa: E731

        return cache(f"finetune_{name}", lambda: run_rounds(finetune, jax.jit(init)(), batch_evaluate, trainer.policy,
                                                            f"  {name}", progress, logger, f"finetune_{name}"), init)

    success = {"baseline": cache("fresh_baseline", lambda: fresh_success(baseline, k_fresh),
                                 lambda: fresh_success(baseline, k_fresh))}
    arms = {}
    for i, kind in enumerate(args.acquisitions):
        progress(f"[{kind}]")
        arms[kind] = finetuned(kind, dataclasses.replace(base_finetune, proposal=ProposalConfig(kind=kind, q=32)), i)
    progress("[uniform]")
    arms["uniform"] = finetuned("uniform", dataclasses.replace(base_finetune, guided=False),
                                len(args.acquisitions), budget=np.full(len(seeds), rounds))
    for name, state in arms.items():
        success[name] = cache(f"fresh_{name}", lambda s=state: fresh_success(s.train, k_fresh),
                              lambda s=state: fresh_success(s.train, k_fresh))

    table = {name: summarize_seeds(np.asarray(s)) for name, s in success.items()}
    for name in arms:  # paired on the same fresh trials: each arm against the uniform-reset control
        if name != "uniform":
            table[name]["vs_uniform"] = paired_difference(np.asarray(success[name]), np.asarray(success["uniform"]))
    logger.log(0, {f"eval/{name}": row["success_mean"] for name, row in table.items()})
    logger.close()
    for name, state in arms.items():
        table[name]["finetune_env_steps_per_seed"] = np.asarray(state.history.env_steps[:, rounds - 1]).tolist()
        table[name]["round_success_per_seed"] = np.asarray(state.history.success_rate).tolist()
    progress("fresh uniform trials per arm: %d\n%s" % (args.eval_trials, format_table(table, reference="uniform")))
    (out / "figures").mkdir(exist_ok=True)
    figure = plot_table(table, out / "figures" / "acquisitions.png",
                        title=f"{args.task}: fine-tuning {rounds} rounds per arm, {len(seeds)} seed(s)")
    results = {**run_id, "arms": table, "rounds": rounds, "eval_trials": args.eval_trials, "figure": figure,
               "wall_s": time.time() - t_start, "jax_version": jax.__version__, "device": str(jax.devices()[0]),
               "backend": config.env.backend}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    progress(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
