"""PPO configuration: static shapes and counts vs traced values, and named presets.

`PPOConfig` (frozen, hashable) fixes everything that changes array shapes or the
compiled program; `PPOHyperparams` (a pytree) holds the values one may `vmap` over
in an ablation: learning rate, discount, clipping, entropy and the reward weights.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from refinery_jax.envs.assembly_env import EnvConfig
from refinery_jax.imitation.reward import ImitationConfig

IMITATION_TERM = "imitation"
# the usual size of each kind of actor memory: LSTM width, observations in the history
DEFAULT_MEMORY_SIZE = {"lstm": 128, "history": 4}


@dataclasses.dataclass(frozen=True)
class CurriculumConfig:
    """AutoMate's curriculum on the start height, as an offset added to θ_z.

    After each update the offset rises by `step` when the success rate of the episodes
    that ended in that rollout exceeds `raise_above`, falls when below `lower_below`,
    and stays within [minimum, maximum]. Negative offsets start the plug lower (easier);
    keep `minimum` above -(init_height[0]) so the tip never starts inside the socket.
    """

    initial: float = -0.008
    minimum: float = -0.008
    maximum: float = 0.0
    step: float = 0.001
    raise_above: float = 0.8
    lower_below: float = 0.5

    def __post_init__(self):
        if not self.minimum <= self.initial <= self.maximum or self.step <= 0:
            raise ValueError(f"bad curriculum: {self}")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    env: EnvConfig = EnvConfig()
    num_envs: int = 64
    num_steps: int = 25             # rollout horizon per update
    num_updates: int = 100
    update_epochs: int = 4
    num_minibatches: int = 4
    actor_hidden: tuple[int, ...] = (128, 128)
    critic_hidden: tuple[int, ...] = (128, 128)
    activation: str = "elu"
    memory: str = "none"            # the actor's memory of the episode: "none", "lstm", "history" (networks.py)
    memory_size: int = 128          # LSTM width, or observations in the history (DEFAULT_MEMORY_SIZE)
    memory_layers: int = 1          # LSTM layers
    memory_layer_norm: bool = False  # LayerNorm on the LSTM's output (Factory's actor)
    sigma: str = "fixed"            # the log-std: "fixed" (a learned vector) or "linear" (a state-dependent head)
    asymmetric_critic: bool = True  # critic reads the privileged observation
    normalize_obs: bool = True
    obs_clip: float = 5.0
    anneal_lr: bool = True          # linear decay to 0 over the run
    stagger_starts: bool = True     # environments start their first episodes at random points of it
    imitation: Optional[ImitationConfig] = None  # None: no imitation reward (no demos needed)
    curriculum: Optional[CurriculumConfig] = None

    def __post_init__(self):
        if min(self.num_envs, self.num_steps, self.num_updates, self.update_epochs, self.num_minibatches) < 1:
            raise ValueError(f"counts must be positive: {self}")
        if self.num_envs % self.num_minibatches:
            raise ValueError(f"num_envs = {self.num_envs} not divisible by num_minibatches = {self.num_minibatches} "
                             "(a minibatch is whole environments' rollouts)")
        if self.memory not in ("none", "lstm", "history"):
            raise ValueError(f"unknown memory {self.memory!r}; choose none, lstm or history")
        if self.memory_size < 1 or self.memory_layers < 1 or (self.memory == "history" and self.memory_size < 2):
            raise ValueError(f"bad memory size: {self.memory_size} x {self.memory_layers}")
        if self.memory_layer_norm and self.memory != "lstm":
            raise ValueError("memory_layer_norm needs memory='lstm'")
        if self.sigma not in ("fixed", "linear"):
            raise ValueError(f"unknown sigma {self.sigma!r}; choose fixed or linear")
        if self.activation not in ("elu", "relu", "tanh", "silu"):
            raise ValueError(f"unknown activation {self.activation!r}")

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def total_env_steps(self) -> int:
        return self.batch_size * self.num_updates


@struct.dataclass
class PPOHyperparams:
    """Traced training values; every leaf may carry a leading batch axis under `vmap`."""

    learning_rate: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    clip_eps: jax.Array
    value_clip: jax.Array
    ent_coef: jax.Array
    vf_coef: jax.Array
    max_grad_norm: jax.Array
    init_log_std: jax.Array
    reward_scale: jax.Array     # rewards are multiplied by this before GAE (metrics stay unscaled)
    reward_weights: dict        # env term name (and "imitation") -> weight


def default_hyperparams(config: PPOConfig, imitation_weight: float = 0.1, **overrides) -> PPOHyperparams:
    """Hyperparameters with the env's reward weights (plus the imitation weight if enabled)."""
    weights = {name: jnp.asarray(w, jnp.float32) for name, w in config.env.reward_weights}
    if config.imitation is not None:
        weights[IMITATION_TERM] = jnp.asarray(imitation_weight, jnp.float32)
    values = dict(learning_rate=3e-4, gamma=0.99, gae_lambda=0.95, clip_eps=0.2, value_clip=1.0, ent_coef=0.0,
                  vf_coef=0.5, max_grad_norm=1.0, init_log_std=-0.5, reward_scale=0.1)
    weight_overrides = overrides.pop("reward_weights", {})
    unknown = set(overrides) - set(values)
    if unknown:
        raise ValueError(f"unknown hyperparameters {sorted(unknown)}; known: {sorted(values)}")
    values.update(overrides)
    for name, w in weight_overrides.items():
        if name not in weights:
            raise ValueError(f"no reward term {name!r}; terms: {sorted(weights)}")
        weights[name] = jnp.asarray(w, jnp.float32)
    return PPOHyperparams(reward_weights=weights, **{k: jnp.asarray(v, jnp.float32) for k, v in values.items()})
