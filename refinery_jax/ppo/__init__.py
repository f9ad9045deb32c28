"""PPO specialists: jit/vmap-able training with an optional imitation reward."""

from refinery_jax.ppo.config import (
    IMITATION_TERM,
    CurriculumConfig,
    PPOConfig,
    PPOHyperparams,
    default_hyperparams,
)
from refinery_jax.ppo.networks import ActorCritic, Policy, action_distribution, policy_action
from refinery_jax.ppo.normalization import RunningStats, init_stats, normalize, update_stats
from refinery_jax.ppo.presets import PRESETS, Preset, preset
from refinery_jax.ppo.train import (
    Trainer,
    TrainState,
    Transition,
    UpdateMetrics,
    curriculum_step,
    learning_rate_schedule,
    make_chunk,
    make_optimizer,
    make_train,
    make_trainer,
)

__all__ = [
    "IMITATION_TERM",
    "PRESETS",
    "Preset",
    "ActorCritic",
    "CurriculumConfig",
    "PPOConfig",
    "PPOHyperparams",
    "Policy",
    "RunningStats",
    "TrainState",
    "Trainer",
    "Transition",
    "UpdateMetrics",
    "action_distribution",
    "curriculum_step",
    "learning_rate_schedule",
    "default_hyperparams",
    "init_stats",
    "make_chunk",
    "make_optimizer",
    "make_train",
    "make_trainer",
    "normalize",
    "policy_action",
    "preset",
    "update_stats",
]
