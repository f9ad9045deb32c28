"""Choose the physics timestep by measurement: penetration, tunnelling and cost.

For each timestep (contact time constant at its stability floor of 2·dt, or the
default if larger), on the tightest square peg (0.1 mm clearance):
- pushes at full action onto the socket's top face beside the hole and sideways into
  a wall from half-inserted, recording the deepest penetration and whether the tip
  ever got through (below the top face / beyond clearance + 0.5 mm);
- the scripted insertion's success from 32 near-nominal starts;
- the wall time of one batched control step (64 worlds).

The last line of stdout is a JSON list (with --json).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from refinery_jax.assets.scene import PhysicsConfig
from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig, max_penetration
from refinery_jax.envs.physics import BACKENDS, resolve_backend
from refinery_jax.envs.scripted import run_scripted_episode

TUNNEL_MARGIN = 0.5e-3


def _push(env, key, init, direction, steps=30):
    """Full-action push for `steps` control steps; returns the deepest penetration and the last state."""
    state = env.reset(key, init)
    action = jnp.concatenate([direction, jnp.zeros(3)])

    def body(carry, _):
        state, worst = carry
        state = env.step(state, action)
        penetration = max_penetration(state.physics) if env.backend_name == "mjx" else jnp.full((), jnp.nan)
        return (state, jnp.maximum(worst, penetration)), None

    (state, worst), _ = jax.lax.scan(body, (state, jnp.zeros(())), None, length=steps)
    return state, worst


def study(timestep: float, task: str, starts: int, backend: str) -> dict:
    physics = PhysicsConfig(timestep=timestep, contact_timeconst=max(PhysicsConfig().contact_timeconst, 2 * timestep))
    env = AssemblyEnv(EnvConfig(task=task, physics=physics, backend=backend))
    a = env.assembly
    half_hole = 0.008 + a.clearance  # the square pegs are 16 mm wide
    keys = jax.random.split(jax.random.key(0), starts)

    on_wall = jnp.tile(jnp.array([half_hole + 0.004, 0.0, a.depth + 0.003]), (starts, 1))
    inside = jnp.tile(jnp.array([0.0, 0.0, a.depth / 2]), (starts, 1))
    push = jax.jit(jax.vmap(_push, in_axes=(None, 0, 0, None)), static_argnums=0)
    down, pen_down = push(env, keys, on_wall, jnp.array([0.0, 0.0, -1.0]))
    side, pen_side = push(env, keys, inside, jnp.array([1.0, 0.0, 0.0]))
    z_down, _, _ = jax.vmap(env.goal_errors)(down.physics, down.info)
    _, xy_side, _ = jax.vmap(env.goal_errors)(side.physics, side.info)
    tunnelled = (z_down < a.depth - TUNNEL_MARGIN) | (xy_side > a.clearance + TUNNEL_MARGIN)

    inits = jnp.array([0.0, 0.0, a.depth + 0.015]) + jax.random.uniform(
        jax.random.key(1), (starts, 3), minval=-0.002, maxval=0.002)
    _, success, pen_script = jax.jit(jax.vmap(lambda k, i: run_scripted_episode(env, k, i)))(keys, inits)

    states = jax.jit(jax.vmap(env.reset))(keys, inits)
    step = jax.jit(jax.vmap(env.step))
    jax.block_until_ready(step(states, jnp.zeros((starts, 6))))
    start = time.perf_counter()
    for _ in range(5):
        states = step(states, jnp.zeros((starts, 6)))
    jax.block_until_ready(states)
    return {
        "timestep": timestep,
        "backend": backend,
        "decimation": env.config.decimation,
        "contact_timeconst": physics.contact_timeconst,
        "max_penetration_push_mm": float(jnp.maximum(pen_down.max(), pen_side.max())) * 1e3,
        "max_penetration_scripted_mm": float(pen_script.max()) * 1e3,
        "tunnelled_fraction": float(jnp.mean(tunnelled)),
        "scripted_success_rate": float(jnp.mean(success)),
        "control_step_s_batch": (time.perf_counter() - start) / 5,
        "batch": starts,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", default=f"{1 / 120},{1 / 240},{1 / 480}")
    parser.add_argument("--task", default="square_peg_tight")
    parser.add_argument("--starts", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--backend", default="mjx", choices=BACKENDS,
                        help="physics (default mjx: penetration is read from MJX's contacts; NaN on c)")
    args = parser.parse_args()
    try:
        backend = resolve_backend(args.backend)
    except ValueError as error:
        parser.error(str(error))
    rows = []
    for dt in (float(t) for t in args.timesteps.split(",")):
        row = study(dt, args.task, args.starts, backend)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
