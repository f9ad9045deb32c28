"""Learning from demonstrations: the imitation reward from reversed disassembly demonstrations
(soft-DTW, AutoMate), and `mlp_bc`, behaviour cloning with an MLP (the simplest baseline)."""

from refinery_jax.imitation.reward import (
    ImitationConfig,
    ImitationInfo,
    fresh_window,
    imitation_reward,
    push_window,
)
from refinery_jax.imitation.soft_dtw import soft_dtw, soft_dtw_prefixes, softmin, squared_distances

__all__ = [
    "ImitationConfig",
    "ImitationInfo",
    "fresh_window",
    "imitation_reward",
    "push_window",
    "soft_dtw",
    "soft_dtw_prefixes",
    "softmin",
    "squared_distances",
]
