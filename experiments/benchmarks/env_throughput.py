"""Environment throughput: the C backend and MJX against raw C MuJoCo, on the same in-contact scene.

For each embodiment on the default task, `--batch` worlds start with the plug half
inside the socket, off-centre by up to 0.3 mm, and every action presses it down and
sideways (a = (0.3, 0, -1, 0, 0, 0)): the plug is against a wall and the floor for the
whole measurement (the number of contacts is reported). Measured in one process:

- `c_env_control_steps_per_s`, `mjx_env_control_steps_per_s`: 15 Hz environment steps/s of
  `jit(vmap(scan(env.step)))` over `--control-steps` steps (controller at every physics
  substep, observation, reward), after a warm-up call; `c_law` says how the C backend
  evaluated the law (compiled callback or NumPy), and with the compiled law
  `c_numpy_law_env_control_steps_per_s` is the NumPy fallback on the same worlds;
- `raw_c_physics_steps_per_s`: `mujoco.batch.Batch.step` on the same worlds (the C env's
  float64 state rows, socket pose included) with the torques held constant, as many threads
  as the C backend uses; `raw_c_control_steps_per_s` is that / decimation: the ceiling;
- ratios `c_env_over_raw_c` (goal >= 0.5) and `c_env_over_mjx`;
- `*_step_compile_s`: compile time of the vmapped env step;
- `eval_1000_s`: 1000 episodes of the privileged scripted insertion (75 control steps each,
  mostly in contact) through `envs.episodes.run_episode`, batches of 256, on the C backend,
  after compiling (`eval_1000_compile_s`) -- the cost of one row of a Refinery table.

MJX runs in a subprocess of this script (`--mjx-only`): it needs its XLA CPU flag, which
slows the C backend's JAX side, so each backend is measured in a process configured as
the scripts configure it. Noisy on a shared machine: repeat and compare ratios within
one run. The last line of stdout is one JSON object (with `--json`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from mujoco import batch as mj_batch  # noqa: E402

from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig  # noqa: E402
from refinery_jax.envs.episodes import run_episode  # noqa: E402
from refinery_jax.envs.physics.c_backend import CBackend  # noqa: E402
from refinery_jax.envs.samplers import env_uniform  # noqa: E402
from refinery_jax.envs.scripted import scripted_actor  # noqa: E402

PRESS = (0.3, 0.0, -1.0, 0.0, 0.0, 0.0)  # (a plain tuple: no JAX work before the backend is chosen)


def _median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _starts(env, batch):
    keys = jax.random.split(jax.random.key(0), batch)
    offset = jax.random.uniform(jax.random.key(1), (batch, 2), minval=-3e-4, maxval=3e-4)
    inits = jnp.concatenate([offset, jnp.full((batch, 1), env.assembly.depth / 2)], axis=1)
    return jax.jit(jax.vmap(env.reset))(keys, inits)


def env_rate(env, batch: int, control_steps: int, repeats: int):
    """(control steps/s, compile s of one vmapped step, states after pressing into contact)."""
    states = _starts(env, batch)
    actions = jnp.tile(jnp.array(PRESS), (batch, 1))
    step = jax.vmap(env.step)
    start = time.perf_counter()
    compiled = jax.jit(step).lower(states, actions).compile()
    compile_s = time.perf_counter() - start
    for _ in range(5):  # settle into contact
        states = compiled(states, actions)
    run = jax.jit(lambda s: jax.lax.scan(lambda s, _: (step(s, actions), None), s, None, length=control_steps)[0])
    seconds = _median_time(run, states, repeats=repeats)
    return batch * control_steps / seconds, compile_s, states


def raw_c_rate(env, states, physics_steps: int, repeats: int):
    """Physics steps/s of `mujoco.batch` on the C env's worlds, torques held constant; and contacts per world."""
    backend = env.physics
    rows = np.asarray(states.physics.sim.rows).view(np.float64).copy()
    rows[:, backend._slices["userdata"]] = 0.0  # no marker: the compiled law leaves these worlds' torques alone
    batch = mj_batch.Batch(backend.model, rows.shape[0], backend.threads)
    ncon = batch.bind("ncon")
    times = []
    for _ in range(repeats + 1):
        batch.state[:] = rows
        start = time.perf_counter()
        batch.step(nstep=physics_steps)
        times.append(time.perf_counter() - start)
    return rows.shape[0] * physics_steps / float(np.median(times[1:])), float(np.mean(ncon))


def eval_time(env, episodes: int = 1000, batch: int = 256):
    """(seconds for `episodes` scripted episodes after compiling, compile + first run seconds, success)."""
    actor = scripted_actor(env)
    inits = jax.vmap(env_uniform(env))(jax.random.split(jax.random.key(2), episodes))
    keys = jax.random.split(jax.random.key(3), episodes)
    pad = -episodes % batch
    inits, keys = (jnp.concatenate([x, x[:pad]]) for x in (inits, keys))
    one = jax.vmap(lambda k, i: run_episode(env, actor, False, k, i).success)
    run = jax.jit(lambda ks, xs: jax.lax.map(lambda a: one(*a), (ks.reshape(-1, batch), xs.reshape(-1, batch, 3))))
    start = time.perf_counter()
    jax.block_until_ready(run(keys, inits))
    first = time.perf_counter() - start
    start = time.perf_counter()
    success = np.asarray(run(keys, inits)).reshape(-1)[:episodes]
    return time.perf_counter() - start, first, float(success.mean())


def measure(embodiment: str, batch: int, control_steps: int, repeats: int, with_mjx: bool, with_eval: bool) -> dict:
    row = {"embodiment": embodiment, "batch": batch, "control_steps": control_steps}
    c_env = AssemblyEnv(EnvConfig(embodiment=embodiment, backend="c"))
    row["task"] = c_env.config.task
    decimation = c_env.config.decimation
    row["c_env_control_steps_per_s"], row["c_step_compile_s"], states = env_rate(c_env, batch, control_steps, repeats)
    raw, row["contacts_per_world"] = raw_c_rate(c_env, states, control_steps * decimation, repeats)
    row["raw_c_physics_steps_per_s"], row["raw_c_control_steps_per_s"] = raw, raw / decimation
    row["c_env_over_raw_c"] = row["c_env_control_steps_per_s"] / row["raw_c_control_steps_per_s"]
    row["c_threads"] = c_env.physics.threads or os.cpu_count()
    row["c_law"] = "compiled" if c_env.physics.compiled else f"numpy ({c_env.physics.compiled_unavailable_reason})"
    if c_env.physics.compiled:  # the NumPy fallback on the same worlds, for the ratio
        numpy_env = AssemblyEnv(EnvConfig(embodiment=embodiment, backend="c"))
        numpy_env.physics = CBackend(numpy_env.physics.spec, compiled=False)
        row["c_numpy_law_env_control_steps_per_s"] = env_rate(numpy_env, batch, control_steps, repeats)[0]
        row["compiled_over_numpy_law"] = row["c_env_control_steps_per_s"] / row["c_numpy_law_env_control_steps_per_s"]
    if with_mjx:
        cmd = [sys.executable, __file__, "--mjx-only", "--embodiments", embodiment, "--batch", str(batch),
               "--control-steps", str(control_steps), "--repeats", str(repeats), "--json"]
        mjx = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        row.update(mjx["rows"][0])
        row["c_env_over_mjx"] = row["c_env_control_steps_per_s"] / row["mjx_env_control_steps_per_s"]
    if with_eval:
        row["eval_1000_s"], row["eval_1000_compile_s"], row["eval_1000_scripted_success"] = eval_time(c_env)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--embodiments", default="floating_hand,franka")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--control-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-mjx", action="store_true", help="skip MJX (its compile takes a minute or more on CPU)")
    parser.add_argument("--no-eval", action="store_true", help="skip the 1000-episode evaluation timing")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    parser.add_argument("--mjx-only", action="store_true", help=argparse.SUPPRESS)  # the MJX subprocess
    args = parser.parse_args()
    if min(args.batch, args.control_steps, args.repeats) < 1:
        parser.error("--batch, --control-steps and --repeats must be positive")
    if args.mjx_only:
        from refinery_jax.envs.physics import resolve_backend

        resolve_backend("mjx")  # its XLA CPU flag, before JAX starts
        rows = []
        for embodiment in args.embodiments.split(","):
            env = AssemblyEnv(EnvConfig(embodiment=embodiment, backend="mjx"))
            rate, compile_s, _ = env_rate(env, args.batch, args.control_steps, args.repeats)
            rows.append({"mjx_env_control_steps_per_s": rate, "mjx_step_compile_s": compile_s})
        print(json.dumps({"rows": rows}))
        return
    results = {"device": str(jax.devices()[0]), "cpus": os.cpu_count(), "rows": []}
    for embodiment in args.embodiments.split(","):
        row = measure(embodiment, args.batch, args.control_steps, args.repeats, not args.no_mjx,
                      not args.no_eval and embodiment == "floating_hand")
        results["rows"].append(row)
        if not args.json:
            print(json.dumps(row, indent=1), flush=True)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
