"""Refinery: BO-guided fine-tuning (Algorithm 1), GMM deployment (Algorithm 2), and the comparison."""

from refinery_jax.refinery.comparison import (
    KEY_STREAMS,
    METHODS,
    Comparison,
    ComparisonConfig,
    ComparisonResult,
    FreshEval,
    comparison_table,
    format_table,
    key_streams,
    make_comparison,
    run_comparison,
    run_rounds,
)
from refinery_jax.refinery.deployment import (
    MIN_SUCCESSES,
    DeploymentModel,
    concentration,
    deployment_sampler,
    fit_deployment,
)
from refinery_jax.refinery.finetune import (
    FineTune,
    FineTuneConfig,
    FineTuneHistory,
    FineTuneState,
    expected_normal_range,
    gp_data,
    has_converged,
    make_finetune,
    proposal_sampler,
)
from refinery_jax.refinery.stats import cell_variance, summarize_seeds, t_quantile_975, wilson_interval

__all__ = [
    "KEY_STREAMS", "METHODS", "MIN_SUCCESSES", "Comparison", "ComparisonConfig", "ComparisonResult",
    "DeploymentModel", "FineTune", "FineTuneConfig", "FineTuneHistory", "FineTuneState", "FreshEval",
    "cell_variance", "comparison_table", "concentration", "deployment_sampler", "fit_deployment",
    "expected_normal_range", "format_table", "gp_data", "has_converged", "key_streams", "make_comparison", "make_finetune", "proposal_sampler",
    "run_comparison", "run_rounds", "summarize_seeds", "t_quantile_975", "wilson_interval",
]
