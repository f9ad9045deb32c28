"""Environment throughput: batched MJX vs C MuJoCo on the same model, same thread count.

For each embodiment on the default task, the plug starts inserted and is pressed
into the socket floor by a constant actuator command (computed once by the
impedance controller), so contacts are active in both simulators. Measured:

- `mjx_steps_per_s`: physics steps/s of `mjx.step`, vmapped over `--batch` worlds;
- `control_steps_per_s`: 15 Hz environment steps/s (controller + 16 physics steps each),
  vmapped; `env_physics_steps_per_s` is the same in physics steps;
- `mujoco_c_steps_per_s`: `mujoco.rollout` over the same batch and controls, with as
  many threads as this machine has cores (XLA:CPU uses them all too);
- `ratio`: mjx_steps_per_s / mujoco_c_steps_per_s; `compile_s`: env step compile.

The last line of stdout is one JSON object (with `--json`).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import refinery_jax  # noqa: F401  (sets the XLA CPU flag before JAX starts)
import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from mujoco import mjx, rollout

from refinery_jax.envs import control
from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig


def _time(fn, *args, repeats: int) -> float:
    """Median wall time of `fn(*args)` after one warm-up call (compile excluded)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(embodiment: str, task: str | None, batch: int, physics_steps: int, control_steps: int, repeats: int):
    config = EnvConfig(embodiment=embodiment) if task is None else EnvConfig(task=task, embodiment=embodiment)
    env = AssemblyEnv(config)
    keys = jax.random.split(jax.random.key(0), batch)
    inits = jnp.zeros((batch, 3))  # inserted: the plug touches walls and floor
    states = jax.jit(jax.vmap(env.reset))(keys, inits)

    # a constant command pressing the plug 5 cm into the floor, from the controller at the start
    def press(d):
        p, q, jac, mass = control.fingertip_state(env.model, d, env.fingertip_body, env.spec.num_dofs)
        n = env.spec.num_dofs
        return control.impedance_torques(p, q, jac, mass, d.qpos[:n], d.qvel[:n], p - jnp.array([0, 0, 0.05]), q,
                                         jnp.asarray(env.spec.home_qpos), jnp.asarray(env.spec.torque_limits),
                                         env.config.control)

    ctrl = jax.jit(jax.vmap(press))(states.data)
    data = states.data.replace(ctrl=ctrl)

    def physics(d):
        return jax.lax.scan(lambda d, _: (mjx.step(env.model, d), None), d, None, length=physics_steps)[0]

    physics_batch = jax.jit(jax.vmap(physics))
    mjx_s = _time(physics_batch, data, repeats=repeats)

    def episode(s):
        return jax.lax.scan(lambda s, _: (env.step(s, jnp.array([0, 0, -1.0, 0, 0, 0])), None), s, None,
                            length=control_steps)[0]

    env_steps = jax.jit(jax.vmap(episode))
    start = time.perf_counter()
    step_compiled = jax.jit(jax.vmap(env.step)).lower(states, jnp.zeros((batch, 6))).compile()
    compile_s = time.perf_counter() - start
    del step_compiled
    env_s = _time(env_steps, states, repeats=repeats)

    # C MuJoCo on the same model, from the same states, same constant controls
    m = env.mj_model
    d0 = mujoco.MjData(m)
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    init_state = np.empty((batch, mujoco.mj_stateSize(m, spec)))
    qpos, qvel = np.asarray(data.qpos), np.asarray(data.qvel)
    mocap_pos, mocap_quat = np.asarray(data.mocap_pos), np.asarray(data.mocap_quat)
    for i in range(batch):
        d0.qpos[:], d0.qvel[:] = qpos[i], qvel[i]
        d0.mocap_pos[:], d0.mocap_quat[:] = mocap_pos[i], mocap_quat[i]
        mujoco.mj_getState(m, d0, init_state[i], spec)
    controls = np.repeat(np.asarray(ctrl)[:, None, :], physics_steps, axis=1)
    threads = os.cpu_count() or 1
    datas = [mujoco.MjData(m) for _ in range(threads)]
    c_times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        rollout.rollout(m, datas, init_state, controls, initial_warmstart=None)
        c_times.append(time.perf_counter() - start)
    c_s = float(np.median(c_times[1:]))

    mjx_rate = batch * physics_steps / mjx_s
    c_rate = batch * physics_steps / c_s
    return {
        "embodiment": embodiment,
        "task": env.config.task,
        "batch": batch,
        "mjx_steps_per_s": mjx_rate,
        "control_steps_per_s": batch * control_steps / env_s,
        "env_physics_steps_per_s": batch * control_steps * env.config.decimation / env_s,
        "mujoco_c_steps_per_s": c_rate,
        "mujoco_c_threads": threads,
        "ratio": mjx_rate / c_rate,
        "compile_s": compile_s,
        "ncon_mjx": int(data._impl.contact.dist.shape[-1]),  # noqa: SLF001
        "timestep": env.config.physics.timestep,
        "device": str(jax.devices()[0]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embodiments", default="floating_hand,franka")
    parser.add_argument("--task", default=None, help="default: the registry's default task")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--physics-steps", type=int, default=64)
    parser.add_argument("--control-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    args = parser.parse_args()
    results = {}
    for embodiment in args.embodiments.split(","):
        row = measure(embodiment, args.task, args.batch, args.physics_steps, args.control_steps, args.repeats)
        results[embodiment] = row
        if not args.json:
            print(json.dumps(row, indent=1))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
