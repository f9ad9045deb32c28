"""Orbax checkpoints of any pytree (a PPO `TrainState`: parameters, optimiser state,
normaliser statistics, environments, RNG key, step), with validation on restore.

A checkpoint directory holds numbered steps written atomically by orbax's
`CheckpointManager`, each with the pytree's leaves and a JSON `meta` record. `meta`
carries the caller's entries (e.g. a fingerprint of the configuration) and the path,
shape and dtype of every leaf. `restore_checkpoint` refuses (CheckpointError) a
checkpoint written for another run, one whose leaves do not match the template's,
and one it cannot read (corrupt), naming what differs.

Leaves are stored flat (orbax cannot store zero-size arrays, which `mjx.Data` has:
those are rebuilt from the template); typed PRNG keys are stored as raw key data.

Checkpoints written before a derived field joined the state (`ADDED_DERIVED_LEAVES`: values
the next environment step recomputes, such as the constraint forces behind the force/torque
reading) still restore, that field as zeros, which is what a freshly placed state holds.
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from refinery_jax.mesh import to_host

_LEAVES = "_leaves"
# leaf names (the last part of the path) added to the state after checkpoints were written with it,
# recomputed by the next step: restored as zeros when a checkpoint lacks them
ADDED_DERIVED_LEAVES = (".constraint_force",)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not belong to this run."""


def config_fingerprint(config: Any) -> str:
    """Stable short hash of a (frozen dataclass) configuration's repr."""
    return hashlib.sha256(repr(config).encode()).hexdigest()[:16]


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _flatten(tree):
    """[(path string, numpy array)] with keys as raw key data, and the treedef."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat = [(jax.tree_util.keystr(p), np.asarray(jax.random.key_data(x) if _is_key(x) else x)) for p, x in leaves]
    return flat, treedef


def _describe(flat):
    return [[path, list(x.shape), str(x.dtype)] for path, x in flat]


def _manager(directory, max_to_keep: Optional[int] = 2, create: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False, create=create)
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options, item_names=("state", "meta"))


def save_checkpoint(directory, step: int, state: Any, meta: dict, max_to_keep: Optional[int] = 2) -> None:
    """Write `state` (any pytree of arrays) and the JSON-serialisable `meta` as step `step`."""
    flat, _ = _flatten(to_host(state))  # (sharded arrays too, from every process)
    arrays = {f"{i:05d}": x for i, (_, x) in enumerate(flat) if x.size > 0}
    record = {**meta, _LEAVES: _describe(flat)}
    with _manager(directory, max_to_keep) as manager:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(record)),
                     force=True)
        manager.wait_until_finished()


def latest_step(directory) -> Optional[int]:
    """The newest complete step in `directory`, or None when there is none."""
    if not pathlib.Path(directory).is_dir():
        return None
    with _manager(directory, create=False) as manager:
        return manager.latest_step()


def _match_leaves(stored, expected, where) -> list:
    """For each expected leaf, its position among the stored ones (None: an added derived leaf)."""
    if stored == expected:
        return list(range(len(expected)))
    position = {s[0]: k for k, s in enumerate(stored)}
    missing = sorted(e[0] for e in expected if e[0] not in position and not e[0].endswith(ADDED_DERIVED_LEAVES))
    extra = sorted({s[0] for s in stored} - {e[0] for e in expected})
    if missing or extra:
        raise CheckpointError(f"{where} has a different state structure ({len(stored)} arrays stored, "
                              f"{len(expected)} expected; missing {missing[:5]}, unexpected {extra[:5]})")
    diffs = [f"{e[0]}: stored {tuple(stored[position[e[0]]][1])} {stored[position[e[0]]][2]}, expected "
             f"{tuple(e[1])} {e[2]}" for e in expected if e[0] in position and stored[position[e[0]]] != e]
    if diffs:
        raise CheckpointError(f"{where} does not match this run's arrays: " + "; ".join(diffs[:5]))
    return [position.get(e[0]) for e in expected]


def restore_checkpoint(directory, template: Any, expected_meta: Optional[dict] = None, step: Optional[int] = None):
    """Restore `(state, meta)` shaped like `template` from `step` (default: the latest).

    expected_meta: entries that must equal the stored meta's (e.g. the config
    fingerprint); a mismatch raises CheckpointError naming the differing entries.
    """
    directory = pathlib.Path(directory)
    step = latest_step(directory) if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {directory}")
    where = f"checkpoint {directory} step {step}"
    flat, treedef = _flatten(template)
    try:
        with _manager(directory, create=False) as manager:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            wrong = {k: (meta.get(k), v) for k, v in (expected_meta or {}).items() if meta.get(k) != v}
            if wrong:
                raise CheckpointError(f"{where} belongs to another run: " + "; ".join(
                    f"{k}: stored {s!r}, expected {e!r}" for k, (s, e) in wrong.items()))
            stored_at = _match_leaves(meta.get(_LEAVES), _describe(flat), where)
            abstract = {f"{j:05d}": jax.ShapeDtypeStruct(x.shape, x.dtype)
                        for (_, x), j in zip(flat, stored_at) if x.size and j is not None}
            arrays = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except CheckpointError:
        raise
    except Exception as err:  # orbax/tensorstore raise many types for unreadable data
        raise CheckpointError(f"cannot read {where} (corrupt or incomplete): {type(err).__name__}: {err}") from err
    leaves = []
    for (_, x), t, j in zip(flat, jax.tree.leaves(template), stored_at):
        value = np.asarray(arrays[f"{j:05d}"]) if x.size and j is not None else np.zeros(x.shape, x.dtype)
        leaves.append(jax.random.wrap_key_data(value, impl=jax.random.key_impl(t)) if _is_key(t) else value)
    meta = {k: v for k, v in meta.items() if k != _LEAVES}
    return jax.tree.unflatten(treedef, leaves), meta


def template_from_shapes(shapes: Any):
    """A concrete restore template (zeros; typed PRNG keys as zero keys) from `jax.eval_shape` output."""

    def zeros(s):
        if jax.dtypes.issubdtype(s.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(np.zeros(s.shape + jax.random.key_data(jax.random.key(0)).shape, np.uint32))
        return np.zeros(s.shape, s.dtype)

    return jax.tree.map(zeros, shapes)


def stage_cache(directory, meta: dict, resume: bool, progress=print):
    """`cache(name, compute, like) -> value` for multi-stage experiments.

    Computes `compute()` and saves it under `directory/name`; with `resume`, a stage
    saved before is restored instead (`like`: a traceable zero-argument function with
    the result's structure, evaluated abstractly for the template). `meta` must match.
    """
    import time

    directory = pathlib.Path(directory)

    def cache(name, compute, like):
        path = directory / name
        if resume and latest_step(path) is not None:
            value, _ = restore_checkpoint(path, template_from_shapes(jax.eval_shape(like)), expected_meta=meta)
            progress(f"  restored {name} from {path}")
            return value
        t0 = time.time()
        value = jax.block_until_ready(compute())
        save_checkpoint(path, 0, value, meta)
        progress(f"  {name} done in {time.time() - t0:.0f} s")
        return value

    return cache
