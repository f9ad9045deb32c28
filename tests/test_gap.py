"""The "real" setting for SPARR (`envs.gap`): each difference against the plain simulation,
step by step on the same episodes (C backend, bit-identical where nothing differs)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig, observation_slice
from refinery_jax.envs.gap import GapConfig, GapEnv

SIM = EnvConfig(task="square_peg_loose", episode_seconds=1.0)
ACTIONS = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(5, 6)), jnp.float32)
INIT = jnp.array([0.003, -0.002, 0.03])


@functools.lru_cache(maxsize=None)
def _runner(env):
    """(key, actions [T, A]) -> states after reset and after each action: one compile per environment."""

    @jax.jit
    def run(key, actions):
        state = env.reset(key, INIT)
        return state, jax.lax.scan(lambda s, a: (env.step(s, a),) * 2, state, actions)[1]

    return run


def _rollout(env, actions):
    return _runner(env)(jax.random.key(3), actions)


@pytest.fixture(scope="module")
def sim_run():
    env = AssemblyEnv(SIM)
    delayed = jnp.concatenate([jnp.zeros((2, 6)), ACTIONS[:-2]])  # what a 2-step delay executes
    return env, _rollout(env, ACTIONS), _rollout(env, delayed), _rollout(env, jnp.clip(1.4 * ACTIONS, -1, 1))


def test_gap_ranges_are_checked_before_anything_is_built():
    with pytest.raises(ValueError, match="goal_bias = 0.01 is outside"):
        GapConfig(goal_bias=0.01)
    with pytest.raises(ValueError, match="delay_steps = 5"):
        GapConfig(delay_steps=5)
    with pytest.raises(ValueError, match="whole number"):
        GapConfig(delay_steps=1.5)
    with pytest.raises(ValueError, match="friction"):
        GapConfig(friction=3.0)
    with pytest.raises(ValueError, match="unknown task"):
        GapConfig(task="no_such_task")
    real = GapConfig(friction=1.0, task="square_peg").real_config(SIM)
    assert real.physics.friction == 1.0 and real.task == "square_peg" and real.episode_seconds == SIM.episode_seconds


@pytest.fixture(scope="module")
def no_gap_run():
    """The rollout of `_rollout` through a GapEnv with no difference (shared: one compile)."""
    return _rollout(GapEnv(SIM, GapConfig()), ACTIONS)


def test_no_gap_is_the_simulation(sim_run, no_gap_run):
    _, (first, states), _, _ = sim_run
    gap_first, gap_states = no_gap_run
    np.testing.assert_array_equal(gap_first.obs, first.obs)
    np.testing.assert_array_equal(gap_states.obs, states.obs)
    np.testing.assert_array_equal(gap_states.success, states.success)


def test_goal_bias_moves_only_what_the_policy_sees(sim_run):
    _, (first, states), _, _ = sim_run
    gap = GapConfig(goal_bias=0.002, goal_yaw_bias=math.radians(3.0))
    env = GapEnv(SIM, gap)
    gap_first, gap_states = _rollout(env, ACTIONS)
    goal = observation_slice("goal_pos")
    shift = gap_first.obs[goal] - first.obs[goal]
    assert float(jnp.linalg.norm(shift)) == pytest.approx(0.002, abs=1e-6) and abs(float(shift[2])) < 1e-7
    # the same shift at every step (fixed per episode), and the goal-minus-fingertip part moves with it
    np.testing.assert_allclose(gap_states.obs[:, goal] - states.obs[:, goal], np.broadcast_to(shift, (5, 3)), atol=1e-6)
    relative = observation_slice("goal_minus_fingertip")
    np.testing.assert_allclose(gap_first.obs[relative] - first.obs[relative], shift, atol=1e-6)
    # the goal's yaw is turned by 3 degrees: quaternions (w, x, y, z) about z
    q_sim, q_gap = first.obs[observation_slice("goal_quat")], gap_first.obs[observation_slice("goal_quat")]
    turn = 2.0 * (math.atan2(q_gap[3], q_gap[0]) - math.atan2(q_sim[3], q_sim[0]))
    assert abs(abs(turn) - math.radians(3.0)) < 1e-4
    # the true goal (the critic's tip-minus-true-goal and success) is the simulation's: the same first state
    np.testing.assert_array_equal(gap_first.critic_obs[-7:], first.critic_obs[-7:])
    # a learner's staggered start (PPO fine-tuning in the gap) keeps the episode's bias and sensor state
    later = jax.jit(env.advance_clock)(gap_first, 3)
    assert int(later.info.step) == int(gap_first.info.step) + 3
    np.testing.assert_array_equal(later.obs[goal], gap_first.obs[goal])
    np.testing.assert_array_equal(later.wrench, gap_first.wrench)
    np.testing.assert_array_equal(jax.random.key_data(later.noise_key), jax.random.key_data(gap_first.noise_key))


def test_delay_executes_the_commands_late(sim_run):
    _, _, (_, delayed), _ = sim_run
    _, gap_states = _rollout(GapEnv(SIM, GapConfig(delay_steps=2)), ACTIONS)
    np.testing.assert_array_equal(gap_states.physics.qpos, delayed.physics.qpos)


def test_action_gain_scales_and_clips(sim_run):
    _, _, _, (_, scaled) = sim_run
    _, gap_states = _rollout(GapEnv(SIM, GapConfig(action_gain=1.4)), ACTIONS)
    np.testing.assert_array_equal(gap_states.physics.qpos, scaled.physics.qpos)


def test_friction_reaches_the_model():
    env = GapEnv(SIM, GapConfig(friction=1.2))
    model = env.env.physics.spec.mj_model
    assert np.allclose(model.geom_friction[:, 0], 1.2) and (model.npair == 0 or np.allclose(model.pair_friction[:, 0], 1.2))
    assert env.observation_size == AssemblyEnv(SIM).observation_size


GAP_SCRIPT = __import__("pathlib").Path(__file__).resolve().parents[1] / "experiments" / "gap_zero_shot.py"


def test_gap_script_refuses_bad_input_before_compiling(specialist_run, load_script_main, tmp_path):
    run, _, _ = specialist_run
    main = load_script_main(GAP_SCRIPT)
    with pytest.raises(SystemExit):  # a clearance task that does not exist
        main(["--run", str(run), "--tight-task", "no_such_task", "--out", str(tmp_path / "a")])
    (tmp_path / "b").mkdir()
    with pytest.raises(SystemExit):  # never overwritten
        main(["--run", str(run), "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit):  # not a run
        main(["--run", str(tmp_path), "--out", str(tmp_path / "c")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_gap_script_measures_every_setting_paired(specialist_run, load_script_main, tmp_path):
    import json

    run, _, _ = specialist_run
    load_script_main(GAP_SCRIPT)(["--run", str(run), "--trials", "8", "--out", str(tmp_path / "gap")])
    rows = json.loads((tmp_path / "gap" / "results.json").read_text())["rows"]
    assert list(rows) == ["sim", "perception", "friction", "clearance", "gain", "delay1", "delay2", "all"]
    assert rows["sim"]["vs_sim"]["difference"] == 0.0
    assert all(0.0 <= r["success"] <= 1.0 and r["ci95"][0] <= r["success"] <= r["ci95"][1] for r in rows.values())


def test_force_torque_reading_is_the_contact_wrench_plus_its_noise(no_gap_run):
    """Noise-free, the reading is `contact_wrench` of the state; with noise, each reading adds
    independent N(0, σ) per component (σ: force N, torque N m), fresh at every step."""
    _, gap_states = no_gap_run
    env = AssemblyEnv(SIM)
    exact = jax.vmap(env.contact_wrench)(gap_states.physics)
    np.testing.assert_array_equal(gap_states.wrench, exact)
    # the noise on one state's reading, over 400 sensor keys (no physics step: one small compile)
    noisy = GapEnv(SIM, GapConfig(ft_force_noise=2.0, ft_torque_noise=0.1))
    state = jax.tree.map(lambda x: x[-1], gap_states)
    keys = jax.random.split(jax.random.key(0), 400)
    sense = jax.jit(jax.vmap(lambda k: noisy._sense(state.replace(noise_key=k))))
    first = sense(keys)
    second = jax.vmap(noisy._sense)(first)  # the next reading of each: a new draw
    error = np.asarray(first.wrench) - np.asarray(exact[-1])
    np.testing.assert_allclose(error.std(axis=0), [2.0] * 3 + [0.1] * 3, rtol=0.15)
    assert (np.abs(error.mean(axis=0)) < 4 * np.array([2.0] * 3 + [0.1] * 3) / np.sqrt(400)).all()  # 4 standard errors
    assert np.abs(np.asarray(first.wrench) - np.asarray(second.wrench)).min() > 0
    with pytest.raises(ValueError, match="ft_force_noise"):
        GapConfig(ft_force_noise=10.0)
