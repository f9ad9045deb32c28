"""evaluate(policy, inits, key): shapes, modes, the success semantics; success maps and their files."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refinery_jax.envs.assembly_env import AssemblyEnv
from refinery_jax.evaluation import grid_inits, make_evaluate, save_success_map, success_map, summarize
from refinery_jax.evaluation.success_map import SuccessMap
from refinery_jax.ppo import ActorCritic, Policy, init_stats
from refinery_jax.ppo.networks import initial_carry

from test_ppo import EVAL_BATCH, EVAL_N, SMOKE

N = EVAL_N  # one shape (and the env and network of tests/test_ppo.py): one compile, shared via the cache


@pytest.fixture(scope="module")
def setup():
    env = AssemblyEnv(SMOKE.env)
    model = ActorCritic(env.action_size, SMOKE.actor_hidden, SMOKE.critic_hidden, SMOKE.activation)
    params = model.init(jax.random.key(0), jnp.zeros(env.observation_size), jnp.zeros(env.critic_observation_size),
                        initial_carry(model, (), env.observation_size))
    policy = Policy(params=params, obs_stats=init_stats(env.observation_size))
    still = Policy(params=jax.tree.map(jnp.zeros_like, params), obs_stats=policy.obs_stats)  # action = mean = 0
    return env, policy, still, make_evaluate(env, model, batch_size=EVAL_BATCH)


def _inits(env):
    high = jnp.array([0.0, 0.0, env.assembly.depth + 0.015])
    return jnp.stack([jnp.zeros(3), jnp.zeros(3), high, high])  # two inserted starts, two above the hole


def test_shapes_and_success_semantics(setup):
    env, _, still, evaluate = setup
    result = evaluate(still, _inits(env), jax.random.key(0))
    assert result.success.shape == (N,) and result.success.dtype == bool
    assert result.returns.shape == (N,) and result.lengths.shape == (N,)
    # holding still: inserted stays inserted (success at the last step), hovering never succeeds
    np.testing.assert_array_equal(result.success, [True, True, False, False])
    np.testing.assert_array_equal(result.lengths, env.config.episode_steps)
    # returns sum the env's reward: the success term pays every step for the inserted starts
    assert float(result.returns[0]) > float(result.returns[2]) + env.config.episode_steps * 0.9


def test_deterministic_is_repeatable_and_sampling_differs(setup):
    env, policy, _, evaluate = setup
    inits, key = _inits(env), jax.random.key(1)
    a = evaluate(policy, inits, key)
    b = evaluate(policy, inits, key, True)
    np.testing.assert_array_equal(a.returns, b.returns)
    sampled = evaluate(policy, inits, key, False)
    assert not np.array_equal(np.asarray(a.returns), np.asarray(sampled.returns))
    # the key also draws the nuisances (socket pose, noise): another key, other returns
    assert not np.array_equal(np.asarray(a.returns), np.asarray(evaluate(policy, inits, jax.random.key(2)).returns))


def test_bad_inits_are_rejected(setup):
    env, policy, _, evaluate = setup
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        evaluate(policy, jnp.zeros((N, 2)), jax.random.key(0))


# ---------------------------------------------------------------------------
# success maps (with a stand-in evaluate: no simulation needed)
# ---------------------------------------------------------------------------

class _Result:
    def __init__(self, success):
        self.success = success


def _fake_evaluate(policy, inits, key):
    """Succeeds when θ_x > 0, or with probability 1/2 (by the key) at the upper z slice."""
    inits = np.asarray(inits)
    coin = np.asarray(jax.random.bernoulli(key, 0.5, (len(inits),)))
    return _Result(np.where(inits[:, 2] > 0.02, coin, inits[:, 0] > 0))


def test_grid_inits_cover_cell_centres():
    x, y, z, inits = grid_inits([-1.0, -1.0, 0.0], [1.0, 1.0, 1.0], nx=4, ny=2, nz=1, trials=3)
    np.testing.assert_allclose(x, [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(y, [-0.5, 0.5])
    np.testing.assert_allclose(z, [0.5])
    assert inits.shape == (4 * 2 * 3, 3)
    np.testing.assert_allclose(inits[:3], [[-0.75, -0.5, 0.5]] * 3)  # trials of a cell are adjacent
    np.testing.assert_allclose(inits[3], [-0.25, -0.5, 0.5])


def test_success_map_rates_and_summary():
    smap = success_map(_fake_evaluate, None, jax.random.key(0), [-0.01, -0.01, 0.01], [0.01, 0.01, 0.03],
                       nx=4, ny=3, nz=2, trials=8)
    assert smap.rate.shape == (2, 3, 4)
    np.testing.assert_array_equal(smap.rate[0], [[0, 0, 1, 1]] * 3)  # lower slice: success iff x > 0
    stats = summarize(smap)
    assert stats["spatial_std_per_z"][0] == pytest.approx(0.5)
    assert stats["spatial_std"] == pytest.approx(float(np.std(smap.rate)))
    assert stats["cells"] == 24 and stats["trials_per_cell"] == 8
    assert 0.0 < stats["sampling_std"] < 0.2  # the coin-flip slice carries binomial noise
    noise_var = np.mean(smap.rate * (1 - smap.rate) / 7)
    assert stats["spatial_std_denoised"] == pytest.approx(np.sqrt(max(0.0, np.var(smap.rate) - noise_var)))
    assert stats["spatial_std_denoised"] < stats["spatial_std"]


def test_save_success_map_writes_png_npz_json(tmp_path):
    smap = SuccessMap(x=np.array([-0.005, 0.005]), y=np.array([0.0]), z=np.array([0.02, 0.03]),
                      rate=np.array([[[0.25, 1.0]], [[0.0, 0.5]]]), trials=4)
    paths = save_success_map(smap, tmp_path / "maps")
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    saved = np.load(paths["npz"])
    np.testing.assert_array_equal(saved["rate"], smap.rate)
    np.testing.assert_array_equal(saved["z"], smap.z)
    stats = json.loads(open(paths["json"]).read())
    assert stats["mean"] == pytest.approx(0.4375) and stats["min_cell"] == 0.0 and stats["max_cell"] == 1.0
