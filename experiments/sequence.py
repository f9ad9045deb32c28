"""Multi-part assemblies: Refinery per insertion stage, and sequence success in two modes.

    python experiments/sequence.py --assembly peg_tower --preset quick --seeds 2 --out runs/sequence_peg_tower
    python experiments/sequence.py --all --preset quick --seeds 2 --out runs/sequences

For every stage NAME/k of the assembly: train the stage's PPO specialists (seeds
0..S-1, vmapped) and run the Refinery comparison on that stage (Baseline, Deployment,
Fine-tune, Refinery, uniform control; each on fresh trials). Stage k + 1's specialists
start from stage k's (the same insertion over one more loose part); stage 0's from a
finished experiments/train_specialist.py or refinery.py run with --init-from, or from
scratch. --stage-updates gives each stage its own PPO budget (deep stages need more).
A stage succeeds only if every loose part is within `EnvConfig.loose_part_tolerance`
(5 mm) of its assembled pose, in both modes below.
Then sequence success per method:

  paper    trial j of the sequence succeeds iff trial j of every stage does, each stage
           from its own sampled start (the stages' fresh trials);
  chained  stage k + 1 starts from the physical end state of stage k (parts left where
           they ended, plug released), one policy per stage, fresh θ per stage.

Beyond the paper: refinery_joint picks the θ of all stages at once from a GMM fitted to
whole successful chains, against refinery's independent per-stage choice.

Writes into --out (per assembly with --all: --out/NAME): config.json, stage_k/ (the
stage's specialists and finished comparison stages; --resume skips them), chain/
(finished chained rows), results.json, table.txt (Table I, then what limits the chain),
figures/sequence.png (Fig. 5), log.txt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from refinery_jax.assets.multipart import multipart_names, stage_names  # noqa: E402
from refinery_jax.refinery.presets import add_budget_arguments, configure_from_args  # noqa: E402
from refinery_jax.run_dirs import prepare_run_dir, write_run_config  # noqa: E402

MARKERS = ("config.json", "stage_0", "chain")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--assembly", help=f"registered multi-part assembly ({', '.join(multipart_names())})")
    which.add_argument("--all", action="store_true", help="every registered assembly, each into --out/NAME")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds, 0..S-1 (default 1)")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="run directory")
    # per stage; --eval-trials is also the chained trials per row, --gmm-inits those fitting the joint GMM
    add_budget_arguments(parser)
    parser.add_argument("--init-from", type=pathlib.Path, default=None,
                        help="warm-start stage 0's specialists from this finished run of "
                             "experiments/train_specialist.py or experiments/refinery.py (later stages start "
                             "from the stage before)")
    parser.add_argument("--stage-updates", type=int, nargs="+", default=None, metavar="N",
                        help="PPO updates of each stage's specialists: one per stage, or one for all (instead of "
                             "--baseline-updates)")
    parser.add_argument("--no-figures", action="store_true", help="skip figures/sequence.png")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the unfinished run(s) in --out")
    group.add_argument("--overwrite", action="store_true", help="move an existing --out aside and start over")
    args = parser.parse_args(argv)
    from refinery_jax.refinery.presets import resolve_backend_arg

    resolve_backend_arg(parser, args)  # first: choosing MJX sets its XLA CPU flag before JAX starts
    if args.assembly is not None and args.assembly not in multipart_names():
        parser.error(f"unknown assembly {args.assembly!r}; registered: {', '.join(multipart_names())}")
    if args.seeds < 1:
        parser.error("--seeds must be positive")
    args.donor = args.warm = None
    if args.init_from is not None:  # loaded here: a bad donor ends before anything is written or compiled
        from refinery_jax.refinery.specialists import specialists_option

        args.warm = specialists_option(parser, "--init-from", args.init_from, range(args.seeds))
        args.donor = json.loads((args.init_from / "config.json").read_text())
    args.assemblies = list(multipart_names()) if args.all else [args.assembly]
    if args.stage_updates is not None and args.baseline_updates is not None:
        parser.error("--stage-updates and --baseline-updates exclude each other")
    # every stage's settings, checked before anything compiles
    args.configs = {name: stage_configs(parser, args, name) for name in args.assemblies}
    return args


def stage_configs(parser, args, name: str) -> list:
    """(PPO preset, comparison config) per stage of `name`, with that stage's PPO budget."""
    tasks = stage_names(name)
    updates = args.stage_updates or [args.baseline_updates]
    if len(updates) == 1:
        updates = updates * len(tasks)
    if len(updates) != len(tasks):
        parser.error(f"--stage-updates: {name} has {len(tasks)} stages, got {len(updates)} values")
    return [configure_from_args(parser, argparse.Namespace(**{**vars(args), "baseline_updates": n}), task)
            for task, n in zip(tasks, updates)]


def run_assembly(name: str, args, out: pathlib.Path, resume: bool) -> dict:
    from refinery_jax.logging_utils import RunLog, ScalarLogger

    out.mkdir(parents=True, exist_ok=True)
    with ScalarLogger(out) as logger:
        return _run_assembly(name, args, out, resume, RunLog(out), logger)


def _run_assembly(name: str, args, out: pathlib.Path, resume: bool, progress, logger) -> dict:
    t_start = time.time()

    import jax
    import numpy as np

    from refinery_jax.checkpoints import config_fingerprint, stage_cache
    from refinery_jax.refinery import format_table
    from refinery_jax.refinery.experiment import refine_task
    from refinery_jax.refinery.plots import plot_sequence
    from refinery_jax.refinery.sequence import (ChainStage, add_sequence_differences, chain_batch_size, chained_summary,
                                                format_chain_diagnostics, format_sequence_table, make_chain_evaluator,
                                                paper_sequence_table, ppo_act, run_chained)
    from refinery_jax.refinery.specialists import seed_keys

    tasks, configs = stage_names(name), args.configs[name]
    seeds = list(range(args.seeds))
    comparison_config = configs[0][1]
    donor = None if args.donor is None else args.donor["fingerprint"]  # the warm start's own run, not its path
    # (the tag: stages warm-start from the stage before, which runs before it did not)
    run_id = {"fingerprint": config_fingerprint((configs, seeds, donor, "chained warm starts")), "assembly": name,
              "preset": args.preset, "seeds": seeds, "backend": configs[0][0].config.env.backend}
    write_run_config(out, {**run_id, "stages": list(tasks),
                           "args": {k: str(v) for k, v in vars(args).items() if k not in ("configs", "assemblies", "donor", "warm")},
                           "ppo": [dataclasses.asdict(spec.config) for spec, _ in configs],
                           "comparison": dataclasses.asdict(comparison_config)}, resume)

    runs, warm = [], args.warm
    for k, (task, (spec, comparison)) in enumerate(zip(tasks, configs)):
        source = f", from stage {k}'s specialists" if k else ""
        progress(f"=== stage {k + 1}/{len(tasks)}: {task} ({spec.config.num_updates} PPO updates{source})")
        train_keys, compare_keys, _ = seed_keys(seeds, stream=k)
        run = refine_task(spec, comparison, train_keys, compare_keys, out / f"stage_{k}", {**run_id, "stage": k},
                          resume, progress, warm_start=warm, logger=logger)
        warm = run.baseline  # the next stage starts from this stage's specialists
        progress(f"{task}:\n{format_table(run.table)}")
        runs.append(run)

    paper = paper_sequence_table([r.result for r in runs])
    progress("=== chained trials")
    evaluate = make_chain_evaluator([ChainStage(r.trainer.env, ppo_act(r.trainer.model, r.trainer.env.observation_size,
                                                                       spec.config.obs_clip))
                                     for r, (spec, _) in zip(runs, configs)],
                                    batch_size=chain_batch_size(min(comparison_config.eval_trials,
                                                                    comparison_config.gmm_inits)))
    chain_keys = seed_keys(seeds, stream=len(tasks))[1]
    chained_raw, joint_models = run_chained(evaluate, runs, chain_keys, comparison_config.eval_trials,
                                            comparison_config.gmm_inits, comparison_config.deployment,
                                            comparison_config.gmm, stage_cache(out / "chain", run_id, resume, progress),
                                            progress)
    chained = {m: chained_summary(r.stage_success, r.sequence_success, r.displacement) for m, r in chained_raw.items()}
    add_sequence_differences(chained, {m: np.asarray(r.sequence_success, bool) for m, r in chained_raw.items()})
    tolerance_mm = 1000 * configs[-1][0].config.env.loose_part_tolerance
    table = (f"a stage succeeds only with every loose part within {tolerance_mm:g} mm of its assembled pose "
             f"(both modes)\n" + format_sequence_table(paper, chained) + "\n\n" + format_chain_diagnostics(chained))
    progress(f"{name}: stage and sequence success (fresh trials per row: {comparison_config.eval_trials})\n{table}")
    (out / "table.txt").write_text(table + "\n")

    results = {**run_id, "stages": list(tasks), "per_stage": [r.table for r in runs], "paper": paper,
               "loose_part_tolerance_m": configs[-1][0].config.env.loose_part_tolerance,
               "chained": chained, "eval_trials": comparison_config.eval_trials,
               "joint_model": {"fit_trials": comparison_config.gmm_inits,
                               "fit_sequence_successes_per_seed": [int(m.num_successes) for m in joint_models],
                               "usable_per_seed": [bool(m.usable) for m in joint_models],
                               "components_per_seed": [int(m.gmm.num_components) for m in joint_models]},
               "specialist_env_steps_per_stage": [int(spec.config.total_env_steps) for spec, _ in configs],
               "warm_start": {"stage_0": None if args.init_from is None else str(args.init_from),
                              "later_stages": "the stage before"},
               "jax_version": jax.__version__, "device": str(jax.devices()[0]),
               "backend": configs[0][0].config.env.backend, "resumed": resume}
    if not args.no_figures:
        (out / "figures").mkdir(exist_ok=True)
        results["figure"] = plot_sequence(paper, chained, out / "figures" / "sequence.png",
                                          title=f"{name}: {len(tasks)} stages, {len(seeds)} seed(s)")
    results["wall_s"] = time.time() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=2, default=lambda x: np.asarray(x).tolist()))
    progress(f"wrote {out / 'results.json'} ({results['wall_s']:.0f} s)")
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    outs = {name: args.out / name if args.all else args.out for name in args.assemblies}
    if args.all and (args.out / "config.json").exists():
        raise SystemExit(f"error: {args.out} holds a single-assembly run; give --all a directory of its own")
    resume = {}
    for name, o in outs.items():
        if args.all and not args.overwrite and (o / "results.json").exists():
            print(f"{name}: finished run in {o}, skipped")
            continue
        resume[name] = prepare_run_dir(o, args.resume, args.overwrite, unfinished_markers=MARKERS)
    from refinery_jax.compile_cache import enable_compile_cache

    enable_compile_cache()  # each program compiles once per machine
    for name in resume:  # with --all (and no --overwrite), finished assemblies are kept and skipped
        run_assembly(name, args, outs[name], resume[name])


if __name__ == "__main__":
    main()
