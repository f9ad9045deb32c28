"""Named training presets: `quick` (a strong specialist in minutes on 2 CPU cores) and
`paper` (AutoMate's recipe: LSTM actor, imitation reward from disassembly demos,
start-height curriculum).

`preset(name, task, backend)` returns the static config and the hyperparameter
overrides (passed to `default_hyperparams`); `chunk_updates` is how many updates run
between progress lines and checkpoints (it divides `num_updates`).
"""

from __future__ import annotations

import dataclasses

from refinery_jax.assets.registry import get_assembly
from refinery_jax.envs.assembly_env import EnvConfig
from refinery_jax.envs.physics import resolve_backend
from refinery_jax.imitation.reward import ImitationConfig
from refinery_jax.ppo.config import CurriculumConfig, PPOConfig

PRESETS = ("quick", "paper")


@dataclasses.dataclass(frozen=True)
class Preset:
    config: PPOConfig
    hparams: dict            # overrides for default_hyperparams (incl. reward_weights)
    imitation_weight: float  # weight of the imitation term (used iff config.imitation is set)
    chunk_updates: int


def preset(name: str, task: str, backend: str = "auto", embodiment: str = "floating_hand") -> Preset:
    """The named preset for `task` and `embodiment` on physics `backend` ('auto' is resolved
    here, so configs and fingerprints name the backend that ran). ValueError for unknown
    names, before anything compiles."""
    from refinery_jax.assets.scene import EMBODIMENTS  # noqa: PLC0415

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    if embodiment not in EMBODIMENTS:
        raise ValueError(f"unknown embodiment {embodiment!r}; choose one of {', '.join(EMBODIMENTS)}")
    get_assembly(task)  # validates the task name
    env = EnvConfig(task=task, embodiment=embodiment, backend=resolve_backend(backend))
    if name == "quick":
        # 256 staggered environments x 25 steps, 4 epochs of 4 minibatches, lr 1e-3 decaying to
        # 0, a short horizon (γ 0.95) and little action noise; an MLP actor. On square_peg
        # (C backend, 2 CPU cores) 120 updates left training success at 0.78 (0.87 on fresh
        # trials with mean actions); 200 updates = 1.28 M env steps (README, "Specialists").
        config = PPOConfig(env=env, num_envs=256, num_steps=25, num_updates=200, update_epochs=4, num_minibatches=4,
                           actor_hidden=(128, 128), critic_hidden=(128, 128))
        return Preset(config=config, hparams=dict(learning_rate=1e-3, gamma=0.95, init_log_std=-1.0),
                      imitation_weight=0.0, chunk_updates=10)
    # paper: AutoMate's PPO numbers (128 envs, horizon 32, 8 mini-epochs, lr 1e-4, γ 0.99, λ 0.95,
    # clip 0.2, entropy 0; actor LSTM 256 x 2 then MLP [256, 128, 64] ELU, MLP critic) for ~25 M
    # env steps, with the imitation reward and the start-height curriculum.
    config = PPOConfig(env=env, num_envs=128, num_steps=32, num_updates=6100, update_epochs=8, num_minibatches=4,
                       actor_hidden=(256, 128, 64), critic_hidden=(256, 128, 64), memory="lstm", memory_size=256,
                       memory_layers=2, imitation=ImitationConfig(num_demos=100), curriculum=CurriculumConfig())
    return Preset(config=config, hparams=dict(learning_rate=1e-4), imitation_weight=0.1, chunk_updates=50)
