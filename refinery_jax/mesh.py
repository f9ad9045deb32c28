"""Scale-out: seeds and environments spread over a device mesh, on one host or many.

The mesh has two axes: `seeds` (independent runs, vmapped) and `envs` (each run's batch
of environments). Programs stay written for one device, in global view; jit with
`NamedSharding` inputs and outputs lets XLA split them (GSPMD):

- everything per environment (the environments, the actor's memory, the rollout buffers,
  evaluation episodes) is split over `envs`; without a seeds dimension (one run, one
  evaluation batch) over the whole mesh;
- per-seed state (parameters, optimiser, normaliser statistics, keys) is split over
  `seeds` and replicated along `envs`; seeds share nothing;
- PPO's minibatch loss is a mean over the minibatch's environments wherever they live,
  so its gradient is the average over the env axis: XLA inserts the all-reduce;
- the C physics backend calls the host once per device, with that device's environments
  (`envs.physics.host_batching`).

Random numbers come from JAX's partitionable threefry (the default), so a split program
draws the numbers one device draws; training differs from one device's only in the
order of floating-point sums (tests/test_mesh.py states the tolerance).

Multi-host: `initialize_distributed()` first (the scripts' `--distributed`), before any
other JAX call; `jax.devices()` then lists every process's devices and the mesh spans
them. Launch commands are in the README's Scale-out section.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

SEEDS, ENVS = "seeds", "envs"
# TrainState fields with an environment dimension (after the seeds dimension, if any)
ENV_FIELDS = ("env_state", "policy_carry", "window", "episode_return", "base_carry")


def make_mesh(devices: Optional[int] = None, seed_axis: int = 1) -> Mesh:
    """A (seeds x envs) mesh over the first `devices` devices (default all, every process's).

    seed_axis: how many devices the seeds axis spans (it must divide `devices`)."""
    available = jax.devices()
    n = len(available) if devices is None else devices
    if not 1 <= n <= len(available):
        raise ValueError(f"asked for {n} devices; {len(available)} are available ({available[0].platform})")
    if seed_axis < 1 or n % seed_axis:
        raise ValueError(f"the seeds axis ({seed_axis} devices) must divide the {n} devices")
    grid = np.array(available[:n]).reshape(seed_axis, n // seed_axis)
    return Mesh(grid, (SEEDS, ENVS), axis_types=(AxisType.Auto, AxisType.Auto))


def describe(mesh: Optional[Mesh]) -> dict:
    """What a run records about its devices."""
    if mesh is None:
        return {"devices": 1, "mesh": None, "processes": jax.process_count()}
    return {"devices": int(mesh.size), "mesh": dict(zip(mesh.axis_names, map(int, mesh.devices.shape))),
            "processes": jax.process_count(), "platform": mesh.devices.flat[0].platform}


def check_fits(mesh: Mesh, num_envs: int, num_seeds: Optional[int] = None) -> None:
    """ValueError (before any compile) unless the mesh splits the environments and seeds evenly."""
    seeds, envs = mesh.shape[SEEDS], mesh.shape[ENVS]
    if num_seeds is None:
        if num_envs % mesh.size:
            raise ValueError(f"{num_envs} environments do not split evenly over {mesh.size} devices")
        return
    if num_seeds % seeds:
        raise ValueError(f"{num_seeds} seeds do not split evenly over the seeds axis ({seeds} devices)")
    if num_envs % envs:
        raise ValueError(f"{num_envs} environments per seed do not split evenly over the envs axis ({envs} devices)")


def batch_spec(seeds_batched: bool) -> P:
    """Environments, episodes or trials: [S, B, ...] over (seeds, envs); [B, ...] over the whole mesh."""
    return P(SEEDS, ENVS) if seeds_batched else P((SEEDS, ENVS))


def batch_sharding(mesh: Mesh, seeds_batched: bool) -> NamedSharding:
    return NamedSharding(mesh, batch_spec(seeds_batched))


def train_state_shardings(mesh: Mesh, shapes: Any, seeds_batched: bool = True):
    """NamedShardings for a `ppo.TrainState` shaped like `shapes` (`jax.eval_shape` of init):
    fields with an environment dimension split over envs, the rest per seed."""
    per_env = NamedSharding(mesh, batch_spec(seeds_batched))
    per_seed = NamedSharding(mesh, P(SEEDS) if seeds_batched else P())
    fields = {f: jax.tree.map(lambda _: per_env if f in ENV_FIELDS else per_seed, getattr(shapes, f))
              for f in shapes.__dataclass_fields__}
    return shapes.replace(**fields)


def use_mesh(mesh: Optional[Mesh]):
    """The context programs are traced and run in (a no-op without a mesh)."""
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def in_mesh(fn, mesh: Optional[Mesh], split: tuple = (), gather=None):
    """`fn` traced and run inside the mesh (the C backend splits its host calls per device only
    there); the positional arguments in `split`, per-seed batches [S, N, ...], placed over
    (seeds, envs) when the mesh divides them (otherwise XLA places them); `gather(out)` applied
    to the result (e.g. `to_host`, for work that continues on one device). `fn` without a mesh."""
    if mesh is None:
        return fn

    def run(*args):
        args = list(args)
        for i in split:
            seeds, n = args[i].shape[:2]
            if seeds % mesh.shape[SEEDS] == 0 and n % mesh.shape[ENVS] == 0:
                args[i] = jax.device_put(args[i], batch_sharding(mesh, seeds_batched=True))
        with use_mesh(mesh):
            out = fn(*args)
        return out if gather is None else gather(out)

    return run


def split_envs(tree: Any, dim: int) -> Any:
    """Inside a program traced in a mesh: lay dimension `dim` (environments) of every leaf over
    the envs axis (a no-op without one). PPO's minibatches are gathered from environments on
    every device; this keeps the minibatch's loss and gradient split across the devices
    (each its share, then an all-reduce) instead of computed whole on each of them."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or ENVS not in mesh.axis_names or mesh.shape[ENVS] == 1:
        return tree
    return jax.lax.with_sharding_constraint(tree, P(*([None] * dim), ENVS))


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def place(tree: Any, shardings: Any) -> Any:
    """Host values (every process holding the whole value, e.g. a restored checkpoint)
    onto `shardings`; each process supplies the shards of its own devices."""

    def one(x, sharding):
        if _is_key(x):
            data = one(jax.random.key_data(x), NamedSharding(sharding.mesh, P(*sharding.spec)))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(one, tree, shardings)


def to_host(tree: Any) -> Any:
    """NumPy copies of (possibly sharded) arrays on every process."""
    leaves = jax.tree.leaves(tree)
    if all(getattr(x, "is_fully_addressable", True) for x in leaves):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils  # noqa: PLC0415

    data = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)
    data = multihost_utils.process_allgather(data, tiled=True)  # typed keys cannot travel: their raw data can
    return jax.tree.map(lambda x, d: jax.random.wrap_key_data(d, impl=jax.random.key_impl(x)) if _is_key(x) else d,
                        tree, data)


def initialize_distributed(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
    """Join a multi-process run (one process per host, or per GPU). Call before any other
    JAX call. On TPU pods and SLURM/Open MPI clusters JAX finds the arguments itself;
    elsewhere pass them (the coordinator may also come from JAX_COORDINATOR_ADDRESS).
    CPU processes exchange data through gloo."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # (CPU only; GPUs and TPUs keep theirs)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
