"""rl_games checkpoints in and out (needs the interop extra: pip install -e '.[interop]').

Evaluate an Isaac Lab AutoMate policy (rl_games checkpoint + its yaml) in the project's
environment, through AutoMate's observation and action conventions (`interop.isaac_lab`):

    python experiments/rl_games_interop.py evaluate --checkpoint runs/automate/nn/plug.pth \
        --config rl_games_ppo_cfg.yaml --task square_peg --embodiment franka --out runs/automate_eval

Export a project specialist (train_specialist.py or refinery.py run) as an rl_games
checkpoint and the yaml that rebuilds it; its observation is the project's 31 values
(`envs.assembly_env.POLICY_OBS`) and its action the project's (README, Interop):

    python experiments/rl_games_interop.py export --run runs/square_peg --seed 0 --out runs/square_peg_rl_games

evaluate writes config.json and results.json (success on --trials fresh uniform θ, with a
Wilson 95 % interval) to --out; export writes specialist.pth, specialist.yaml and
export.json. Nothing that exists is overwritten.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def parse_args(argv=None) -> argparse.Namespace:
    from refinery_jax.refinery.presets import add_backend_argument, resolve_backend_arg

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    ev = commands.add_parser("evaluate", help="an rl_games AutoMate policy in the project's environment")
    ev.add_argument("--checkpoint", required=True, type=pathlib.Path, help="rl_games .pth")
    ev.add_argument("--config", required=True, type=pathlib.Path, help="the rl_games yaml it was trained with")
    ev.add_argument("--task", default="square_peg", help="registered task or stage ASSEMBLY/i (default square_peg)")
    ev.add_argument("--embodiment", default="franka", help="franka (default; AutoMate's robot) or floating_hand")
    ev.add_argument("--quat-order", default="wxyz", choices=("wxyz", "xyzw"),
                    help="the policy's quaternion order: wxyz (Isaac Lab 2.x, default) or xyzw (newer releases)")
    ev.add_argument("--trials", type=int, default=1000, help="fresh uniform θ (default 1000)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", required=True, type=pathlib.Path, help="run directory (must not exist)")
    add_backend_argument(ev)
    ex = commands.add_parser("export", help="a project specialist as an rl_games checkpoint + yaml")
    ex.add_argument("--run", required=True, type=pathlib.Path, help="train_specialist.py or refinery.py run")
    ex.add_argument("--seed", type=int, default=0, help="which of the run's seeds (default 0)")
    ex.add_argument("--out", required=True, type=pathlib.Path, help="output directory (must not exist)")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; nothing is overwritten")
    if args.command == "evaluate":
        for path in (args.checkpoint, args.config):
            if not path.exists():
                parser.error(f"no file at {path}")
        if args.trials < 1:
            parser.error("--trials must be positive")
        resolve_backend_arg(parser, args)
        from refinery_jax.assets.registry import get_assembly
        from refinery_jax.interop.rl_games import RlGamesNetwork, load_yaml

        try:
            get_assembly(args.task)
            args.network = RlGamesNetwork.from_yaml(load_yaml(args.config))  # before torch or any compile
        except (ValueError, KeyError) as error:
            parser.error(str(error))
    else:
        from refinery_jax.refinery.specialists import specialists_option

        args.state = specialists_option(parser, "--run", args.run, range(args.seed + 1))
    try:
        import torch  # noqa: F401
    except ImportError:
        parser.error("this needs torch and rl_games: pip install -e '.[interop]'")
    return args


def evaluate(args) -> dict:
    import jax
    import numpy as np

    from refinery_jax.compile_cache import enable_compile_cache
    from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig
    from refinery_jax.envs.samplers import env_uniform
    from refinery_jax.evaluation import make_evaluate_actor
    from refinery_jax.interop.isaac_lab import AUTOMATE_OBS_SIZE, AutoMateConventions, automate_actor
    from refinery_jax.interop.rl_games import load_checkpoint
    from refinery_jax.ppo.networks import policy_actor
    from refinery_jax.refinery.stats import wilson_interval
    from refinery_jax.run_dirs import write_run_config

    imported = load_checkpoint(args.checkpoint, args.config)
    if (imported.obs_size, imported.action_size) != (AUTOMATE_OBS_SIZE, 6):
        sys.exit(f"{args.checkpoint}: observes {imported.obs_size} values and acts in {imported.action_size}; "
                 f"AutoMate's policy observes {AUTOMATE_OBS_SIZE} and acts in 6")
    enable_compile_cache()
    env = AssemblyEnv(EnvConfig(task=args.task, embodiment=args.embodiment, backend=args.backend))
    args.out.mkdir(parents=True)
    write_run_config(args.out, {"command": "evaluate", "seed": args.seed, "backend": args.backend,
                                "args": {k: str(v) for k, v in vars(args).items() if k != "network"}}, False)
    actor = automate_actor(policy_actor(imported.model, imported.obs_size),
                           AutoMateConventions(quat_order=args.quat_order), env.config.control)
    k_inits, k_eval = jax.random.split(jax.random.key(args.seed))
    inits = jax.vmap(env_uniform(env))(jax.random.split(k_inits, args.trials))
    result = make_evaluate_actor(env, actor)((imported.policy, True), inits, k_eval)
    success = np.asarray(result.success)
    low, high = wilson_interval(int(success.sum()), success.size)
    results = {"success": float(success.mean()), "wilson95": [low, high], "trials": int(success.size),
               "task": args.task, "embodiment": args.embodiment, "network": vars(imported.network)}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results))
    return results


def export(args) -> dict:
    from refinery_jax.interop.rl_games import export_checkpoint
    from refinery_jax.refinery.specialists import specialist_policy

    trainer, policy = specialist_policy(args.run, args.state, args.seed)
    env = trainer.env
    args.out.mkdir(parents=True)
    export_checkpoint(trainer.model, policy, env.observation_size, args.out / "specialist.pth",
                      args.out / "specialist.yaml", name=f"refinery_jax_{env.config.task.replace('/', '_')}")
    summary = {"run": str(args.run), "seed": args.seed, "task": env.config.task, "observation_size": env.observation_size,
               "action_size": env.action_size, "files": ["specialist.pth", "specialist.yaml"]}
    (args.out / "export.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


def main(argv=None) -> dict:
    args = parse_args(argv)
    return evaluate(args) if args.command == "evaluate" else export(args)


if __name__ == "__main__":
    main()
