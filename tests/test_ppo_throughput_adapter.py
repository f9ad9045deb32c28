"""The PPO benchmark's Brax adapter: shapes and pytree structure under Brax's training wrappers.

Checked with `jax.eval_shape` only (tracing, no MJX compile): reset and step must give the
observation dict Brax's networks read, and a step must return the same pytree structure,
shapes and dtypes it was given (Brax scans over it and auto-resets with `jnp.where`).
"""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import pytest

from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "ppo_throughput.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("ppo_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_brax_adapter_shapes(benchmark):
    pytest.importorskip("brax", reason="Brax is the optional 'bench' extra: pip install -e '.[bench]'")
    from brax.envs.base import Env
    from brax.envs.wrappers import training

    env = AssemblyEnv(EnvConfig())
    adapter = benchmark.make_brax_adapter(env)
    assert isinstance(adapter, Env)
    assert adapter.action_size == env.action_size == 6
    wrapped = training.wrap(adapter, episode_length=env.config.episode_steps)
    batch = 4
    state = jax.eval_shape(wrapped.reset, jax.random.split(jax.random.PRNGKey(0), batch))
    for key, size in adapter.observation_size.items():
        assert state.obs[key].shape == (batch,) + tuple(size)
    assert state.obs["state"].shape == (batch, env.observation_size)
    assert state.obs["privileged_state"].shape == (batch, env.critic_observation_size)
    assert state.reward.shape == state.done.shape == (batch,)
    assert {"steps", "truncation", "first_pipeline_state", "first_obs"} <= set(state.info)

    stepped = jax.eval_shape(wrapped.step, state, jax.ShapeDtypeStruct((batch, env.action_size), jnp.float32))
    assert jax.tree.structure(stepped) == jax.tree.structure(state)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), stepped) == jax.tree.map(lambda a: (a.shape, a.dtype), state)
