"""Residual policies (ResiP) on one task: a diffusion base cloned from teacher demos, a residual
trained by PPO on top of it, both evaluated on the same fresh trials.

    python experiments/residual.py --task square_peg --seeds 1 --out runs/residual_square_peg

For a base that can imitate from the deployed (noisy-goal) observation, clone a specialist
rather than the privileged scripted teacher (README, Residual policies):

    python experiments/train_specialist.py --task square_peg --out runs/teacher_square_peg
    python experiments/collect_demos.py --task square_peg --teacher-run runs/teacher_square_peg \
        --out runs/demos_square_peg.npz
    python experiments/residual.py --task square_peg --seeds 3 --demos-file runs/demos_square_peg.npz \
        --out runs/residual_square_peg

Stages, each saved in --out and skipped by --resume once finished:

  demos.npz    --demos successful episodes of the scripted teacher (seed 0; or --demos-file)
  base/        per seed, behaviour cloning of the diffusion base (`diffusion.policy`):
               --bc-updates updates at batch 256, chunks of 32 actions, 8 executed
  residual/    per seed, PPO (the quick preset's recipe, --residual-updates updates) of a
               residual on the frozen base (`ppo.base`, `residual.bases`): the actor sees
               [observation, base action], the environment gets base + --residual-scale x residual
  scratch/     per seed, a PPO specialist from scratch with the residual's recipe and number of
               environment steps (the quick preset, --residual-updates updates)
  mlp_bc/      per seed, behaviour cloning with an MLP on the same demos, one action per
               observation (`imitation.mlp_bc`, --mlp-updates updates): the simplest baseline
  results.json, table.txt
               every row (diffusion base, base + residual with the residual's mean action,
               PPO from scratch with its mean action, MLP BC) on the same --eval-trials
               uniform θ and episode keys per seed, and base + residual from starts a GMM
               chooses (Algorithm 2, fitted on --gmm-inits uniform trials of its own; same
               episode keys): success with Wilson 95 % CIs, and the paired difference to the
               base (t over seeds, or Agresti-Min for one seed; exact McNemar)
  figures/training.png
               training success against environment steps, residual and from scratch

Also config.json, log.txt, tensorboard/ and metrics.jsonl (BC loss, PPO training).
BO fine-tuning of the residual (`refinery.finetune` with the residual trainer) works as for
any specialist (tested) but is not a row here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from refinery_jax.assets.registry import DEFAULT_TASK, get_assembly  # noqa: E402
from refinery_jax.run_dirs import prepare_run_dir, write_run_config  # noqa: E402

BASE_DIR, RESIDUAL_DIR, SCRATCH_DIR, MLP_DIR, DEMOS_FILE = "base", "residual", "scratch", "mlp_bc", "demos.npz"
MLP_HIDDEN = (256, 256)


def parse_args(argv=None) -> argparse.Namespace:
    from refinery_jax.refinery.presets import add_backend_argument, resolve_backend_arg

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--task", default=DEFAULT_TASK,
                        help=f"registered task or multi-part stage ASSEMBLY/i (default {DEFAULT_TASK})")
    parser.add_argument("--embodiment", default="floating_hand", help="floating_hand (default) or franka")
    add_backend_argument(parser)
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..S-1 (default 1)")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="run directory")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    group.add_argument("--overwrite", action="store_true", help="move an existing --out aside and start over")
    parser.add_argument("--demos", type=int, default=300, help="teacher demos to collect (default 300)")
    parser.add_argument("--demos-file", type=pathlib.Path, default=None,
                        help="use these demos (experiments/collect_demos.py) instead of collecting")
    parser.add_argument("--bc-updates", type=int, default=3000, help="behaviour-cloning updates per seed")
    parser.add_argument("--down-dims", type=int, nargs="+", default=None, help="U-Net widths (default 16 32 64)")
    parser.add_argument("--residual-updates", type=int, default=100,
                        help="PPO updates of the residual (a multiple of 10; default 100)")
    parser.add_argument("--mlp-updates", type=int, default=3000, help="MLP behaviour-cloning updates per seed")
    parser.add_argument("--residual-scale", type=float, default=0.1, help="residual action scale (ResiP: 0.1)")
    parser.add_argument("--eval-trials", type=int, default=1000, help="fresh trials per row and seed")
    parser.add_argument("--gmm-inits", type=int, default=1000,
                        help="uniform trials of base + residual the deployment GMM is fitted on (default 1000)")
    args = parser.parse_args(argv)
    resolve_backend_arg(parser, args)
    try:  # a registered task or a multi-part stage "ASSEMBLY/i"
        get_assembly(args.task)
    except ValueError as error:
        parser.error(str(error))
    if min(args.seeds, args.demos, args.bc_updates, args.mlp_updates, args.residual_updates, args.eval_trials,
           args.gmm_inits) < 1:
        parser.error("--seeds, --demos, --bc-updates, --mlp-updates, --residual-updates, --eval-trials and "
                     "--gmm-inits must be positive")
    if args.residual_updates % 10:
        parser.error("--residual-updates must be a multiple of 10 (the quick preset's chunk)")
    if not 0 < args.residual_scale <= 1:
        parser.error("--residual-scale must be in (0, 1]")
    if args.demos_file is not None and not args.demos_file.exists():
        parser.error(f"no demo file at {args.demos_file}")
    from refinery_jax.diffusion.policy import DiffusionConfig

    try:
        args.diffusion = DiffusionConfig(**({} if args.down_dims is None else {"down_dims": tuple(args.down_dims)}))
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    resume = prepare_run_dir(args.out, args.resume, args.overwrite, unfinished_markers=("config.json", DEMOS_FILE))
    out, started = args.out, time.time()
    out.mkdir(parents=True, exist_ok=True)

    import jax
    import numpy as np

    from refinery_jax.checkpoints import (config_fingerprint, latest_step, restore_checkpoint, save_checkpoint,
                                          template_from_shapes)
    from refinery_jax.compile_cache import enable_compile_cache
    from refinery_jax.diffusion import demos as demo_io
    from refinery_jax.diffusion.policy import train_bc
    from refinery_jax.envs.assembly_env import AssemblyEnv
    from refinery_jax.envs.samplers import env_uniform
    from refinery_jax.evaluation import make_evaluate, make_evaluate_actor
    from refinery_jax.imitation.mlp_bc import init_mlp_policy, mlp_actor, train_mlp_bc
    from refinery_jax.logging_utils import RunLog, ScalarLogger, progress_bar
    from refinery_jax.ppo import default_hyperparams, make_trainer
    from refinery_jax.ppo.presets import preset
    from refinery_jax.refinery.deployment import deployment_sampler, fit_deployment
    from refinery_jax.refinery.specialists import seed_keys, train_specialists
    from refinery_jax.refinery.stats import paired_difference, wilson_interval
    from refinery_jax.residual.bases import diffusion_base

    enable_compile_cache()
    dcfg, seeds = args.diffusion, list(range(args.seeds))
    spec = preset("quick", args.task, args.backend, args.embodiment)
    config = dataclasses.replace(spec.config, num_updates=args.residual_updates)
    env = AssemblyEnv(config.env)
    action_size = env.action_size
    # demos from --demos-file enter the fingerprint by content, not by path
    given_demos = None if args.demos_file is None else demo_io.load(args.demos_file, env)
    run_id = {"fingerprint": config_fingerprint((dcfg, config, args.residual_scale, args.demos, args.bc_updates,
                                                 None if given_demos is None else demo_io.digest(given_demos), seeds,
                                                 args.mlp_updates, MLP_HIDDEN)),
              "task": args.task, "seeds": seeds, "backend": args.backend, "embodiment": args.embodiment}
    log = RunLog(out)
    write_run_config(out, {**run_id, "args": {k: str(v) for k, v in vars(args).items()},
                           "diffusion": dataclasses.asdict(dcfg), "ppo": dataclasses.asdict(config),
                           "hparams": spec.hparams, "jax_version": jax.__version__,
                           "device": str(jax.devices()[0])}, resume)

    # demos
    demo_path = out / DEMOS_FILE
    if given_demos is not None:
        demos = given_demos
    elif demo_path.exists():
        demos = demo_io.load(demo_path, env)
    else:
        demos = demo_io.collect(env, args.demos, seed=0)
        demo_io.save(demos, demo_path)
    log(f"demos: {len(demos)} (teacher {demos.meta['teacher']}, success {demos.meta['teacher_success']:.3f} over "
        f"{demos.meta['attempts']} rollouts)")
    obs, chunks = demo_io.chunk_dataset(demos, dcfg.prediction)

    k_train, k_eval, _ = seed_keys(seeds)
    with ScalarLogger(out) as logger:
        # behaviour cloning, seed after seed (or the saved bases)
        base_dir = out / BASE_DIR
        if latest_step(base_dir) is None:
            t_bc, policies = time.time(), []
            for s in seeds:
                with progress_bar(args.bc_updates, f"BC seed {s}", "update") as bar:
                    def report(done, loss, s=s, bar=bar):
                        bar.update(done - bar.n)
                        logger.log(done, {f"bc/seed_{s}/loss": loss})
                    policy, _ = train_bc(dcfg, obs, chunks, jax.random.fold_in(k_train[s], 1), args.bc_updates,
                                         progress=report)
                policies.append(policy)
            stacked = jax.tree.map(lambda *x: jax.numpy.stack(x), *policies)
            save_checkpoint(base_dir, args.bc_updates, stacked, run_id)
            log(f"behaviour cloning: {args.bc_updates} updates per seed in {time.time() - t_bc:.0f} s")
        else:
            shapes = jax.eval_shape(lambda: jax.tree.map(lambda *x: jax.numpy.stack(x), *[
                base_template(dcfg, obs.shape[-1], action_size) for _ in seeds]))
            stacked, _ = restore_checkpoint(base_dir, template_from_shapes(shapes), expected_meta=run_id)
            log("behaviour cloning: loaded the saved base policies")

        # residual PPO on the frozen bases
        base = diffusion_base(dcfg, action_size, args.residual_scale)
        trainer = make_trainer(config, env, base=base)
        hparams = default_hyperparams(config, **spec.hparams)
        t_res = time.time()
        state = train_specialists(trainer, hparams, k_train, spec.chunk_updates, out / RESIDUAL_DIR, run_id, resume,
                                  log, logger=logger, tag="residual", base_params=stacked)
        residual_wall = time.time() - t_res

        # the comparison rows: PPO from scratch at the same env steps, and BC with an MLP
        plain = make_trainer(config, env)
        t_scratch = time.time()
        scratch = train_specialists(plain, hparams, k_train, spec.chunk_updates, out / SCRATCH_DIR,
                                    {**run_id, "row": "scratch"}, resume, log, logger=logger, tag="scratch")
        scratch_wall = time.time() - t_scratch
        mlp_dir = out / MLP_DIR
        pairs_obs = demos.observations.reshape(-1, demos.observations.shape[-1])
        pairs_act = demos.actions.reshape(-1, action_size)
        if latest_step(mlp_dir) is None:
            t_mlp = time.time()
            mlps = [train_mlp_bc(pairs_obs, pairs_act, jax.random.fold_in(k_train[s], 2), args.mlp_updates,
                                 MLP_HIDDEN)[0] for s in seeds]
            mlp_policies = jax.tree.map(lambda *x: jax.numpy.stack(x), *mlps)
            save_checkpoint(mlp_dir, args.mlp_updates, mlp_policies, run_id)
            log(f"MLP behaviour cloning: {args.mlp_updates} updates per seed in {time.time() - t_mlp:.0f} s")
        else:
            shapes = jax.eval_shape(lambda: jax.tree.map(lambda *x: jax.numpy.stack(x), *[
                init_mlp_policy(jax.random.key(0), env.observation_size, action_size, MLP_HIDDEN) for _ in seeds]))
            mlp_policies, _ = restore_checkpoint(mlp_dir, template_from_shapes(shapes), expected_meta=run_id)
            log("MLP behaviour cloning: loaded the saved policies")

    # paired evaluation: the same θ and episode keys for every row of a seed
    t_eval = time.time()
    split = jax.vmap(lambda k: jax.random.split(k, 2))(k_eval)
    inits = jax.vmap(lambda k: jax.vmap(env_uniform(env))(jax.random.split(k, args.eval_trials)))(split[:, 0])
    base_eval = make_evaluate_actor(env, base.actor)
    combined_eval = make_evaluate(env, trainer.model, obs_clip=config.obs_clip, base=base)  # base + residual
    scratch_eval = make_evaluate(env, plain.model, obs_clip=config.obs_clip)
    mlp_eval = make_evaluate_actor(env, mlp_actor(action_size, MLP_HIDDEN))
    residuals, scratch_policies = jax.vmap(trainer.policy)(state), jax.vmap(plain.policy)(scratch)
    rows = {"base": [], "base_residual": [], "base_residual_gmm": [], "ppo_scratch": [], "mlp_bc": []}
    gmm_successes = []
    for s in seeds:
        pick = lambda tree, s=s: jax.tree.map(lambda x: x[s], tree)  # noqa: E731
        trials = (inits[s], split[s, 1])  # the same θ and episode keys for every row of this seed
        rows["base"].append(np.asarray(base_eval(pick(stacked), *trials).success))
        rows["base_residual"].append(np.asarray(combined_eval(pick(residuals), *trials).success))
        rows["ppo_scratch"].append(np.asarray(scratch_eval(pick(scratch_policies), *trials).success))
        rows["mlp_bc"].append(np.asarray(mlp_eval(pick(mlp_policies), *trials).success))
        # Algorithm 2 on base + residual: a GMM of its successes on --gmm-inits uniform θ of their
        # own, then the fresh trials start where it chooses (same episode keys as the other rows)
        k_fit, k_draw = jax.random.split(jax.random.fold_in(k_eval[s], 7))
        model = fit_deployment(k_fit, combined_eval, pick(residuals), env.init_low, env.init_high, args.gmm_inits)
        chosen = jax.vmap(deployment_sampler(model))(jax.random.split(k_draw, args.eval_trials))
        rows["base_residual_gmm"].append(np.asarray(combined_eval(pick(residuals), chosen, split[s, 1]).success))
        gmm_successes.append(int(model.num_successes))
    eval_wall = time.time() - t_eval
    results = {**run_id, "eval_trials": args.eval_trials, "demos": demos.meta, "rows": {},
               "residual_env_steps": int(config.total_env_steps), "residual_wall_s": residual_wall,
               "scratch_wall_s": scratch_wall, "eval_wall_s": eval_wall, "wall_s": time.time() - started,
               "gmm": {"fit_trials": args.gmm_inits, "fit_successes_per_seed": gmm_successes}}
    lines = [f"{args.task}: {args.eval_trials} fresh trials per seed, seeds {seeds}",
             f"{'row':16s} {'success':>8s} {'95% CI':>16s} {'vs base':>8s} {'95% CI':>18s} {'McNemar p':>10s}"]
    for name, outcome in rows.items():
        outcome = np.stack(outcome)
        low, high = wilson_interval(int(outcome.sum()), outcome.size)
        entry = {"success": float(outcome.mean()), "per_seed": outcome.mean(axis=1).tolist(), "wilson95": [low, high]}
        diff = paired_difference(outcome, np.stack(rows["base"])) if name != "base" else None
        entry["vs_base"] = diff
        results["rows"][name] = entry
        vs = "" if diff is None else (f"{diff['difference']:+8.3f} [{diff['ci95_low']:+.3f}, {diff['ci95_high']:+.3f}] "
                                      f"{diff['mcnemar_p']:10.3g}")
        lines.append(f"{name:16s} {entry['success']:8.3f} [{low:.3f}, {high:.3f}] {vs}")
    results["figure"] = plot_training(out / "metrics.jsonl", out / "figures" / "training.png", args.task)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.txt").write_text("\n".join(lines) + "\n")
    log("\n" + "\n".join(lines))
    return results


def plot_training(metrics: pathlib.Path, path: pathlib.Path, task: str) -> str:
    """Training success (episodes of each 10-update chunk, mean over seeds) against environment
    steps, for the residual and the from-scratch specialist."""
    from refinery_jax.refinery.plots import _pyplot

    curves = {"residual": {}, "scratch": {}}  # step -> success (a resumed run logs its chunks again: last wins)
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        for tag, curve in curves.items():
            if row.get(f"{tag}/chunk_success") is not None:
                curve[row["step"]] = row[f"{tag}/chunk_success"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for tag, label in (("residual", "diffusion base + residual PPO"), ("scratch", "PPO from scratch")):
        steps = sorted(curves[tag])
        ax.plot(steps, [curves[tag][k] for k in steps], label=label)
    ax.set(xlabel="environment steps", ylabel="training success", title=task, ylim=(0, 1))
    ax.legend()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def base_template(config, obs_size: int, action_size: int):
    """One seed's `DiffusionPolicy` of the right shapes (to restore the saved bases)."""
    import jax
    import jax.numpy as jnp

    from refinery_jax.diffusion.policy import DiffusionPolicy, Normalizer, init_bc

    params = init_bc(config, jax.random.key(0), obs_size, action_size, 1).ema
    norm = lambda d: Normalizer(low=jnp.zeros(d), high=jnp.zeros(d))  # noqa: E731
    return DiffusionPolicy(params=params, obs_norm=norm(obs_size), act_norm=norm(action_size))


if __name__ == "__main__":
    main()
