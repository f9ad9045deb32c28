"""Named settings of the Refinery comparison, paired with the PPO presets of the same name."""

from __future__ import annotations

from refinery_jax.refinery.comparison import ComparisonConfig
from refinery_jax.refinery.finetune import FineTuneConfig
from refinery_jax.success_models import ProposalConfig


def comparison_preset(name: str, acquisition: str = "ucb") -> ComparisonConfig:
    """`quick` (2 CPU cores: 128 θ per GP round, at most 8 rounds of 10 PPO updates) or
    `paper` (1000 θ per round as the paper's evaluations, up to 30 rounds). Both report
    every row on 1000 fresh trials and fit the GMMs on N = 1000 (Algorithm 2)."""
    proposal = ProposalConfig(kind=acquisition, q=32)
    if name == "quick":
        finetune = FineTuneConfig(eval_points=128, updates_per_round=10, max_rounds=8, proposal=proposal)
    elif name == "paper":
        finetune = FineTuneConfig(eval_points=1000, updates_per_round=10, max_rounds=30, learning_rate=1e-4,
                                  proposal=proposal)
    else:
        raise ValueError(f"unknown preset {name!r}; presets: quick, paper")
    return ComparisonConfig(eval_trials=1000, gmm_inits=1000, finetune=finetune)
