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


@pytest.fixture()
def specialist_run(tmp_path):
    """(run dir, trainer, policy): a finished quick-preset specialist run with random weights,
    as train_specialist.py leaves it (for scripts that load one)."""
    import json

    import jax
    import numpy as np

    from refinery_jax.checkpoints import save_checkpoint, template_from_shapes
    from refinery_jax.envs.assembly_env import CRITIC_OBS_SIZE, POLICY_OBS_SIZE
    from refinery_jax.ppo import default_hyperparams, make_trainer
    from refinery_jax.ppo.presets import preset
    from refinery_jax.refinery.specialists import SPECIALISTS_DIR, seed_keys

    spec = preset("quick", "square_peg")
    trainer = make_trainer(spec.config)
    hparams = default_hyperparams(spec.config, **spec.hparams)
    # the train state's shapes only (nothing compiled), random weights, unit observation statistics
    state = template_from_shapes(jax.eval_shape(jax.vmap(trainer.init, in_axes=(0, None)), seed_keys([0])[0],
                                                hparams))
    state = state.replace(update=np.full(1, spec.config.num_updates, np.int32), params=jax.tree.map(
        lambda a: np.asarray(jax.random.normal(jax.random.key(a.size), a.shape) * 0.3, a.dtype), state.params),
        obs_stats=state.obs_stats.replace(var=np.ones_like(state.obs_stats.var)))
    run = tmp_path / "run"
    info = {"fingerprint": "f", "task": "square_peg", "preset": "quick", "seeds": [0], "backend": spec.config.env.backend,
            "ppo": {"num_updates": spec.config.num_updates},
            "observation": {"policy": POLICY_OBS_SIZE, "critic": CRITIC_OBS_SIZE}}
    (run / SPECIALISTS_DIR).mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(info))
    save_checkpoint(run / SPECIALISTS_DIR, spec.config.num_updates, state,
                    {"fingerprint": "f", "task": "square_peg", "preset": "quick", "seeds": [0]})
    return run, trainer, jax.tree.map(lambda x: x[0], trainer.policy(state))
