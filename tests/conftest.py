"""Test set-up: MJX's CPU XLA flag and a persistent compilation cache, before JAX starts."""

import os

# JAX's CPU linear algebra calls OpenBLAS; its threads fight XLA's for 2 cores and made
# single GP fits vary 100x under load. Must be set before numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# The suite runs MJX beside C MuJoCo in one process: MJX on CPU needs its XLA flag, set
# before JAX initialises (the C backend runs slower with it, which the tests can afford).
from refinery_jax.xla_flags import use_mjx_cpu_flags  # noqa: E402

use_mjx_cpu_flags()

# Compiles dominate test time on CPU; reuse them across runs of the suite (and with the
# experiment scripts). The cache lives outside the checkout so fresh clones share it.
from refinery_jax.compile_cache import enable_compile_cache  # noqa: E402

enable_compile_cache()


import importlib.util  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def load_script_main():
    """`load(path) -> main`: an experiment script's `main(argv)`, imported in-process so its
    argument and directory guards are tested without starting a Python per case."""

    def load(path):
        spec = importlib.util.spec_from_file_location(path.stem + "_script", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main

    return load
