"""A per-environment host callback that steps each device's own environments.

The C backend's physics is a host callback written for one environment and batched by
vmap (every vmap level becomes a leading dimension of one call, as `jax.pure_callback`'s
`vmap_method="broadcast_all"` does). Under a device mesh, XLA cannot split a callback: it
gathers every environment to device 0 and calls the host once there (for a multi-host
run, on one host). `host_call` keeps the per-environment signature but, once all vmaps
are applied, runs the callback inside `jax.shard_map` over the context mesh
(`jax.set_mesh`): each device calls the host with its own shard of the leading
(environment) dimensions, in place on its buffers (`_call_in_place`). Without a mesh it
is one `jax.pure_callback`, as before.

How: a `custom_vmap` whose batching rule re-enters with one more leading dimension, so
the outermost trace knows how many leading dimensions are batch dimensions. Mesh axes
are laid on them in order (`lead_spec`): one batch dimension [B] is split over the
whole mesh; [S, B] is split over (first axis, the others), e.g. seeds x environments. A
batch the mesh does not divide runs as one callback (correct, unsplit), as it does
without a mesh.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.buffer_callback import buffer_callback
from jax.sharding import PartitionSpec as P


def lead_spec(lead: Sequence[int], axis_names: Sequence[str], axis_sizes: Sequence[int]) -> Optional[P]:
    """How the mesh splits the leading batch dimensions `lead`; None when it does not divide them."""
    if not lead:
        return None
    if len(lead) == 1 or len(axis_names) == 1:
        groups = [tuple(axis_names)]
    else:  # first axis on the first dimension, the remaining axes on the second
        groups = [(axis_names[0],), tuple(axis_names[1:])]
    sizes = dict(zip(axis_names, axis_sizes))
    for dim, group in zip(lead, groups):
        if dim % math.prod(sizes[a] for a in group):
            return None
    return P(*[g if len(g) > 1 else g[0] for g in groups])


def _shapes(result_shapes, batch: tuple):
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(batch + s.shape, s.dtype), result_shapes)


def _call_in_place(callback: Callable, shapes, args):
    """The callback on this device's own buffers. `jax.pure_callback` first copies its inputs to
    device 0, and that copy waits behind whatever device 0 runs: a collective that waits for this
    device deadlocks (seen on 4 host devices in PPO's update); a buffer callback copies nothing."""

    def run(context, out, *inputs):
        results = callback(*[np.asarray(x) for x in inputs])
        for buffer, value in zip(jax.tree.leaves(out), jax.tree.leaves(results)):
            np.asarray(buffer)[...] = value

    return buffer_callback(run, shapes)(*args)


def _call_on_shards(callback: Callable, result_shapes, lead: int, args):
    """The callback on arrays with `lead` leading batch dimensions, once per device shard."""
    mesh = jax.sharding.get_abstract_mesh()
    spec = None
    if lead and not mesh.empty and mesh.size > 1:
        spec = lead_spec(args[0].shape[:lead], mesh.axis_names, mesh.axis_sizes)
    if spec is None:  # one call (on one device under a mesh: XLA places it)
        shapes = _shapes(result_shapes, args[0].shape[:lead])
        return jax.pure_callback(callback, shapes, *args, vmap_method="broadcast_all")

    def per_device(*local):
        return _call_in_place(callback, _shapes(result_shapes, local[0].shape[:lead]), local)

    return jax.shard_map(per_device, in_specs=spec, out_specs=spec, check_vma=False)(*args)


def _level(callback: Callable, result_shapes, lead: int):
    @jax.custom_batching.custom_vmap
    def call(*args):
        return _call_on_shards(callback, result_shapes, lead, args)

    @call.def_vmap
    def batched(axis_size, in_batched, *args):
        args = [a if b else jnp.broadcast_to(a, (axis_size,) + a.shape) for a, b in zip(args, in_batched)]
        out = _level(callback, result_shapes, lead + 1)(*args)
        return out, jax.tree.map(lambda _: True, out)

    return call


def host_call(callback: Callable, result_shapes, *args):
    """`callback(*numpy arrays) -> numpy arrays` for one environment, vmappable.

    callback: receives every argument with the same leading batch dimensions (any
    number, none when called unbatched) and returns `result_shapes` with them in front.
    Arguments are jax arrays; `result_shapes` a pytree of `jax.ShapeDtypeStruct` for one
    environment.
    """
    return _level(callback, result_shapes, 0)(*args)
