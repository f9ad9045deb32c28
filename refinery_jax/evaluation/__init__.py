"""Evaluation over given initial conditions, and success maps over θ."""

from refinery_jax.evaluation.evaluate import EvalResult, make_evaluate, make_evaluate_actor
from refinery_jax.evaluation.success_map import SuccessMap, grid_inits, save_success_map, success_map, summarize

__all__ = ["EvalResult", "SuccessMap", "grid_inits", "make_evaluate", "make_evaluate_actor", "save_success_map", "success_map", "summarize"]
