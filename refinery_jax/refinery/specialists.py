"""Specialists for several seeds at once: one vmapped PPO run, checkpointed after every chunk.

Shared by the Refinery experiments. Seed s's keys come from `jax.random.key(s)`:
split 3 ways into (specialist training, everything after it, figures).
"""

from __future__ import annotations

import pathlib
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from refinery_jax.checkpoints import latest_step, restore_checkpoint, save_checkpoint
from refinery_jax.ppo.config import PPOHyperparams
from refinery_jax.ppo.train import Trainer, TrainState, make_chunk


def seed_keys(seeds) -> tuple[jax.Array, jax.Array, jax.Array]:
    """([S] training keys, [S] comparison keys, [S] figure keys) for integer seeds."""
    keys = jax.vmap(jax.random.key)(jnp.asarray(list(seeds)))
    split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
    return split[:, 0], split[:, 1], split[:, 2]


def train_specialists(trainer: Trainer, hparams: PPOHyperparams, keys: jax.Array, chunk_updates: int,
                      checkpoint_dir: Optional[pathlib.Path] = None, meta: Optional[dict] = None,
                      resume: bool = False, progress: Callable = print) -> TrainState:
    """Train one specialist per key ([S]) for `trainer.config.num_updates` updates; returns TrainState [S].

    With `checkpoint_dir`, the stacked state is saved after every chunk and, with
    `resume`, training continues from the latest one (same final parameters).
    """
    config = trainer.config
    if config.num_updates % chunk_updates:
        raise ValueError(f"num_updates {config.num_updates} is not a multiple of chunk_updates {chunk_updates}")
    state = jax.jit(jax.vmap(trainer.init, in_axes=(0, None)))(keys, hparams)
    if resume and checkpoint_dir is not None and latest_step(checkpoint_dir) is not None:
        state, _ = restore_checkpoint(checkpoint_dir, state, expected_meta=meta)
        progress(f"resumed the specialists at update {int(state.update[0])}")
    chunk = jax.jit(jax.vmap(make_chunk(trainer, chunk_updates)))
    progress(f"training {keys.shape[0]} specialist(s): {config.num_envs} envs x {config.num_steps} steps x "
             f"{config.num_updates} updates = {config.total_env_steps:,} env steps each")
    while int(state.update[0]) < config.num_updates:
        state, metrics = chunk(state)
        m = jax.device_get(metrics)
        rates = m.successes.sum(axis=1) / np.maximum(m.episodes.sum(axis=1), 1)
        progress(f"specialists update {int(state.update[0])}/{config.num_updates}: training success per seed "
                 f"{np.round(rates, 3).tolist()}")
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, int(state.update[0]), state, meta or {})
    return state
