"""Demonstrations without humans: successful episodes of a teacher, for a diffusion base policy.

    python experiments/collect_demos.py --task square_peg --demos 300 --out runs/demos/square_peg.npz

Rolls out the teacher (the privileged scripted insertion, which reads the true goal; or,
with --teacher-run, a trained specialist's mean action: a train_specialist.py or
refinery.py run for the same task) from uniform θ of the task's box in batches, recording the observation the base policy will
see (the noisy goal, as in deployment) before each action and the action, and keeps only
successful episodes until --demos are collected. Writes --out (.npz: observations,
actions, θ, episode keys, meta) and --out with .json (config, seed, backend, teacher
success, rollouts, wall time); prints the summary as JSON. An existing file is never
overwritten. Load with `refinery_jax.diffusion.demos.load(path, env)`, which refuses
demos of another task or observation layout.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from refinery_jax.assets.registry import DEFAULT_TASK, get_assembly, task_names  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    from refinery_jax.refinery.presets import add_backend_argument, resolve_backend_arg

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--task", default=DEFAULT_TASK, help=f"registered task (default {DEFAULT_TASK}): "
                        + ", ".join(task_names()) + "; or a multi-part stage ASSEMBLY/i")
    parser.add_argument("--embodiment", default="floating_hand", help="floating_hand (default) or franka")
    add_backend_argument(parser)
    parser.add_argument("--teacher-run", type=pathlib.Path, default=None,
                        help="a run directory whose specialist demonstrates (default: the scripted insertion)")
    parser.add_argument("--teacher-seed", type=int, default=0, help="which of its specialists (default 0)")
    parser.add_argument("--demos", type=int, default=300, help="successful episodes to keep (default 300)")
    parser.add_argument("--batch", type=int, default=256, help="episodes rolled out at once (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=pathlib.Path, help="the .npz file to write")
    args = parser.parse_args(argv)
    try:  # a registered task or a multi-part stage "ASSEMBLY/i"
        get_assembly(args.task)
    except ValueError as error:
        parser.error(str(error))
    if args.demos < 1 or args.batch < 1:
        parser.error("--demos and --batch must be positive")
    if args.out.suffix != ".npz":
        parser.error(f"--out must end in .npz, got {args.out}")
    for path in (args.out, args.out.with_suffix(".json")):
        if path.exists():
            parser.error(f"{path} exists; demos are not overwritten")
    resolve_backend_arg(parser, args)
    if args.teacher_run is not None:
        from refinery_jax.refinery.specialists import specialists_option

        # checks task, seeds, observation sizes and completeness before anything compiles
        args.teacher_state = specialists_option(parser, "--teacher-run", args.teacher_run,
                                                range(args.teacher_seed + 1), task=args.task)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from refinery_jax.compile_cache import enable_compile_cache
    from refinery_jax.diffusion import demos as demo_io
    from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig

    enable_compile_cache()
    env = AssemblyEnv(EnvConfig(task=args.task, embodiment=args.embodiment, backend=args.backend))
    teacher = None
    if args.teacher_run is not None:
        from refinery_jax.ppo.networks import policy_actor
        from refinery_jax.refinery.specialists import specialist_policy

        trainer, policy = specialist_policy(args.teacher_run, args.teacher_state, args.teacher_seed, env)
        teacher = demo_io.Teacher(name=f"specialist {args.teacher_run} seed {args.teacher_seed}",
                                  actor=policy_actor(trainer.model, env.observation_size, trainer.config.obs_clip),
                                  params=(policy, True))  # its mean action
    started = time.time()
    demos = demo_io.collect(env, args.demos, seed=args.seed, teacher=teacher, batch=args.batch)
    demo_io.save(demos, args.out)
    summary = dict(demos.meta, backend=args.backend, batch=args.batch, wall_s=round(time.time() - started, 1),
                   file=str(args.out))
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
