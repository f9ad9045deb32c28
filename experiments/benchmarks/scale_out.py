"""Scale-out: PPO training and evaluation throughput vs the number of devices.

    python experiments/benchmarks/scale_out.py --devices 1 2 4

For each device count n, a fresh process (the host's device count is fixed when JAX
starts: on a CPU-only machine each child forces n host devices; on GPUs/TPUs it uses the
first n) builds a (1 x n) mesh (`refinery_jax.mesh`) and measures, after a first call that
compiles:

- `train_steps_per_s`: environment steps/s of a chunk of PPO updates of the preset (quick:
  256 environments x 25 steps per update; paper: 128 x 32, an LSTM), the environments split
  over the devices (strong scaling: the same total work, the same result as one device);
- `eval_episodes_per_s`: fresh evaluation episodes/s (`evaluate`, the episodes split over
  the devices).

`efficiency` = speed-up / n. Forced host devices are threads sharing this machine's cores
(2 here), so on a CPU the figures show the overhead of splitting, not a speed-up; run it on a
multi-GPU node for real scaling. The projection (labelled as such) divides the paper
preset's environment steps by the per-device training rate x n, at ideal scaling and at the
efficiency measured at the largest n, for 8 GPUs and a TPU v5e-64; the rate is the one
measured here (use --preset paper) or --per-device-steps-per-s, e.g. one GPU's. The last
line of stdout is one JSON object.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import subprocess
import sys
import time

PROJECTIONS = {"8 GPUs": 8, "TPU v5e-64": 64}


def measure(devices: int, task: str, preset_name: str, updates: int, episodes: int) -> dict:
    """One device count, in this process (JAX already sees the devices)."""
    import jax

    from refinery_jax.envs.samplers import env_uniform
    from refinery_jax.evaluation import make_evaluate
    from refinery_jax.mesh import batch_sharding, make_mesh, use_mesh
    from refinery_jax.ppo.presets import preset
    from refinery_jax.refinery.specialists import build_trainer, seed_keys, training_programs

    spec = preset(preset_name, task)
    trainer, hparams = build_trainer(spec, progress=lambda *a: None)  # (the paper preset's imitation demos too)
    mesh = make_mesh(devices) if devices > 1 else None
    programs = training_programs(trainer, seed_keys([0])[0], hparams, updates, mesh)
    state = programs.init(*programs.init_args)
    t = time.perf_counter()
    state, _ = jax.block_until_ready(programs.chunk(state))  # compiles, then runs
    first = time.perf_counter() - t
    t = time.perf_counter()
    state, _ = jax.block_until_ready(programs.chunk(state))
    train_s = time.perf_counter() - t

    env = trainer.env
    evaluate = jax.jit(make_evaluate(env, trainer.model, obs_clip=spec.config.obs_clip))
    policy = jax.tree.map(lambda x: x[0], trainer.policy(state))
    inits = jax.vmap(env_uniform(env))(jax.random.split(jax.random.key(1), episodes))
    if mesh is not None:
        inits = jax.device_put(inits, batch_sharding(mesh, seeds_batched=False))
    with use_mesh(mesh):
        t = time.perf_counter()
        jax.block_until_ready(evaluate(policy, inits, jax.random.key(2)))
        eval_first = time.perf_counter() - t
        t = time.perf_counter()
        jax.block_until_ready(evaluate(policy, inits, jax.random.key(3)))
        eval_s = time.perf_counter() - t
    steps = updates * spec.config.batch_size
    return {"devices": devices, "platform": jax.devices()[0].platform, "train_steps_per_s": steps / train_s,
            "train_compile_s": first - train_s, "eval_episodes_per_s": episodes / eval_s,
            "eval_compile_s": eval_first - eval_s, "env_steps_timed": steps, "episodes_timed": episodes}


def run_child(devices: int, args) -> dict:
    env = dict(os.environ)
    import jax  # noqa: PLC0415  (the parent only asks which platform it has)

    if jax.default_backend() == "cpu":
        env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    done = subprocess.run([sys.executable, __file__, "--child", str(devices), "--task", args.task, "--preset",
                           args.preset, "--updates", str(args.updates), "--episodes", str(args.episodes)],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the {devices}-device measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def project(rows: list, preset_name: str, paper_steps: int, per_device: float | None) -> dict:
    """Wall time of the paper preset's environment steps (one seed) on n devices: a projection,
    at ideal scaling and at the efficiency measured here at the largest n."""
    rate = per_device if per_device is not None else rows[0]["train_steps_per_s"]
    measured = rows[-1]["efficiency"] if len(rows) > 1 else None
    source = ("--per-device-steps-per-s" if per_device is not None
              else f"measured here: {preset_name} preset on 1 {rows[0]['platform']} device")
    out = {"kind": "projection, not a measurement", "per_device_steps_per_s": rate, "rate_from": source,
           "paper_env_steps_per_seed": paper_steps, "hours_one_device": paper_steps / rate / 3600,
           "hours_ideal_scaling": {name: paper_steps / (rate * n) / 3600 for name, n in PROJECTIONS.items()}}
    if measured is not None:
        out["efficiency_measured_at_%d_devices" % rows[-1]["devices"]] = measured
        out["hours_at_measured_efficiency"] = {name: paper_steps / (rate * n * measured) / 3600
                                               for name, n in PROJECTIONS.items()}
    if per_device is None and preset_name != "paper":
        out["caveat"] = "the rate is the quick preset's (smaller network); run with --preset paper"
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4], help="device counts (default 1 2 4)")
    parser.add_argument("--task", default="square_peg")
    parser.add_argument("--preset", default="quick", choices=("quick", "paper"),
                        help="the training recipe timed (default quick; paper for the projection)")
    parser.add_argument("--updates", type=int, default=2, help="PPO updates timed per device count (default 2)")
    parser.add_argument("--episodes", type=int, default=512, help="evaluation episodes timed (default 512)")
    parser.add_argument("--per-device-steps-per-s", type=float, default=None,
                        help="project from this per-device training rate instead of the one measured here")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.task, args.preset, args.updates, args.episodes)))
        return
    counts = sorted(set(args.devices))
    from refinery_jax.ppo.presets import preset

    envs = preset(args.preset, args.task).config.num_envs
    if counts[0] != 1 or any(envs % n or args.episodes % n for n in counts):
        parser.error(f"--devices must include 1 and divide the preset's {envs} environments and --episodes")
    rows = [run_child(n, args) for n in counts]
    for row in rows:
        for key in ("train_steps_per_s", "eval_episodes_per_s"):
            row[key.replace("_per_s", "_speedup")] = row[key] / rows[0][key]
        row["efficiency"] = row["train_steps_speedup"] / row["devices"]
        row["eval_efficiency"] = row["eval_episodes_speedup"] / row["devices"]
        print(f"{row['devices']} device(s): {row['train_steps_per_s']:,.0f} env steps/s training "
              f"(efficiency {row['efficiency']:.2f}), {row['eval_episodes_per_s']:.1f} episodes/s evaluating "
              f"(efficiency {row['eval_efficiency']:.2f})", file=sys.stderr)
    paper = preset("paper", args.task).config.total_env_steps
    print(json.dumps({"task": args.task, "preset": args.preset, "cpu_count": os.cpu_count(), "rows": rows,
                      "paper_preset_projection": project(rows, args.preset, paper, args.per_device_steps_per_s)}))


if __name__ == "__main__":
    main()
