"""Test set-up: the CPU XLA flag and a persistent compilation cache, before JAX starts."""

import os
import pathlib

# JAX's CPU linear algebra calls OpenBLAS; its threads fight XLA's for 2 cores and made
# single GP fits vary 100x under load. Must be set before numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import refinery_jax  # noqa: F401  (sets XLA_FLAGS before JAX initialises)
import jax

# Compiles dominate test time on CPU; reuse them across runs of the suite.
# The cache lives outside the checkout so fresh clones on the same machine share it.
_CACHE = pathlib.Path(os.environ.get("REFINERY_JAX_CACHE", pathlib.Path.home() / ".cache" / "refinery_jax" / "jax"))
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
