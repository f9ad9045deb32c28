"""Measure the sim-to-"real" gap: a simulation-trained specialist, zero-shot, in each gap setting.

    python experiments/gap_zero_shot.py --run runs/square_peg --trials 1000 --out runs/gap_square_peg

--run: a train_specialist.py or refinery.py run (its specialist, seed --seed), trained in
the simulation. Each row evaluates it deterministically on the same --trials θ drawn
uniformly from the task's box, with the same episode keys (so the rows are paired: a row
differs from "sim" only by its gap), in the settings of `envs.gap`, each difference alone
and all together:

    sim          no difference
    perception   goal seen 2 mm off (random direction) and turned 3 degrees, per episode
    friction     contact friction 1.0 (simulation: 0.5)
    clearance    the task's tighter variant (--tight-task, default <task>_tight)
    gain         actions scaled by 0.7
    delay1/2     commands executed 1 / 2 control steps late (67 / 133 ms at 15 Hz)
    all          perception, friction, clearance, gain and a 1-step delay together

Writes config.json, results.json (per row: success, Wilson 95 % interval, the paired
difference to "sim" with its interval and McNemar p, mean episode length) and log.txt to
--out (never overwritten). The settings are `envs.gap.named_gaps` (their force/torque noise
does not touch a base that does not read force/torque).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--run", required=True, type=pathlib.Path, help="train_specialist.py or refinery.py run")
    parser.add_argument("--seed", type=int, default=0, help="which of the run's specialists (default 0)")
    parser.add_argument("--trials", type=int, default=1000, help="paired trials per row (default 1000)")
    parser.add_argument("--tight-task", default=None, help="the clearance row's task (default <task>_tight)")
    parser.add_argument("--draw-seed", type=int, default=0, help="seed of the θ and episode keys")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; nothing is overwritten")
    if args.trials < 1:
        parser.error("--trials must be positive")
    from refinery_jax.refinery.specialists import specialists_option

    args.state = specialists_option(parser, "--run", args.run, range(args.seed + 1))
    task = json.loads((args.run / "config.json").read_text())["task"]
    args.tight_task = args.tight_task or f"{task}_tight"
    from refinery_jax.envs.gap import named_gaps

    try:
        args.settings = named_gaps(args.tight_task)
    except ValueError as error:
        parser.error(f"--tight-task: {error}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import dataclasses

    import jax
    import numpy as np

    from refinery_jax.compile_cache import enable_compile_cache
    from refinery_jax.envs.gap import GapEnv
    from refinery_jax.envs.samplers import env_uniform
    from refinery_jax.evaluation.evaluate import make_evaluate_actor
    from refinery_jax.logging_utils import RunLog
    from refinery_jax.ppo.networks import policy_actor
    from refinery_jax.refinery.specialists import specialist_policy
    from refinery_jax.refinery.stats import paired_difference, wilson_interval
    from refinery_jax.run_dirs import write_run_config

    enable_compile_cache()
    args.out.mkdir(parents=True)
    progress = RunLog(args.out)
    trainer, policy = specialist_policy(args.run, args.state, args.seed)
    sim = trainer.env.config
    write_run_config(args.out, {"run": str(args.run.resolve()), "seed": args.seed, "task": sim.task,
                                "trials": args.trials, "draw_seed": args.draw_seed, "backend": sim.backend,
                                "settings": {k: dataclasses.asdict(g) for k, g in args.settings.items()},
                                "jax_version": jax.__version__}, resume=False)
    k_inits, k_episodes = jax.random.split(jax.random.key(args.draw_seed))
    inits = jax.vmap(env_uniform(trainer.env))(jax.random.split(k_inits, args.trials))
    actor = policy_actor(trainer.model, trainer.env.observation_size, trainer.config.obs_clip)
    rows, reference = {}, None
    for name, gap in args.settings.items():
        t0 = time.time()
        evaluate = make_evaluate_actor(GapEnv(sim, gap), actor)
        result = jax.device_get(evaluate((policy, np.asarray(True)), inits, k_episodes))
        success = np.asarray(result.success, bool)
        reference = success if reference is None else reference
        low, high = wilson_interval(int(success.sum()), len(success))
        rows[name] = {"success": float(success.mean()), "ci95": [low, high],
                      "mean_length": float(np.mean(result.lengths)), "wall_s": time.time() - t0,
                      "vs_sim": paired_difference(success[None], reference[None])}
        d = rows[name]["vs_sim"]
        progress(f"{name:<11} success {success.mean():.3f} [{low:.3f}, {high:.3f}]  vs sim {d['difference']:+.3f} "
                 f"[{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}] McNemar p {d['mcnemar_p']:.2g}  ({time.time() - t0:.0f} s)")
    (args.out / "results.json").write_text(json.dumps({"task": sim.task, "trials": args.trials, "rows": rows},
                                                      indent=2))
    progress(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
