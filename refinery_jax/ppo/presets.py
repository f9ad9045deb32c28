"""Named training presets: `quick` (CPU, minutes) and `paper` (AutoMate-like budgets, GPU).

`preset(name, task)` returns the static config and the hyperparameter overrides
(passed to `default_hyperparams`); `chunk_updates` is how many updates run between
progress lines and checkpoints (it divides `num_updates`).
"""

from __future__ import annotations

import dataclasses

from refinery_jax.assets.registry import get_assembly
from refinery_jax.envs.assembly_env import EnvConfig
from refinery_jax.imitation.reward import ImitationConfig
from refinery_jax.ppo.config import CurriculumConfig, PPOConfig

PRESETS = ("quick", "paper")


@dataclasses.dataclass(frozen=True)
class Preset:
    config: PPOConfig
    hparams: dict            # overrides for default_hyperparams (incl. reward_weights)
    imitation_weight: float  # weight of the imitation term (used iff config.imitation is set)
    chunk_updates: int


def preset(name: str, task: str) -> Preset:
    """The named preset for `task` (floating hand); raises ValueError for unknown names."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    get_assembly(task)  # validates the task name
    env = EnvConfig(task=task)
    if name == "quick":
        # ~10 minutes on 2 CPU cores (~420 k env steps at ~750 steps/s plus compiles). Tuned on
        # square_peg: 8 epochs per rollout, lr 1e-3, a short horizon (γ 0.95) and little action noise
        # learn fastest per env step; no imitation term (demo generation would cost a compile).
        config = PPOConfig(env=env, num_envs=64, num_steps=25, num_updates=260, update_epochs=8, num_minibatches=4,
                           actor_hidden=(128, 128), critic_hidden=(128, 128))
        return Preset(config=config, hparams=dict(learning_rate=1e-3, gamma=0.95, init_log_std=-1.0),
                      imitation_weight=0.0, chunk_updates=10)
    # paper: AutoMate's PPO numbers (128 envs, horizon 32, 8 mini-epochs, lr 1e-4, γ 0.99, λ 0.95,
    # clip 0.2, entropy 0; MLP [256, 128, 64] ELU actor, asymmetric critic) for ~25 M env steps,
    # with the imitation reward and the start-height curriculum. An MLP replaces their LSTM.
    config = PPOConfig(env=env, num_envs=128, num_steps=32, num_updates=6100, update_epochs=8, num_minibatches=4,
                       actor_hidden=(256, 128, 64), critic_hidden=(256, 128, 64), imitation=ImitationConfig(num_demos=100),
                       curriculum=CurriculumConfig())
    return Preset(config=config, hparams=dict(learning_rate=1e-4), imitation_weight=0.1, chunk_updates=50)
