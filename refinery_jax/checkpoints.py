"""Orbax checkpoints of any pytree (a PPO `TrainState`: parameters, optimiser state,
normaliser statistics, environments, RNG key, step), with validation on restore.

A checkpoint directory holds numbered steps written atomically by orbax's
`CheckpointManager`, each with the pytree and a JSON `meta` record. `meta` carries
a fingerprint of the configuration that produced it; `restore_checkpoint` refuses
(CheckpointError) a checkpoint written for another configuration, one whose arrays do
not match the template's shapes and dtypes, and one it cannot read (corrupt).
Typed PRNG keys are stored as their raw key data and re-wrapped on restore.
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not belong to this run."""


def config_fingerprint(config: Any) -> str:
    """Stable short hash of a (frozen dataclass) configuration's repr."""
    return hashlib.sha256(repr(config).encode()).hexdigest()[:16]


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(tree):
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else np.asarray(x), tree)


def _manager(directory, max_to_keep: Optional[int] = 2, create: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False, create=create)
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options, item_names=("state", "meta"))


def save_checkpoint(directory, step: int, state: Any, meta: dict, max_to_keep: Optional[int] = 2) -> None:
    """Write `state` (any pytree of arrays) and the JSON-serialisable `meta` as step `step`."""
    with _manager(directory, max_to_keep) as manager:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_to_storable(jax.device_get(state))),
                                                   meta=ocp.args.JsonSave(dict(meta))), force=True)
        manager.wait_until_finished()


def latest_step(directory) -> Optional[int]:
    """The newest complete step in `directory`, or None when there is none."""
    if not pathlib.Path(directory).is_dir():
        return None
    with _manager(directory, create=False) as manager:
        return manager.latest_step()


def restore_checkpoint(directory, template: Any, expected_meta: Optional[dict] = None, step: Optional[int] = None):
    """Restore `(state, meta)` shaped like `template` from `step` (default: the latest).

    expected_meta: entries that must equal the stored meta's (e.g. the config
    fingerprint); a mismatch raises CheckpointError naming the differing entries.
    """
    directory = pathlib.Path(directory)
    step = latest_step(directory) if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {directory}")
    storable = _to_storable(template)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), storable)
    try:
        with _manager(directory, create=False) as manager:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            if expected_meta:
                wrong = {k: (meta.get(k), v) for k, v in expected_meta.items() if meta.get(k) != v}
                if wrong:
                    raise CheckpointError(f"checkpoint {directory} step {step} belongs to another run: "
                                          + "; ".join(f"{k}: stored {s!r}, expected {e!r}" for k, (s, e) in wrong.items()))
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except CheckpointError:
        raise
    except Exception as err:  # orbax/tensorstore raise many types for unreadable data
        raise CheckpointError(f"cannot read checkpoint {directory} step {step} (corrupt, or written for a "
                              f"different state structure): {type(err).__name__}: {err}") from err
    flat_restored, tree_restored = jax.tree.flatten(restored)
    flat_abstract, tree_abstract = jax.tree.flatten(abstract)
    if tree_restored != tree_abstract:
        raise CheckpointError(f"checkpoint {directory} step {step} has a different state structure")
    for got, want in zip(flat_restored, flat_abstract):
        if np.shape(got) != want.shape or np.asarray(got).dtype != want.dtype:
            raise CheckpointError(f"checkpoint {directory} step {step}: array {np.shape(got)} "
                                  f"{np.asarray(got).dtype} where {want.shape} {want.dtype} is expected")
    state = jax.tree.map(lambda t, r: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t)) if _is_key(t) else r,
                         template, jax.tree.unflatten(tree_abstract, flat_restored))
    return state, meta
