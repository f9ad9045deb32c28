"""The insertion environment: shapes, purity, success, contact fidelity, resets, demos.

Runs on the default physics backend (C MuJoCo on CPU) unless a test is about MJX;
tests/test_physics_backends.py checks that the two backends agree. Compiles dominate
on CPU, so each jitted function is built once per module and shared.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refinery_jax.assets.registry import task_names
from refinery_jax.envs.assembly_env import (
    CRITIC_OBS_SIZE,
    POLICY_OBS_SIZE,
    AssemblyEnv,
    EnvConfig,
    max_penetration,
    observation_slice,
)
from refinery_jax.envs.demos import DemoConfig, make_generator
from refinery_jax.envs.samplers import env_uniform, step_with_reset, uniform_box
from refinery_jax.envs.scripted import run_scripted_episode

PENETRATION_BOUND = 0.5e-3  # m


@pytest.fixture(scope="module")
def hand():
    env = AssemblyEnv(EnvConfig(embodiment="floating_hand"))
    return env, jax.jit(env.reset), jax.jit(env.step)


@pytest.fixture(scope="module")
def hand_mjx():
    env = AssemblyEnv(EnvConfig(embodiment="floating_hand", backend="mjx"))
    return env, jax.jit(env.reset), jax.jit(env.step)


def _nominal(env):
    return jnp.array([0.0, 0.0, env.assembly.depth + 0.015])


def test_reset_and_step_shapes_and_finite(hand):
    env, reset, step = hand
    state = reset(jax.random.key(0), _nominal(env))
    actions = jax.random.uniform(jax.random.key(1), (5, 6), minval=-1, maxval=1)
    for a in actions:
        state = step(state, a)
    assert state.obs.shape == (POLICY_OBS_SIZE,) and state.critic_obs.shape == (CRITIC_OBS_SIZE,)
    assert set(state.terms) == {"keypoint_baseline", "keypoint_coarse", "keypoint_fine", "engaged", "success"}
    for leaf in jax.tree.leaves((state.obs, state.critic_obs, state.reward, state.terms, state.physics.qpos)):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    assert int(state.info.step) == 5 and not bool(state.done)
    # the observation ends with the smoothed previous action (what the next action is blended
    # with) and the episode's progress
    np.testing.assert_allclose(state.obs[observation_slice("prev_action")], state.info.prev_action)
    assert float(state.obs[observation_slice("progress")][0]) == pytest.approx(5 / env.config.episode_steps)
    np.testing.assert_allclose(state.critic_obs[:POLICY_OBS_SIZE], state.obs)


def test_bad_init_shape_is_rejected_before_compiling(hand):
    env, _, _ = hand
    with pytest.raises(ValueError, match="shape"):
        env.reset(jax.random.key(0), jnp.zeros(2))


def test_same_key_and_init_give_identical_states(hand):
    env, reset, _ = hand
    a = reset(jax.random.key(3), _nominal(env))
    b = reset(jax.random.key(3), _nominal(env))
    c = reset(jax.random.key(4), _nominal(env))
    assert all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert not bool(jnp.array_equal(a.info.goal_pos, c.info.goal_pos))


def test_reset_places_plug_at_init_and_noise_is_bounded(hand):
    env, reset, _ = hand
    theta = jnp.array([0.004, -0.007, env.assembly.depth + 0.012])
    state = reset(jax.random.key(5), theta)
    z_err, xy_err, _ = env.goal_errors(state.physics, state.info)
    assert float(z_err) == pytest.approx(float(theta[2]), abs=2e-4)
    assert float(xy_err) == pytest.approx(float(jnp.linalg.norm(theta[:2])), abs=2e-4)
    goal_fingertip = state.info.goal_pos + jnp.array([0, 0, env.assembly.plug_length])
    assert float(jnp.max(jnp.abs(state.info.obs_goal_pos - goal_fingertip))) <= env.config.obs_pos_noise + 1e-6


def test_inserted_start_is_success_and_far_start_is_not(hand):
    env, reset, _ = hand
    assert bool(reset(jax.random.key(0), jnp.zeros(3)).success)
    assert not bool(reset(jax.random.key(0), _nominal(env)).success)
    # halfway in is not success either
    assert not bool(reset(jax.random.key(0), jnp.array([0.0, 0.0, env.assembly.depth / 2])).success)


@pytest.mark.parametrize("backend", ["c", "mjx"])
def test_diverged_state_is_flagged_and_not_propagated(backend, hand, hand_mjx):
    env, reset, step = hand if backend == "c" else hand_mjx
    state = reset(jax.random.key(0), _nominal(env))
    if backend == "mjx":  # a non-finite velocity in MJX's state
        broken = state.physics.sim.replace(qvel=state.physics.sim.qvel.at[0].set(jnp.nan))
    else:  # C MuJoCo is handed a non-finite pose: it warns, resets the world, and we must notice
        broken = state.physics.sim
        state = state.replace(physics=state.physics.replace(qpos=state.physics.qpos.at[0].set(jnp.nan)))
    state = state.replace(physics=state.physics.replace(sim=broken))
    out = step(state, jnp.zeros(6))
    assert bool(out.terminated) and bool(out.done)
    for leaf in jax.tree.leaves((out.obs, out.critic_obs, out.reward, out.physics.qpos, out.physics.qvel)):
        assert bool(jnp.all(jnp.isfinite(leaf)))


def test_key_reuse_is_caught():
    sampler = uniform_box(jnp.zeros(3), jnp.ones(3))
    with jax.debug_key_reuse(True):
        key = jax.random.key(0)
        k1, k2 = jax.random.split(key)
        sampler(k1), sampler(k2)  # fine: fresh keys
        with pytest.raises(Exception, match="(?i)reuse"):
            sampler(k1)


def test_auto_reset_draws_fresh_inits_every_episode(hand):
    env, _, _ = hand
    batch, steps = 3, env.config.episode_steps
    sampler = env_uniform(env)
    keys = jax.random.split(jax.random.key(0), batch)
    states = jax.jit(jax.vmap(env.reset))(keys, jax.vmap(sampler)(keys))
    step = jax.jit(step_with_reset(env, sampler))
    inits = [states.info.init]
    for i in range(2 * steps):
        states, stepped = step(jax.random.key(10 + i), states, jnp.zeros((batch, 6)))
        ended = (i + 1) % steps == 0
        assert bool(jnp.all(stepped.truncated)) == ended
        assert bool(jnp.all(states.info.step == 0)) == ended
        if ended:
            inits.append(states.info.init)
    inits = np.stack(inits)  # [episodes, batch, 3]
    assert len(np.unique(inits.reshape(-1, 3), axis=0)) == inits.shape[0] * batch
    assert np.all((inits >= env.init_low - 1e-6) & (inits <= env.init_high + 1e-6))


def test_auto_reset_restarts_only_the_finished_environments(hand):
    """Staggered episodes: the few that finish are reset (packed into a small batch); the others
    carry on untouched. More finishing at once than the packed batch holds resets them all."""
    env, _, _ = hand
    batch, steps = 8, env.config.episode_steps  # packed slots: 2 * ceil(8 / 75) + 2 = 4
    sampler = env_uniform(env)
    keys = jax.random.split(jax.random.key(1), batch)
    states = jax.jit(jax.vmap(env.reset))(keys, jax.vmap(sampler)(keys))
    step = jax.jit(step_with_reset(env, sampler))
    for finishing in (2, 6):  # 2 fit the packed batch; 6 do not
        elapsed = jnp.where(jnp.arange(batch) < finishing, steps - 1, 10)
        start = jax.vmap(env.advance_clock)(states, elapsed)
        nxt, stepped = step(jax.random.key(finishing), start, jnp.zeros((batch, 6)))
        done = np.arange(batch) < finishing
        np.testing.assert_array_equal(np.asarray(stepped.truncated), done)
        np.testing.assert_array_equal(np.asarray(nxt.info.step), np.where(done, 0, 11))
        assert not np.any(np.isclose(np.asarray(nxt.info.init[:finishing]), np.asarray(start.info.init[:finishing])))
        for new, old in zip(jax.tree.leaves(nxt), jax.tree.leaves(stepped)):  # the rest are the stepped states
            np.testing.assert_array_equal(np.asarray(new)[finishing:], np.asarray(old)[finishing:])
        fresh = np.asarray(nxt.info.init[:finishing])
        assert np.all((fresh >= env.init_low - 1e-6) & (fresh <= env.init_high + 1e-6))


# A case compiles its own program: ~5 s on the C backend, 30-100 s on MJX (2 CPU cores). CI runs
# every task on the floating hand and three on the arm with C MuJoCo; MJX's scripted insertion
# runs in CI through tests/test_physics_backends.py (square_peg, both backends, and the arm in
# free space); every other case runs with -m slow (experiments/validate_assets.py sweeps them
# all with 128 starts each).
C_ARM_CI_TASKS = {"square_peg", "square_peg_tight", "round_peg"}
SCRIPTED_CASES = ([("c", t, "floating_hand") for t in task_names()]
                  + [("c", t, "franka") if t in C_ARM_CI_TASKS else pytest.param("c", t, "franka", marks=pytest.mark.slow)
                     for t in task_names()]
                  + [pytest.param("mjx", t, e, marks=pytest.mark.slow) for e in ("floating_hand", "franka")
                     for t in task_names()])


@pytest.mark.parametrize(("backend", "task", "embodiment"), SCRIPTED_CASES)
def test_scripted_insertion_succeeds_from_nominal(backend, task, embodiment):
    """Also the per-task check that reset and step run under jit with the right shapes, finite."""
    env = AssemblyEnv(EnvConfig(task=task, embodiment=embodiment, backend=backend))
    keys = jax.random.split(jax.random.key(0), 2)
    inits = jnp.tile(_nominal(env), (2, 1))
    final, success, penetration = jax.jit(jax.vmap(lambda k, i: run_scripted_episode(env, k, i)))(keys, inits)
    assert final.obs.shape == (2, POLICY_OBS_SIZE) and final.critic_obs.shape == (2, CRITIC_OBS_SIZE)
    assert bool(jnp.all(jnp.isfinite(final.obs))) and not bool(jnp.any(final.terminated))
    assert bool(jnp.all(success)), success
    if backend == "mjx":
        assert float(jnp.max(penetration)) < PENETRATION_BOUND
    else:
        assert bool(jnp.all(jnp.isnan(penetration)))  # C hands back no contacts


def test_plug_pushed_into_wall_does_not_pass_through(hand_mjx):
    """Full-force pushes: down onto the socket's top face, then sideways into a hole wall (MJX, whose
    contacts give the penetration)."""
    env, reset, _ = hand_mjx
    a = env.assembly
    half_hole = 0.008 + a.clearance
    track = jax.jit(env.track)

    def push(state, offset, steps=30):
        worst, physics = 0.0, state.physics
        for _ in range(steps):
            physics = track(physics, physics.tip_pos + offset, physics.tip_quat)
            worst = max(worst, float(max_penetration(physics)))
        return physics, worst

    # onto the top face, off-axis: the tip must stay above the face
    on_wall = jnp.array([half_hole + 0.004, 0.0, a.depth + 0.003])
    state = reset(jax.random.key(0), on_wall)
    physics, worst_down = push(state, jnp.array([0.0, 0.0, -0.1]))
    z_err, _, _ = env.goal_errors(physics, state.info)
    assert float(z_err) > a.depth - PENETRATION_BOUND
    # half inserted, pushed sideways: the tip stays within clearance + bound of the axis
    inside = jnp.array([0.0, 0.0, a.depth / 2])
    state = reset(jax.random.key(1), inside)
    physics, worst_side = push(state, jnp.array([0.1, 0.0, 0.0]))
    _, xy_err, _ = env.goal_errors(physics, state.info)
    assert float(xy_err) < a.clearance + PENETRATION_BOUND
    assert max(worst_down, worst_side) < PENETRATION_BOUND


def test_disassembly_demos_clear_the_socket_and_reverse_into_insertions(hand):
    env, _, _ = hand
    cfg = DemoConfig(num_attempts=4)
    demos = jax.jit(make_generator(env, cfg))(jax.random.key(0))
    assert demos.fingertip.shape == (4, cfg.lift_steps + cfg.move_steps + 1, 3)
    assert bool(jnp.all(demos.valid))
    paths = demos.assembly_paths()
    assert np.allclose(paths[:, -1], 0.0, atol=1e-4)  # reversed: ends assembled
    # starts at the random pose: goal + 5 cm up + U(±5 cm)^3, within the 1 cm "reached" tolerance
    offset = paths[:, 0] - np.array([0.0, 0.0, cfg.move_center_height])
    assert np.all(np.abs(offset) <= cfg.move_range + 0.01)
    assert len(np.unique(np.round(paths[:, 0], 4), axis=0)) == len(paths)
    lifted = paths[:, -(cfg.lift_steps + 1), 2]  # the top of the lift, reversed
    assert np.allclose(lifted, cfg.lift_factor * env.assembly.depth, atol=0.003)
