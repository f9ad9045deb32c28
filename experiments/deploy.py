"""Run a specialist on a robot, behind the safety envelope (needs the interop extra).

    python experiments/deploy.py --run runs/refinery_quick --robot franky-sim --trials 5 --out runs/deploy_sim

--run: a train_specialist.py or refinery.py run (its specialist, seed --seed). --robot:
"franky-sim" starts franky-sim's simulated FR3 in this process (libfranka's protocol on a
loopback address, no hardware) and connects to it; anything else is a robot's FCI
hostname (real-time kernel required). --config: a JSON file of `robot.deploy.DeployConfig`
fields; at least the socket pose ("socket_pos", m in the robot's base frame; "socket_yaw");
without it, a socket 25 cm below franky-sim's home pose. --starts gmm draws the starts from
the deployment GMM of a refinery.py --run (Algorithm 2; "finetuned" or --gmm baseline);
uniform (default) from the task's θ box.

Each trial moves the fingertip to goal + θ, runs one episode at 15 Hz through the envelope
(workspace box around the goal, step, speed, force and watchdog limits) and scores the end
pose. Writes config.json, trials.jsonl (per trial: θ, success, errors, limit hits, every
step's pose, force, action and target) and results.json to --out; prints each trial's
result. Nothing that exists is overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

FRANKY_SIM = "franky-sim"
SIM_SOCKET = {"socket_pos": [0.554, 0.0, 0.27]}  # franky-sim's home fingertip is at z 0.521


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--run", required=True, type=pathlib.Path, help="train_specialist.py or refinery.py run")
    parser.add_argument("--seed", type=int, default=0, help="which of the run's specialists (default 0)")
    parser.add_argument("--robot", default=FRANKY_SIM, help="franky-sim (default) or the robot's FCI hostname")
    parser.add_argument("--config", type=pathlib.Path, default=None, help="DeployConfig fields as JSON")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--starts", choices=("uniform", "gmm"), default="uniform")
    parser.add_argument("--gmm", choices=("finetuned", "baseline"), default="finetuned",
                        help="which of a refinery.py run's deployment GMMs (--starts gmm)")
    parser.add_argument("--draw-seed", type=int, default=0, help="seed of the start draws")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; nothing is overwritten")
    if args.trials < 1:
        parser.error("--trials must be positive")
    from refinery_jax.robot.deploy import DeployConfig

    fields = SIM_SOCKET if args.config is None else json.loads(args.config.read_text())
    try:
        args.deploy = DeployConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    except (TypeError, ValueError) as error:
        parser.error(f"--config: {error}")
    if args.starts == "gmm" and not (args.run / "arrays.npz").exists():
        parser.error("--starts gmm needs a refinery.py run (its arrays.npz holds the deployment GMM)")
    from refinery_jax.refinery.specialists import specialists_option

    args.state = specialists_option(parser, "--run", args.run, range(args.seed + 1))
    try:
        import franky  # noqa: F401
    except ImportError:
        parser.error("the robot backend needs franky: pip install -e '.[interop]'")
    return args


def draw_starts(args, env):
    import jax
    import numpy as np

    from refinery_jax.envs.samplers import env_uniform

    key = jax.random.key(args.draw_seed)
    if args.starts == "uniform":
        return np.asarray(jax.vmap(env_uniform(env))(jax.random.split(key, args.trials)))
    from refinery_jax.refinery.results_io import load_run
    from refinery_jax.success_models import DeploymentConfig
    from refinery_jax.success_models.gmm import make_deployment_sampler

    run = load_run(args.run)
    d = run.low.shape[0]
    sample = make_deployment_sampler(run.gmm(args.gmm, args.seed), np.zeros(d, np.float32), np.ones(d, np.float32),
                                     DeploymentConfig())
    units = np.asarray(jax.vmap(sample)(jax.random.split(key, args.trials)))
    return run.low + units * (run.high - run.low)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax
    import numpy as np

    from refinery_jax.interop.franky import FrankyBackend
    from refinery_jax.ppo.networks import initial_carry
    from refinery_jax.refinery.specialists import specialist_policy
    from refinery_jax.robot.deploy import make_policy_step, run_trial, safety_limits
    from refinery_jax.robot.safety import SafetyEnvelope
    from refinery_jax.run_dirs import write_run_config

    trainer, policy = specialist_policy(args.run, args.state, args.seed)
    env = trainer.env
    if env.config.embodiment != "franka":
        print(f"note: the specialist was trained on the {env.config.embodiment}; its joint observations are not "
              "the Franka's", flush=True)
    starts = draw_starts(args, env)
    limits = safety_limits(env, args.deploy)
    args.out.mkdir(parents=True)
    write_run_config(args.out, {"run": str(args.run), "seed": args.seed, "task": env.config.task, "robot": args.robot,
                                "starts": args.starts, "draw_seed": args.draw_seed, "backend": "robot",
                                "deploy": dataclasses.asdict(args.deploy), "limits": dataclasses.asdict(limits)},
                     False)
    step = make_policy_step(env, trainer.model, trainer.config.obs_clip)
    # compile before connecting: a first call inside the loop would stall past the watchdog
    zeros = np.zeros(env.observation_size, np.float32)
    jax.block_until_ready(step(policy, initial_carry(trainer.model, (), env.observation_size), zeros, zeros[:6],
                               zeros[:3], np.array([1.0, 0, 0, 0], np.float32), zeros[:3]))

    server = None
    if args.robot == FRANKY_SIM:  # franky-sim's FR3 on a loopback address, in a background thread
        from franky_sim.mujoco_simulator import MujocoSimulator
        from franky_sim.simulation_server import SimulationServer

        sim = MujocoSimulator()
        sim.__enter__()
        robot = sim.add_robot()
        server = SimulationServer(sim)
        server.__enter__()  # binds the robot to a loopback address
        server.run_async(realtime=1.0)
        backend = FrankyBackend(robot.hostname, realtime=False)
    else:
        backend = FrankyBackend(args.robot, realtime=True)
    envelope = SafetyEnvelope(backend, limits)
    trials, started = [], time.time()
    try:
        envelope.connect()
        with (args.out / "trials.jsonl").open("w") as log:
            for i, theta in enumerate(starts):
                if envelope.stopped:
                    envelope.recover()
                trial = run_trial(envelope, env, args.deploy, step, trainer.model, policy, theta)
                log.write(json.dumps({"trial": i, **dataclasses.asdict(trial)}) + "\n")
                log.flush()
                trials.append(trial)
                print(f"trial {i}: {'success' if trial.success else 'failure'} (θ {np.round(theta, 4).tolist()}, "
                      f"depth error {1000 * trial.depth_error:.1f} mm, lateral {1000 * trial.lateral_error:.1f} mm, "
                      f"limits {trial.limit_hits or 'none'}{'' if trial.reached_start else ', start not reached'})",
                      flush=True)
    finally:
        envelope.close()
        if server is not None:
            server.running = False
            server.__exit__(None, None, None)
            sim.__exit__(None, None, None)
    results = {"trials": len(trials), "successes": sum(t.success for t in trials),
               "success_rate": float(np.mean([t.success for t in trials])),
               "reached_start": sum(t.reached_start for t in trials),
               "limit_hits": dict(envelope.hits), "wall_s": round(time.time() - started, 1)}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
