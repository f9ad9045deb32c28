"""SPARR's learner and robot loop (issue 20) against hand-computed cases:

- the ensemble target's minimum over a random pair; the TD target without bootstrap; the
  critics' fixed point; RLPD's update as `utd` critic steps on consecutive slices, then one
  actor step; the actor climbing the critics to a one-step bandit's best action;
- replay: the half-and-half batches, `add_episode`'s traced length, the demo growth rule;
- the residual's inputs hold no goal or socket pose (fails if someone adds one); the base
  action clipped before the residual is added;
- bad input fails before anything compiles.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refinery_jax.envs.gap import ROBOT_OBS_SIZE
from refinery_jax.offpolicy.replay import add_episode, grows_demos, sample_half_and_half, transition_buffer
from refinery_jax.offpolicy.sac import SAC, SACConfig, Transition, ensemble_minimum

SMALL = SACConfig(hidden=(16, 16), num_critics=4, batch_size=8, utd=3)


def _batch(n, obs=3, critic=5, action=2, reward=0.0, mask=1.0, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    return Transition(obs=f(n, obs), critic_obs=f(n, critic), action=jnp.tanh(f(n, action)),
                      reward=jnp.full(n, reward), mask=jnp.full(n, mask), next_obs=f(n, obs),
                      next_critic_obs=f(n, critic))


def test_ensemble_minimum_is_the_min_of_a_random_pair():
    q = jnp.array([[1.0, 5.0, 3.0], [4.0, 2.0, 6.0], [0.5, 9.0, 7.0], [8.0, 8.0, 0.0]])
    pairs = {pair: np.minimum(q[pair[0]], q[pair[1]]) for pair in itertools.combinations(range(4), 2)}
    seen = set()
    for k in range(60):
        got = np.asarray(ensemble_minimum(q, jax.random.key(k), 2))
        match = [p for p, v in pairs.items() if np.array_equal(v, got)]
        assert match, f"{got} is not the minimum of any pair of distinct critics"
        seen.update(match)
    assert len(seen) == 6  # every pair gets drawn
    np.testing.assert_array_equal(ensemble_minimum(q, jax.random.key(0), 4), q.min(axis=0))


def test_td_target_stops_at_a_real_end_and_bootstraps_otherwise():
    sac = SAC(SMALL, 3, 5, 2)
    state = sac.init(jax.random.key(0))
    td_target = jax.jit(sac.td_target)
    ended = _batch(6, reward=0.7, mask=0.0)
    np.testing.assert_allclose(td_target(state, ended, jax.random.key(1)), 0.7, rtol=1e-6)
    going = _batch(6, reward=0.7, mask=1.0)
    key = jax.random.key(1)

    @jax.jit
    def by_hand(state, batch, key):
        k_action, k_subset = jax.random.split(key)
        action, log_prob = sac.policy(state.actor, batch.next_obs).sample_and_log_prob(seed=k_action)
        q = sac.critics.apply(state.target_critics, batch.next_critic_obs, action)
        return 0.7 + 0.99 * (ensemble_minimum(q, k_subset, 2) - 1.0 * log_prob)  # initial temperature 1

    np.testing.assert_allclose(td_target(state, going, key), by_hand(state, going, key), rtol=1e-5, atol=1e-6)


def test_critics_reach_the_fixed_point_of_terminal_rewards():
    """Every transition ends with reward r: the fixed point is Q = r for every critic."""
    sac = SAC(SACConfig(hidden=(32, 32), num_critics=4, batch_size=32, utd=10, learning_rate=1e-3), 3, 5, 2)
    state = sac.init(jax.random.key(0))
    batch = _batch(320, reward=0.7, mask=0.0)
    update = jax.jit(sac.update)
    for i in range(100):
        state, metrics = update(state, batch, jax.random.key(i))
    q = sac.critics.apply(state.critics, batch.critic_obs, batch.action)
    assert q.shape == (4, 320)
    error = np.abs(np.asarray(q) - 0.7)
    assert error.mean() < 0.02 and error.max() < 0.15, (error.mean(), error.max())  # from 0.3 at the start


def test_update_is_utd_critic_steps_on_consecutive_slices_then_one_actor_step():
    sac = SAC(SMALL, 3, 5, 2)
    state = sac.init(jax.random.key(0))
    batch = _batch(SMALL.utd * SMALL.batch_size, reward=0.3, mask=1.0)
    key = jax.random.key(7)
    got, metrics = jax.jit(sac.update)(state, batch, key)
    k_critic, k_actor = jax.random.split(key)
    expected, critic_step = state, jax.jit(sac.critic_step)
    for i, k in enumerate(jax.random.split(k_critic, SMALL.utd)):
        part = jax.tree.map(lambda x: x[i * SMALL.batch_size: (i + 1) * SMALL.batch_size], batch)
        expected, _ = critic_step(expected, part, k)
    expected, _ = jax.jit(sac.actor_step)(expected, part, k_actor)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), got.critics, state.critics)
    assert max(jax.tree.leaves(moved)) > 0
    # the targets trail the critics by Polyak averaging: after 3 steps of tau = 0.005 they moved less
    target_move = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                                                   got.target_critics, state.target_critics)))
    assert 0 < target_move < max(jax.tree.leaves(moved))
    assert set(metrics) == {"actor_loss", "entropy", "temperature", "critic_loss"}


def test_the_actor_climbs_the_critics_on_a_one_step_bandit():
    """Off-policy data of one-step episodes with uniform actions and reward a0 - |a1|: the critics
    learn Q = r, and the deterministic action goes to the best one, (1, 0)."""
    rng = np.random.default_rng(1)
    n = 512
    action = jnp.asarray(rng.uniform(-1, 1, size=(n, 2)), jnp.float32)
    obs = jnp.ones((n, 3))
    batch = Transition(obs=obs, critic_obs=jnp.ones((n, 5)), action=action,
                       reward=action[:, 0] - jnp.abs(action[:, 1]), mask=jnp.zeros(n), next_obs=obs,
                       next_critic_obs=jnp.ones((n, 5)))
    sac = SAC(SACConfig(hidden=(32, 32), num_critics=4, batch_size=256, utd=2, learning_rate=1e-3,
                        init_temperature=0.01), 3, 5, 2)
    state = sac.init(jax.random.key(0))
    update = jax.jit(sac.update)
    start = np.asarray(sac.mode(state, obs[:1]))[0]
    for i in range(100):
        state, _ = update(state, batch, jax.random.key(i))
    best = np.asarray(sac.mode(state, obs[:1]))[0]
    assert best[0] > 0.9 and abs(best[1]) < 0.2, (start, best)


def test_sac_config_is_checked():
    with pytest.raises(ValueError, match="num_min_critics"):
        SACConfig(num_critics=2, num_min_critics=3)
    with pytest.raises(ValueError, match="even"):
        SACConfig(batch_size=7)


def test_batches_are_half_demonstrations_half_online_in_every_slice():
    utd, batch = 3, 8
    row = {"x": jnp.zeros(2), "source": jnp.zeros(())}
    demo_buffer = transition_buffer(50, utd * batch // 2)
    online_buffer = transition_buffer(50, utd * batch // 2)
    demos, online = demo_buffer.init(row), online_buffer.init(row)
    for i in range(10):
        demos = demo_buffer.add(demos, {"x": jnp.full(2, float(i)), "source": jnp.ones(())})
        online = online_buffer.add(online, {"x": jnp.full(2, -float(i)), "source": jnp.zeros(())})
    sample = sample_half_and_half(demo_buffer, demos, online_buffer, online, jax.random.key(0), utd)
    source = np.asarray(sample["source"]).reshape(utd, batch)
    np.testing.assert_array_equal(source, np.tile([1.0] * 4 + [0.0] * 4, (utd, 1)))
    assert np.asarray(sample["x"]).shape == (utd * batch, 2)


def test_add_episode_adds_the_first_length_rows_in_order():
    buffer = transition_buffer(20, 4)
    state = buffer.init({"t": jnp.zeros(())})
    episode = {"t": jnp.arange(10.0)}
    state = jax.jit(lambda s, n: add_episode(buffer, s, episode, n))(state, jnp.asarray(4))
    assert int(state.current_index) == 4
    np.testing.assert_array_equal(np.asarray(state.experience["t"]).reshape(-1)[:5], [0, 1, 2, 3, 0])


def test_demo_growth_rule():
    lengths = jnp.array([10.0, 20.0, 30.0, jnp.nan, jnp.nan])  # median 20
    assert bool(grows_demos(jnp.asarray(True), jnp.asarray(15), lengths))
    assert not bool(grows_demos(jnp.asarray(True), jnp.asarray(20), lengths))  # not fewer steps
    assert not bool(grows_demos(jnp.asarray(False), jnp.asarray(5), lengths))  # failed


@pytest.fixture(scope="module")
def robots():
    from refinery_jax.envs.assembly_env import EnvConfig
    from refinery_jax.envs.gap import GapConfig, GapEnv
    from refinery_jax.envs.samplers import env_uniform
    from refinery_jax.residual.sparr import GaussianBase, Robot, SPARRConfig

    env = GapEnv(EnvConfig(task="square_peg_loose", episode_seconds=1.0), GapConfig(friction=1.0))
    rising = GaussianBase(lambda obs: (jnp.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.0]), jnp.full(6, 0.01)))
    config = SPARRConfig(sac=SMALL, budget_steps=150, chunk_steps=75, num_demos=2, demo_attempts=8)
    return {name: Robot(env, rising, SPARRConfig(**{**config.__dict__, **change}), env_uniform(env))
            for name, change in (("sparr", {}), ("symmetric", {"sees_goal": True}),
                                 ("no_base_action", {"sees_base_action": False}))}


def test_residual_inputs_hold_no_goal_or_socket_pose(robots):
    """Move the goal (true and perceived), the socket and everything the base observes: the
    residual's inputs must not change; the symmetric ablation's must (so the check can fail)."""
    robot = robots["sparr"]
    env = robot.env
    state = jax.jit(lambda k: env.reset(k, jnp.array([0.003, -0.002, 0.03])))(jax.random.key(0))
    info = state.env.info
    moved_env = env.env.shift_observed_goal(state.env, jnp.array([0.004, -0.003, 0.002]), jnp.asarray(0.2))
    moved_env = moved_env.replace(
        info=moved_env.info.replace(goal_pos=info.goal_pos + 0.01, goal_quat=jnp.array([0.0, 0.0, 0.0, 1.0]),
                                    frame_noise=info.frame_noise + 0.01),
        physics=moved_env.physics.replace(socket_pos=state.env.physics.socket_pos + 0.02,
                                          socket_quat=jnp.array([0.0, 1.0, 0.0, 0.0])),
        critic_obs=moved_env.critic_obs + 1.0)
    moved = state.replace(env=moved_env)
    assert float(jnp.abs(moved.obs - state.obs).max()) > 1e-3  # the base's observation did change
    base_action = jnp.arange(6.0) / 10
    for name in ("sparr", "no_base_action"):
        r = robots[name]
        np.testing.assert_array_equal(r.residual_inputs(moved, base_action), r.residual_inputs(state, base_action))
    symmetric = robots["symmetric"]
    assert float(jnp.abs(symmetric.residual_inputs(moved, base_action)
                         - symmetric.residual_inputs(state, base_action)).max()) > 1e-3
    assert robot.obs_size == ROBOT_OBS_SIZE + 6 and robots["no_base_action"].obs_size == ROBOT_OBS_SIZE == 19
    np.testing.assert_array_equal(robot.residual_inputs(state, base_action)[ROBOT_OBS_SIZE:], base_action)


def test_the_base_action_is_clipped_before_the_residual_is_added(robots):
    """A base whose mean lies beyond the box (a PPO mean often does) is clipped first, so the
    residual still moves the executed action; added before the clip it would change nothing."""
    from refinery_jax.residual.sparr import GaussianBase, Robot

    sparr = robots["sparr"]
    beyond = GaussianBase(lambda obs: (jnp.array([0.0, 0.0, 2.0, -3.0, 0.0, 0.5]), jnp.full(6, 0.01)))
    robot = Robot(sparr.env, beyond, sparr.config, sparr.sample_init)
    state = jax.jit(lambda k: robot.env.reset(k, jnp.array([0.003, -0.002, 0.03])))(jax.random.key(0))
    seen = robot._observe(state)  # noqa: SLF001
    np.testing.assert_array_equal(seen.base_action, [0.0, 0.0, 1.0, -1.0, 0.0, 0.5])
    np.testing.assert_array_equal(seen.obs[ROBOT_OBS_SIZE:], seen.base_action)  # what the residual reads
    residual = jnp.array([0.0, 0.0, -1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(robot.executed_action(seen, residual), [0.0, 0.0, 0.8, -0.8, 0.2, 0.7], atol=1e-6)


@pytest.mark.slow
def test_demonstrations_refuse_a_base_that_never_succeeds(robots):
    with pytest.raises(ValueError, match="succeeded in only 0 of 8 episodes"):
        robots["sparr"].collect_demos(jax.random.key(0), batch=8)


def test_sparr_config_is_checked():
    from refinery_jax.residual.sparr import SPARRConfig

    with pytest.raises(ValueError, match="num_demos"):
        SPARRConfig(num_demos=0)
    with pytest.raises(ValueError, match="multiple of chunk_steps"):
        SPARRConfig(budget_steps=1000, chunk_steps=750)
    with pytest.raises(ValueError, match="residual_scale"):
        SPARRConfig(residual_scale=0.0)


SPARR_SCRIPT = __import__("pathlib").Path(__file__).resolve().parents[1] / "experiments" / "sparr.py"


def test_sparr_script_refuses_bad_input_before_compiling(specialist_run, load_script_main, tmp_path):
    run, _, _ = specialist_run
    main = load_script_main(SPARR_SCRIPT)
    for argv in (["--gap", "no_such_gap"], ["--budget-steps", "1000"], ["--seeds", "0"],
                 ["--gap", "clearance", "--tight-task", "no_such_task"]):
        with pytest.raises(SystemExit):
            main(["--base-run", str(run), "--out", str(tmp_path / "a"), *argv])
    with pytest.raises(SystemExit):  # not a run
        main(["--base-run", str(tmp_path), "--out", str(tmp_path / "b")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_sparr_script_end_to_end(load_script_main, tmp_path):
    """A briefly trained square_peg_loose specialist (30 quick-preset updates: a few per cent
    success, enough for 20 demonstrations; a random-weight one finds none) as the base, no gap,
    two short learning rows and PPO fine-tuning: the records, the table (paired against the
    base), the figure."""
    import json

    run = tmp_path / "base"
    load_script_main(SPARR_SCRIPT.parent / "train_specialist.py")(
        ["--task", "square_peg_loose", "--updates", "30", "--eval-episodes", "16", "--map-grid", "2",
         "--map-trials", "2", "--out", str(run)])
    out = tmp_path / "sparr"
    argv = ["--base-run", str(run), "--gap", "sim", "--seeds", "2", "--budget-steps", "750",
            "--rows", "base", "sparr", "no_growth", "ppo_finetune", "--eval-episodes", "16", "--out", str(out)]
    load_script_main(SPARR_SCRIPT)(argv)
    results = json.loads((out / "results.json").read_text())
    assert list(results["rows"]) == ["base", "sparr", "no_growth", "ppo_finetune"]
    assert sorted(p.name for p in (out / "records").iterdir()) == [
        "base.json", "no_growth_seed0.json", "no_growth_seed1.json", "ppo_finetune_seed0.json",
        "ppo_finetune_seed1.json", "sparr_seed0.json", "sparr_seed1.json"]
    ppo = json.loads((out / "records" / "ppo_finetune_seed0.json").read_text())
    assert ppo["ppo_updates"] == 1 and ppo["robot_steps"] == 16 * 25 <= 750 and len(ppo["success"]) == 16
    assert "vs_base" in results["rows"]["ppo_finetune"]
    sparr = results["rows"]["sparr"]
    assert sparr["trials_per_seed"] == 16 and len(sparr["per_seed"]) == 2 and "vs_base" in sparr
    assert math.isfinite(sparr["success_mean"]) and results["rows"]["base"]["ci_method"].startswith("wilson")
    record = json.loads((out / "records" / "sparr_seed0.json").read_text())
    assert len(record["demo_lengths"]) == 20 and sum(n for _, n in record["training_outcomes"]) <= 750
    assert (out / "learning_curve.png").exists() and (out / "config.json").exists()
