"""SPARR (issue 20): adapt a simulation-trained specialist to a "real" setting with an off-policy
residual, learned on one robot, one episode after another, in a budget of robot time.

    python experiments/train_specialist.py --task square_peg --out runs/square_peg
    python experiments/sparr.py --base-run runs/square_peg --gap friction --out runs/sparr_friction

--base-run: a train_specialist.py or refinery.py run (its specialist --base-seed is the frozen
base, trained in simulation). --gap: a setting of `envs.gap.named_gaps` (the "real" robot).
Rows, each for --seeds seeds (seed s: the same demonstrations, from the base's episodes with
pseudo-residuals, for every row; every row and seed is evaluated on the same fresh starts
and episode keys, so rows are paired):

    base             the base alone, zero-shot
    sparr            base + residual (RLPD, demonstration growth, reads the base action)
    no_growth        without demonstration growth
    no_base_action   the residual does not read the base action
    symmetric        the residual also reads the goal pose (as the base sees it)
    ppo_finetune     the base itself fine-tuned by PPO in the gap setting, the same number of
                     robot steps spread over 16 parallel environments (PPO cannot learn from
                     one), with the simulation's dense reward: a real cell could not run it

Each learning row runs --budget-steps robot steps (default 27,000: 30 minutes at 15 Hz).
Presets: quick (2 CPU cores: critics 128x128, batch 128, update-to-data ratio 4; about real
time here) and paper (RLPD's: 256x256, batch 256, UTD 20). Success is reaching the goal at
any step of an episode (the robot stops there), cycle time the steps it took.

Writes to --out: config.json, log.txt, records/<row>_seed<s>.json (each finished row and
seed: evaluation outcomes, training episodes, demonstrations; the base's: records/base.json,
one evaluation, it acts deterministically; --resume skips them),
tensorboard/ + metrics.jsonl, results.json (per row: success mean and 95 % interval over
seeds, cycle time, paired difference to the base) and learning_curve.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROWS = ("base", "sparr", "no_growth", "no_base_action", "symmetric", "ppo_finetune")
RESIDUAL_ROWS = ("sparr", "no_growth", "no_base_action", "symmetric")
PPO_ENVS = 16  # the PPO row's parallel environments


def row_config(row: str, preset: str, budget_steps: int):
    """The SPARRConfig of a learning row."""
    from refinery_jax.offpolicy.sac import SACConfig
    from refinery_jax.residual.sparr import SPARRConfig

    sac = SACConfig() if preset == "paper" else SACConfig(hidden=(128, 128), batch_size=128, utd=4)
    changes = {"sparr": {}, "no_growth": {"demo_growth": False}, "no_base_action": {"sees_base_action": False},
               "symmetric": {"sees_goal": True}}[row]
    return SPARRConfig(sac=sac, budget_steps=budget_steps, **changes)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--base-run", required=True, type=pathlib.Path, help="the simulation specialist's run")
    parser.add_argument("--base-seed", type=int, default=0, help="which of its specialists (default 0)")
    parser.add_argument("--gap", default="friction", help="gap setting of envs.gap.named_gaps (default friction)")
    parser.add_argument("--tight-task", default=None,
                        help="the clearance and all settings' task (default <task>_tight)")
    parser.add_argument("--preset", choices=("quick", "paper"), default="quick")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..S-1 (default 3)")
    parser.add_argument("--budget-steps", type=int, default=27_000, help="robot steps per learning run (15 Hz)")
    parser.add_argument("--eval-episodes", type=int, default=200, help="fresh evaluation episodes per row and seed")
    parser.add_argument("--eval-seed", type=int, default=1000, help="seed of the evaluation starts and keys")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    group.add_argument("--overwrite", action="store_true", help="move an existing --out aside and start over")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.eval_episodes < 1:
        parser.error("--seeds and --eval-episodes must be positive")
    try:
        configs = {r: row_config(r, args.preset, args.budget_steps) for r in ("sparr", *args.rows) if r in RESIDUAL_ROWS}
    except ValueError as error:
        parser.error(str(error))
    from refinery_jax.refinery.specialists import specialists_option

    args.state = specialists_option(parser, "--base-run", args.base_run, range(args.base_seed + 1))
    task = json.loads((args.base_run / "config.json").read_text())["task"]
    from refinery_jax.envs.gap import named_gaps

    needs_tight = args.gap in ("clearance", "all")  # only these settings use the tighter task
    try:
        gaps = named_gaps(args.tight_task or f"{task}_tight" if needs_tight else None)
    except ValueError as error:
        parser.error(f"--gap {args.gap} needs a tighter variant of {task}: {error} (pass --tight-task)")
    if args.gap not in gaps:
        parser.error(f"--gap {args.gap!r}: choose one of {', '.join(gaps)}")
    args.gap_config, args.configs = gaps[args.gap], configs
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from refinery_jax.run_dirs import prepare_run_dir, write_run_config

    resume = prepare_run_dir(args.out, args.resume, args.overwrite, unfinished_markers=("config.json",))
    import jax
    import numpy as np

    from refinery_jax.checkpoints import config_fingerprint
    from refinery_jax.compile_cache import enable_compile_cache
    from refinery_jax.envs.gap import GapEnv
    from refinery_jax.envs.samplers import env_uniform
    from refinery_jax.logging_utils import RunLog, ScalarLogger
    from refinery_jax.refinery.specialists import specialist_policy
    from refinery_jax.refinery.stats import paired_difference, summarize_seeds
    from refinery_jax.residual.sparr import Robot, specialist_base

    enable_compile_cache()
    out = args.out
    (out / "records").mkdir(parents=True, exist_ok=True)
    progress = RunLog(out)
    trainer, policy = specialist_policy(args.base_run, args.state, args.base_seed)
    env = GapEnv(trainer.env.config, args.gap_config)
    base = specialist_base(trainer.model, policy, trainer.config.obs_clip)
    settings = {"base_run": str(args.base_run.resolve()), "base_seed": args.base_seed, "task": env.config.task,
                "gap": args.gap, "gap_config": dataclasses.asdict(args.gap_config), "preset": args.preset,
                "rows": args.rows, "seeds": args.seeds, "budget_steps": args.budget_steps,
                "eval_episodes": args.eval_episodes, "eval_seed": args.eval_seed,
                "configs": {r: dataclasses.asdict(c) for r, c in args.configs.items()}}
    write_run_config(out, {**settings, "fingerprint": config_fingerprint(settings), "backend": env.backend_name,
                           "jax_version": jax.__version__}, resume)
    k_inits, k_keys = jax.random.split(jax.random.key(args.eval_seed))
    eval_inits = jax.vmap(env_uniform(env))(jax.random.split(k_inits, args.eval_episodes))
    eval_keys = jax.random.split(k_keys, args.eval_episodes)
    progress(f"SPARR | {env.config.task} | gap {args.gap} | preset {args.preset} | rows {args.rows} | "
             f"{args.seeds} seeds x {args.budget_steps:,} robot steps | evaluation {args.eval_episodes} episodes")

    records = {}
    with ScalarLogger(out) as logger:
        for row in args.rows:
            # the base acts deterministically: one evaluation, whatever the seed
            seeds = [None] if row == "base" else list(range(args.seeds))
            todo = [s for s in seeds if not (out / "records" / record_name(row, s)).exists()]
            if todo and row != "ppo_finetune":  # built and compiled once per row, shared by its seeds
                robot = Robot(env, base, args.configs.get(row, args.configs["sparr"]), env_uniform(env))
                programs = jax.jit(robot.run_chunk), jax.jit(robot.evaluate)
            for seed in seeds:
                path = out / "records" / record_name(row, seed)
                if seed not in todo:
                    records[row, seed] = json.loads(path.read_text())
                    continue
                t0 = time.time()
                if row == "base":
                    success, cycle = jax.device_get(programs[1](None, eval_inits, eval_keys, None))
                    record = {"success": success.tolist(), "cycle_steps": cycle.tolist()}
                elif row == "ppo_finetune":
                    record = ppo_finetune(args, env, seed, eval_inits, eval_keys, progress, logger)
                else:
                    record = learn(robot, programs, row, seed, eval_inits, eval_keys, progress, logger)
                record["wall_s"] = time.time() - t0
                path.write_text(json.dumps(record))
                records[row, seed] = record
                s = np.asarray(record["success"], bool)
                progress(f"{row}{'' if seed is None else f' seed {seed}'}: evaluation success {s.mean():.3f}, cycle "
                         f"{np.mean(np.asarray(record['cycle_steps'])[s]) if s.any() else float('nan'):.1f} steps "
                         f"({record['wall_s']:.0f} s)")

    rows = {}
    for row in args.rows:
        seeds = [None] if row == "base" else list(range(args.seeds))
        success = np.asarray([records[row, s]["success"] for s in seeds], bool)
        cycle = np.asarray([records[row, s]["cycle_steps"] for s in seeds], float)
        rows[row] = {**summarize_seeds(success),  # the base: a Wilson interval over its episodes
                     "cycle_steps_of_successes": float(cycle[success].mean()) if success.any() else None,
                     "cycle_s_of_successes": float(cycle[success].mean() / env.config.control_hz)
                     if success.any() else None,
                     "wall_s": [records[row, s]["wall_s"] for s in seeds]}
        if row != "base" and "base" in args.rows:  # every seed against the same base episodes
            rows[row]["vs_base"] = paired_difference(
                success, np.broadcast_to(np.asarray(records["base", None]["success"], bool), success.shape))
        if row in RESIDUAL_ROWS:
            rows[row]["demos_tried"] = [records[row, s]["demos_tried"] for s in seeds]
            rows[row]["demo_episodes_at_end"] = [records[row, s]["demo_episodes_at_end"] for s in seeds]
    results = {**settings, "rows": rows}
    figure = plot_learning(records, args, env.config.control_hz, out / "learning_curve.png")
    results["figure"] = figure
    (out / "results.json").write_text(json.dumps(results, indent=2))
    for row, r in rows.items():
        progress(f"{row:<15} success {r['success_mean']:.3f} [{r['ci95_low']:.3f}, {r['ci95_high']:.3f}]  "
                 f"cycle {r['cycle_s_of_successes'] or float('nan'):.2f} s")
    progress(f"wrote {out / 'results.json'}")
    return results


def record_name(row: str, seed) -> str:
    return f"{row}.json" if seed is None else f"{row}_seed{seed}.json"


def learn(robot, programs, row: str, seed: int, eval_inits, eval_keys, progress, logger) -> dict:
    """One learning run: demonstrations, the robot's budget in chunks, then the evaluation
    (`programs`: the robot's jitted run_chunk and evaluate)."""
    import jax
    import numpy as np

    from refinery_jax.logging_utils import progress_bar
    from refinery_jax.residual.sparr import Normalizer

    k_demos, k_run = jax.random.split(jax.random.key(seed))
    t0 = time.time()
    demos, lengths, tried = robot.collect_demos(k_demos)
    progress(f"{row} seed {seed}: {len(lengths)} demonstrations from {tried} base episodes "
             f"(median {np.median(lengths):.0f} steps, {time.time() - t0:.0f} s)")
    normalizer = Normalizer.of(demos, lengths)
    state = robot.start(k_run, demos, lengths)
    run_chunk, evaluate = programs
    c = robot.config
    with progress_bar(c.budget_steps, f"{row} seed {seed}", unit="step") as bar:
        for _ in range(c.budget_steps // c.chunk_steps):
            state, metrics = run_chunk(state, normalizer)
            n = int(state.episodes)
            recent = np.asarray(state.outcomes[max(0, n - 20): n])
            scalars = {f"{row}/seed{seed}/{k}": float(v) for k, v in metrics.items()}
            if len(recent):
                scalars[f"{row}/seed{seed}/success_last20"] = float(recent[:, 0].mean())
            logger.log(int(state.steps), scalars)
            bar.update(c.chunk_steps)
            bar.set_postfix(episodes=n, success_last20=f"{recent[:, 0].mean():.2f}" if len(recent) else "-")
    success, cycle = jax.device_get(evaluate(state.sac.actor, eval_inits, eval_keys, normalizer))
    n = int(state.episodes)
    return {"success": success.tolist(), "cycle_steps": cycle.tolist(),
            "training_outcomes": np.asarray(state.outcomes[:n]).tolist(), "demos_tried": tried,
            "demo_lengths": lengths.tolist(), "demo_episodes_at_end": int(state.demo_episodes)}


def ppo_finetune(args, env, seed: int, eval_inits, eval_keys, progress, logger) -> dict:
    """The ppo_finetune row: the base's own network trained on by PPO (fresh optimiser) in the gap
    environment for the budget's robot steps over `PPO_ENVS` environments, then evaluated alone as
    the base row is."""
    import jax

    from refinery_jax.envs.samplers import env_uniform
    from refinery_jax.refinery.specialists import build_trainer, saved_preset, seed_keys, train_specialists
    from refinery_jax.residual.sparr import Robot, specialist_base

    spec = saved_preset(json.loads((args.base_run / "config.json").read_text()))
    updates = args.budget_steps // (PPO_ENVS * spec.config.num_steps)  # >= 1: budgets are multiples of 750
    spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config, num_envs=PPO_ENVS, num_updates=updates))
    trainer, hparams = build_trainer(spec, progress, env=env)
    base = jax.tree.map(lambda x: x[args.base_seed: args.base_seed + 1], args.state)
    tuned = train_specialists(trainer, hparams, seed_keys([seed])[0], chunk_updates=1, progress=progress,
                              warm_start=base, logger=logger, tag=f"ppo_finetune/seed{seed}")
    policy = jax.tree.map(lambda x: x[0], trainer.policy(tuned))
    robot = Robot(env, specialist_base(trainer.model, policy, trainer.config.obs_clip), args.configs["sparr"],
                  env_uniform(env))
    success, cycle = jax.device_get(jax.jit(robot.evaluate)(None, eval_inits, eval_keys, None))
    return {"success": success.tolist(), "cycle_steps": cycle.tolist(), "ppo_updates": updates,
            "robot_steps": int(updates * trainer.config.num_envs * trainer.config.num_steps),
            "ppo_envs": PPO_ENVS}


def plot_learning(records: dict, args, control_hz: float, path: pathlib.Path):
    """Training-episode success (rolling 20 episodes) against robot minutes, per learning row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in args.rows if r in RESIDUAL_ROWS]  # (PPO's curve: TensorBoard, ppo_finetune/)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        for seed in range(args.seeds):
            outcomes = np.asarray(records[row, seed]["training_outcomes"]).reshape(-1, 2)
            if len(outcomes) < 20:
                continue
            minutes = np.cumsum(outcomes[:, 1]) / control_hz / 60.0
            rolling = np.convolve(outcomes[:, 0], np.ones(20) / 20, mode="valid")
            ax.plot(minutes[19:], rolling, color=f"C{rows.index(row)}", alpha=0.8,
                    label=row if seed == 0 else None)
    if "base" in args.rows:
        ax.axhline(np.mean(records["base", None]["success"]), color="k", ls="--", label="base (evaluation)")
    ax.set_xlabel("robot time (min)")
    ax.set_ylabel("training success (last 20 episodes)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


if __name__ == "__main__":
    main()
