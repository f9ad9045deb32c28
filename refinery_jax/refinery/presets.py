"""Named settings of the Refinery comparison, paired with the PPO presets of the same name."""

from __future__ import annotations

import dataclasses
from typing import Optional

from refinery_jax.refinery.comparison import ComparisonConfig
from refinery_jax.refinery.finetune import FineTuneConfig
from refinery_jax.success_models import DeploymentConfig, ProposalConfig


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


def configure(name: str, task: str, acquisition: str = "ucb", selection: str = "argmax",
              baseline_updates: Optional[int] = None, max_rounds: Optional[int] = None,
              eval_trials: Optional[int] = None, gmm_inits: Optional[int] = None):
    """(PPO `Preset`, `ComparisonConfig`) of preset `name` for `task`, with the experiment
    scripts' overrides (None keeps the preset's value). Raises ValueError on bad values,
    before anything is compiled."""
    from refinery_jax.ppo.presets import preset

    spec = preset(name, task)
    if spec.config.imitation is not None:
        raise ValueError(f"preset {name!r} uses the imitation reward; the Refinery scripts train specialists "
                         "without demos (train them with experiments/train_specialist.py) — use the quick preset")
    if baseline_updates is not None:
        if baseline_updates < 1 or baseline_updates % spec.chunk_updates:
            raise ValueError(f"baseline updates must be a positive multiple of the chunk size {spec.chunk_updates}")
        spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config, num_updates=baseline_updates))
    comparison = comparison_preset(name, acquisition)
    finetune = comparison.finetune
    if max_rounds is not None:
        finetune = dataclasses.replace(finetune, max_rounds=max_rounds)
    comparison = dataclasses.replace(
        comparison, finetune=finetune, eval_trials=eval_trials or comparison.eval_trials,
        gmm_inits=gmm_inits or comparison.gmm_inits, deployment=DeploymentConfig(selection=selection))
    return spec, comparison
