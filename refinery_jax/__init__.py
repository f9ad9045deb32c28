"""refinery_jax: Refinery (active fine-tuning + deployment-time optimisation) in JAX/MJX."""

from refinery_jax.xla_flags import ensure_cpu_flags

ensure_cpu_flags()  # must run before JAX initialises its backend

__version__ = "0.1.0"
