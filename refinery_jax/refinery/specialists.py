"""Specialists for several seeds at once: one vmapped PPO run, checkpointed after every chunk.

Shared by the Refinery experiments. Seed s's keys come from `jax.random.key(s)`:
split 3 ways into (specialist training, everything after it, figures).
`load_specialists` reads the specialists of a finished run (to warm-start others).
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


STREAM_TAG = 0x5E9  # keeps the stream keys apart from the keys `seed_keys(seeds)` and its splits give


def seed_keys(seeds, stream: Optional[int] = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """([S] training keys, [S] comparison keys, [S] figure keys) for integer seeds.

    stream: another set per integer (e.g. a stage of a multi-part assembly), independent of
    the set without a stream: split and fold_in of one key can coincide, so streams hang
    off a tagged key.
    """
    keys = jax.vmap(jax.random.key)(jnp.asarray(list(seeds)))
    if stream is not None:
        keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, STREAM_TAG), stream))(keys)
    split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
    return split[:, 0], split[:, 1], split[:, 2]


def train_specialists(trainer: Trainer, hparams: PPOHyperparams, keys: jax.Array, chunk_updates: int,
                      checkpoint_dir: Optional[pathlib.Path] = None, meta: Optional[dict] = None,
                      resume: bool = False, progress: Callable = print,
                      warm_start: Optional[TrainState] = None) -> TrainState:
    """Train one specialist per key ([S]) for `trainer.config.num_updates` updates; returns TrainState [S].

    With `checkpoint_dir`, the stacked state is saved after every chunk and, with
    `resume`, training continues from the latest one (same final parameters).
    warm_start: trained specialists [S] (any task with the same network sizes) whose
    parameters and observation statistics seed seed s's run (a fresh optimiser;
    environments and curriculum of this task).
    """
    config = trainer.config
    if config.num_updates % chunk_updates:
        raise ValueError(f"num_updates {config.num_updates} is not a multiple of chunk_updates {chunk_updates}")
    state = jax.jit(jax.vmap(trainer.init, in_axes=(0, None)))(keys, hparams)
    if warm_start is not None:
        shapes = lambda t: jax.tree.map(jnp.shape, (t.params, t.obs_stats, t.critic_stats))  # noqa: E731
        if shapes(warm_start) != shapes(state):
            raise ValueError("warm_start specialists have other network or observation sizes than this task's")
        state = state.replace(params=warm_start.params, obs_stats=warm_start.obs_stats,
                              critic_stats=warm_start.critic_stats)
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


def load_specialists(run_dir: pathlib.Path, seeds, task: str | None = None, preset: str | None = None) -> TrainState:
    """The specialists [S] saved in `run_dir/baseline` by `experiments/refinery.py` (its seeds
    must include `seeds`, in order from 0; and its task and preset be these, when given).
    Raises ValueError before any compile if not, CheckpointError if the checkpoints belong
    to another run than its config.json."""
    import json

    from refinery_jax.checkpoints import template_from_shapes
    from refinery_jax.ppo import default_hyperparams, make_trainer
    from refinery_jax.ppo.presets import preset as ppo_preset

    run_dir = pathlib.Path(run_dir)
    config_file = run_dir / "config.json"
    if not config_file.exists() or latest_step(run_dir / "baseline") is None:
        raise ValueError(f"{run_dir} holds no specialists (config.json and baseline/ of experiments/refinery.py)")
    info = json.loads(config_file.read_text())
    have, want = list(info["seeds"]), list(seeds)
    if have[: len(want)] != want:
        raise ValueError(f"{run_dir} has specialists for seeds {have}; need {want}")
    for name, value in (("task", task), ("preset", preset)):
        if value is not None and info[name] != value:
            raise ValueError(f"{run_dir} was run for {name} {info[name]!r}, not {value!r}")
    spec = ppo_preset(info["preset"], info["task"])
    trainer = make_trainer(spec.config)
    hparams = default_hyperparams(spec.config, imitation_weight=spec.imitation_weight, **spec.hparams)
    keys = seed_keys(have)[0]
    template = template_from_shapes(jax.eval_shape(jax.vmap(trainer.init, in_axes=(0, None)), keys, hparams))
    run_id = {k: info[k] for k in ("fingerprint", "task", "preset", "seeds")}
    state, _ = restore_checkpoint(run_dir / "baseline", template, expected_meta=run_id)
    if int(state.update[0]) != info["ppo"]["num_updates"]:
        raise ValueError(f"the specialists in {run_dir} are unfinished ({int(state.update[0])} of "
                         f"{info['ppo']['num_updates']} updates)")
    return jax.tree.map(lambda a: a[: len(want)], state)
