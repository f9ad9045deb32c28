"""Success models over initial conditions θ: a GP + acquisitions for BO-guided
fine-tuning (Refinery Algorithm 1) and a GMM for deployment-time selection
(Algorithm 2).

Typical use::

    state = fit_gp(key_fit, thetas, success, box_low, box_high, weights=mask)
    proposals = propose(key_prop, state, box_low, box_high, ProposalConfig(q=8))

    gmm = fit_success_gmm(key_gmm, thetas, success)          # K chosen by BIC
    reset = make_deployment_sampler(gmm, box_low, box_high)  # key -> init [d]
"""

from refinery_jax.success_models.acquisition import (
    ACQUISITIONS,
    TARGETS,
    AcquisitionParams,
    ProposalConfig,
    acquisition_values,
    expected_improvement,
    log_expected_improvement,
    log_h,
    log_probability_of_improvement,
    probability_of_improvement,
    propose,
    ucb,
)
from refinery_jax.success_models.gmm import (
    DeploymentConfig,
    GMMConfig,
    GMMParams,
    GMMState,
    fit_gmm,
    fit_gmm_bic,
    fit_success_gmm,
    gmm_distribution,
    gmm_log_prob,
    gmm_sample,
    init_gmm,
    make_deployment_sampler,
    num_parameters,
    run_em,
    select_initialisations,
)
from refinery_jax.success_models.gp import (
    GPConfig,
    GPParams,
    GPState,
    condition_gp,
    fit_gp,
    posterior,
    posterior_one,
)

__all__ = [
    "ACQUISITIONS",
    "TARGETS",
    "AcquisitionParams",
    "DeploymentConfig",
    "GMMConfig",
    "GMMParams",
    "GMMState",
    "GPConfig",
    "GPParams",
    "GPState",
    "ProposalConfig",
    "acquisition_values",
    "condition_gp",
    "expected_improvement",
    "fit_gmm",
    "fit_gmm_bic",
    "fit_gp",
    "fit_success_gmm",
    "gmm_distribution",
    "gmm_log_prob",
    "gmm_sample",
    "init_gmm",
    "log_expected_improvement",
    "log_h",
    "log_probability_of_improvement",
    "make_deployment_sampler",
    "num_parameters",
    "posterior",
    "posterior_one",
    "probability_of_improvement",
    "propose",
    "run_em",
    "select_initialisations",
    "ucb",
]
