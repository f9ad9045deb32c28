"""Specialists: the one way this project trains, checkpoints and loads PPO policies.

`build_trainer(spec)` makes the trainer of a preset (generating the disassembly demos
its imitation reward needs, if any); `train_specialists` trains S seeds in one vmapped
run, checkpointed after every chunk into `RUN/specialists/`, with a progress bar and
TensorBoard scalars; `load_specialists(RUN)` reads the specialists of any run that
`experiments/train_specialist.py`, `experiments/refinery.py` or
`experiments/acquisition_ablation.py` wrote (its `config.json` says what they are).

Seed s's keys come from `jax.random.key(s)`: split 3 ways into (specialist training,
everything after it, figures).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from refinery_jax.checkpoints import latest_step, restore_checkpoint, save_checkpoint
from refinery_jax.mesh import SEEDS, check_fits, in_mesh, place, to_host, train_state_shardings
from refinery_jax.ppo.config import PPOHyperparams, default_hyperparams
from refinery_jax.ppo.presets import Preset
from refinery_jax.ppo.train import Trainer, TrainState, make_chunk, make_trainer

SPECIALISTS_DIR = "specialists"  # inside a run directory: the orbax checkpoints of the specialists [S]
STREAM_TAG = 0x5E9  # keeps the stream keys apart from the keys `seed_keys(seeds)` and its splits give
DEMO_KEY = 0xD3         # demos are data of the task, the same for every seed


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


def build_trainer(spec: Preset, progress: Callable = print, env=None) -> tuple[Trainer, PPOHyperparams]:
    """The trainer and hyperparameters of a preset. With an imitation reward, its reference
    paths are generated first (`num_demos` disassemblies of the task, a fixed key).
    env: train in this environment (e.g. an `envs.gap.GapEnv`) instead of the preset's own;
    the disassemblies are always the preset's simulation's."""
    from refinery_jax.envs.assembly_env import AssemblyEnv  # noqa: PLC0415
    from refinery_jax.envs.demos import DemoConfig, make_generator  # noqa: PLC0415

    config = spec.config
    sim = AssemblyEnv(config.env)
    env = sim if env is None else env
    demo_paths = None
    if config.imitation is not None:
        demos = jax.jit(make_generator(sim, DemoConfig(num_attempts=config.imitation.num_demos)))(
            jax.random.key(DEMO_KEY))
        demo_paths = demos.assembly_paths()
        progress(f"demos: {len(demo_paths)} valid of {config.imitation.num_demos} disassemblies")
        if len(demo_paths) == 0:
            raise RuntimeError("no valid disassembly demonstration: cannot build the imitation reward")
    trainer = make_trainer(config, env, demo_paths=demo_paths)
    return trainer, default_hyperparams(config, imitation_weight=spec.imitation_weight, **spec.hparams)


def run_identity(spec: Preset, task: str, preset: str, seeds, extra=()) -> dict:
    """What identifies a run's specialists (stored in config.json and every checkpoint): the
    fingerprint of the configuration, the task, preset, seeds, physics backend and
    observation sizes, which `load_specialists` checks before building anything."""
    from refinery_jax.checkpoints import config_fingerprint  # noqa: PLC0415
    from refinery_jax.envs.assembly_env import CRITIC_OBS_SIZE, POLICY_OBS_SIZE  # noqa: PLC0415

    return {"fingerprint": config_fingerprint((spec.config, spec, list(seeds)) + tuple(extra)), "task": task,
            "preset": preset, "seeds": list(seeds), "backend": spec.config.env.backend,
            "embodiment": spec.config.env.embodiment,
            "observation": {"policy": POLICY_OBS_SIZE, "critic": CRITIC_OBS_SIZE}}


def updates_done(state: TrainState) -> int:
    """Updates seed 0 has done (the host reads it from any process of a sharded run)."""
    return int(to_host(state.update)[0])


class TrainingPrograms(NamedTuple):
    init: Callable        # (*init_args) -> TrainState [S]
    chunk: Callable       # TrainState [S] -> (TrainState [S], UpdateMetrics [S, chunk_updates])
    init_args: tuple
    shardings: Any        # the state's NamedShardings (None on one device)


def training_programs(trainer: Trainer, keys: jax.Array, hparams: PPOHyperparams, chunk_updates: int,
                      mesh=None, base_params=None) -> TrainingPrograms:
    """The jitted programs of S seeds' training. With a mesh, the state's environments split
    over it (`mesh.train_state_shardings`), the programs run in it (the C backend's host calls
    split per device only there), and a mesh that does not divide the environments and seeds
    is refused (ValueError) before any compile."""
    init_args = (keys, hparams) if base_params is None else (keys, hparams, base_params)
    # on a mesh the seeds dimension is the seeds axis (sharding constraints inside say only "envs")
    seeds_axis = None if mesh is None else SEEDS
    init = jax.vmap(trainer.init, in_axes=(0, None) if base_params is None else (0, None, 0),
                    spmd_axis_name=seeds_axis)
    chunk = jax.vmap(make_chunk(trainer, chunk_updates), spmd_axis_name=seeds_axis)
    if mesh is None:
        return TrainingPrograms(jax.jit(init), jax.jit(chunk), init_args, None)
    check_fits(mesh, trainer.config.num_envs, keys.shape[0])
    shardings = train_state_shardings(mesh, jax.eval_shape(init, *init_args))
    init, chunk = jax.jit(init, out_shardings=shardings), jax.jit(chunk, out_shardings=(shardings, None))
    return TrainingPrograms(in_mesh(init, mesh), in_mesh(chunk, mesh), init_args, shardings)


def train_specialists(trainer: Trainer, hparams: PPOHyperparams, keys: jax.Array, chunk_updates: int,
                      checkpoint_dir: Optional[pathlib.Path] = None, meta: Optional[dict] = None,
                      resume: bool = False, progress: Callable = print,
                      warm_start: Optional[TrainState] = None, logger=None, tag: str = "train",
                      base_params=None, mesh=None) -> TrainState:
    """Train one specialist per key ([S]) for `trainer.config.num_updates` updates; returns TrainState [S].

    With `checkpoint_dir`, the stacked state is saved after every chunk and, with
    `resume`, training continues from the latest one (same final parameters).
    warm_start: trained specialists [S] (any task with the same network sizes) whose
    parameters and observation statistics seed seed s's run (a fresh optimiser;
    environments and curriculum of this task). logger: a `logging_utils.ScalarLogger`
    (per-update metrics of seed 0 and the mean over seeds, under `tag/`). base_params: with a
    trainer that learns a residual (`make_trainer(..., base=...)`), each seed's frozen base [S].
    mesh: a (seeds x envs) device mesh (`refinery_jax.mesh`): seeds and environments split over it;
    None: one device. The returned state stays sharded.
    """
    from refinery_jax.logging_utils import progress_bar  # noqa: PLC0415

    config = trainer.config
    if config.num_updates % chunk_updates:
        raise ValueError(f"num_updates {config.num_updates} is not a multiple of chunk_updates {chunk_updates}")
    programs = training_programs(trainer, keys, hparams, chunk_updates, mesh, base_params)
    state = programs.init(*programs.init_args)
    if warm_start is not None:
        shapes = lambda t: jax.tree.map(jnp.shape, (t.params, t.obs_stats, t.critic_stats))  # noqa: E731
        if shapes(warm_start) != shapes(state):
            raise ValueError("warm_start specialists have other network or observation sizes than this task's")
        state = state.replace(params=warm_start.params, obs_stats=warm_start.obs_stats,
                              critic_stats=warm_start.critic_stats)
    if resume and checkpoint_dir is not None and latest_step(checkpoint_dir) is not None:
        state, _ = restore_checkpoint(checkpoint_dir, state, expected_meta=meta)
        if mesh is not None:  # onto this run's devices, however many the checkpoint was written from
            state = place(state, programs.shardings)
        progress(f"resumed the specialists at update {updates_done(state)}")
    import time  # noqa: PLC0415

    started = time.time()
    progress(f"training {keys.shape[0]} specialist(s): {config.num_envs} envs x {config.num_steps} steps x "
             f"{config.num_updates} updates = {config.total_env_steps:,} env steps each")
    with progress_bar(config.num_updates, "specialists", "update", initial=updates_done(state)) as bar:
        while updates_done(state) < config.num_updates:
            state, metrics = programs.chunk(state)
            m = to_host(metrics)
            rates = m.successes.sum(axis=1) / np.maximum(m.episodes.sum(axis=1), 1)
            if logger is not None:  # (the chunk's wall time, compile included, goes with its last update)
                for i in range(chunk_updates):
                    scalars = {f"{tag}/{k}": np.nanmean(v[:, i]) for k, v in m.__dict__.items()}
                    if i == chunk_updates - 1:
                        scalars[f"{tag}/wall_s"] = time.time() - started
                        scalars[f"{tag}/chunk_success"] = float(np.mean(rates))  # episodes of the whole chunk
                    logger.log(int(m.env_steps[0, i]), scalars)
            bar.update(chunk_updates)
            bar.set_postfix(success=np.round(rates, 2).tolist())
            progress(f"specialists update {updates_done(state)}/{config.num_updates}: training success per seed "
                     f"{np.round(rates, 3).tolist()}")
            if checkpoint_dir is not None:
                save_checkpoint(checkpoint_dir, updates_done(state), state, meta or {})
    return state


def saved_preset(info: dict) -> Preset:
    """The preset a run's specialists were trained with, from its config.json contents: the
    named preset with the scripts' overrides (--updates, --baseline-updates, --memory, ...)."""
    import dataclasses  # noqa: PLC0415

    from refinery_jax.ppo.presets import preset as ppo_preset  # noqa: PLC0415

    spec = ppo_preset(info["preset"], info["task"], info.get("backend", "mjx"), info.get("embodiment", "floating_hand"))
    overrides = {k: info.get("ppo", {})[k] for k in ("num_updates", "memory", "memory_size", "memory_layers",
                                                    "memory_layer_norm", "sigma")
                 if k in info.get("ppo", {})}
    return dataclasses.replace(spec, config=dataclasses.replace(spec.config, **overrides)) if overrides else spec


def load_specialists(run_dir: pathlib.Path, seeds, task: str | None = None, preset: str | None = None) -> TrainState:
    """The specialists [S] a run saved in `run_dir/specialists` (its seeds must include `seeds`,
    in order from 0; its task and preset be these, when given). Raises ValueError before any
    compile when they cannot be used here (other seeds, task or preset, unfinished, made with
    other observation sizes or a physics backend this machine cannot run), CheckpointError if
    the checkpoints belong to another run than its config.json."""
    from refinery_jax.checkpoints import template_from_shapes  # noqa: PLC0415
    from refinery_jax.envs.assembly_env import CRITIC_OBS_SIZE, POLICY_OBS_SIZE  # noqa: PLC0415

    run_dir = pathlib.Path(run_dir)
    config_file = run_dir / "config.json"
    if not config_file.exists() or latest_step(run_dir / SPECIALISTS_DIR) is None:
        raise ValueError(f"{run_dir} holds no specialists (config.json and {SPECIALISTS_DIR}/ of "
                         "experiments/train_specialist.py or experiments/refinery.py)")
    info = json.loads(config_file.read_text())
    have, want = list(info["seeds"]), list(seeds)
    if have[: len(want)] != want:
        raise ValueError(f"{run_dir} has specialists for seeds {have}; need {want}")
    for name, value in (("task", task), ("preset", preset)):
        if value is not None and info[name] != value:
            raise ValueError(f"{run_dir} was run for {name} {info[name]!r}, not {value!r}")
    sizes = info.get("observation", {"policy": 24, "critic": 44})  # runs before the observation grew
    if (sizes["policy"], sizes["critic"]) != (POLICY_OBS_SIZE, CRITIC_OBS_SIZE):
        raise ValueError(f"{run_dir}'s specialists observe {sizes['policy']} (critic {sizes['critic']}) values; this "
                         f"version's observation has {POLICY_OBS_SIZE} ({CRITIC_OBS_SIZE}): retrain them")
    spec = saved_preset(info)
    trainer = make_trainer(spec.config, demo_paths=np.zeros((1, 2, 3)) if spec.config.imitation else None)
    hparams = default_hyperparams(spec.config, imitation_weight=spec.imitation_weight, **spec.hparams)
    keys = seed_keys(have)[0]
    template = template_from_shapes(jax.eval_shape(jax.vmap(trainer.init, in_axes=(0, None)), keys, hparams))
    run_id = {k: info[k] for k in ("fingerprint", "task", "preset", "seeds")}
    state, _ = restore_checkpoint(run_dir / SPECIALISTS_DIR, template, expected_meta=run_id)
    if int(state.update[0]) != spec.config.num_updates:
        raise ValueError(f"the specialists in {run_dir} are unfinished ({int(state.update[0])} of "
                         f"{spec.config.num_updates} updates)")
    return jax.tree.map(lambda a: a[: len(want)], state)


def specialist_policy(run_dir: pathlib.Path, state: TrainState, seed: int = 0, env=None):
    """(trainer, Policy) of seed `seed` of a run's specialists (`state` from `load_specialists`),
    to act with outside training: evaluation in another environment, export, a robot.
    env: the environment to build the trainer on (default the run's own)."""
    info = json.loads((pathlib.Path(run_dir) / "config.json").read_text())
    spec = saved_preset(info)
    # (acting does not need the imitation reward's demos: placeholder paths)
    trainer = make_trainer(spec.config, env, demo_paths=np.zeros((1, 2, 3)) if spec.config.imitation else None)
    return trainer, jax.tree.map(lambda x: x[seed], trainer.policy(state))


def specialists_option(parser, flag: str, run_dir, seeds, **checks) -> TrainState:
    """`load_specialists` for a script's option `flag`: a run that cannot be used ends the
    script through `parser.error`, naming the option, before anything is written or compiled."""
    from refinery_jax.checkpoints import CheckpointError  # noqa: PLC0415

    try:
        return load_specialists(run_dir, seeds, **checks)
    except (ValueError, OSError, CheckpointError) as error:
        parser.error(f"{flag}: {error}")
