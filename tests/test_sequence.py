"""Sequence success: the paper's product of stage outcomes, and chained stages on two_pin_plate.

Synthetic outcomes are plain numpy. The chained reset compiles `reset` of two stages of
two_pin_plate once for the module (stage 0 with no plug yaw noise, so θ = 0 puts its plug
exactly home); the full scripted 3-stage chain runs with -m slow.
"""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refinery_jax.assets.multipart import get_multipart, multipart_names, stage_names
from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig, StageStart
from refinery_jax.envs.rotations import quat_mul, rotate, yaw_quat
from refinery_jax.envs.scripted import scripted_action
from refinery_jax.ppo import ActorCritic, Policy, init_stats
from refinery_jax.ppo.networks import policy_action
from refinery_jax.refinery import ComparisonResult, FreshEval, summarize_seeds
from refinery_jax.refinery.sequence import (
    ChainStage,
    chain_start,
    evaluate_chain,
    next_socket_offset,
    paper_sequence_table,
    ppo_act,
    sequence_outcomes,
    summarize_sequence,
)

ASSEMBLY = "two_pin_plate"
EXACT = 1e-5  # m: float32 world coordinates and the IK's residual


# ------------------------------------------------------------------ paper mode (numpy)


def test_sequence_success_is_the_product_of_stage_outcomes():
    stages = np.array([[1, 1, 0, 1, 1, 0],
                       [1, 0, 1, 1, 1, 0],
                       [1, 1, 1, 0, 1, 1]], bool)
    seq = sequence_outcomes(stages)
    np.testing.assert_array_equal(seq, [True, False, False, False, True, False])
    np.testing.assert_array_equal(seq, np.prod(stages, axis=0).astype(bool))
    with pytest.raises(ValueError):
        sequence_outcomes(np.ones(3, bool))


def test_summary_numbers_by_hand():
    # 2 seeds x 2 stages x 4 trials
    s = np.array([[[1, 1, 1, 0], [1, 0, 1, 1]],
                  [[1, 1, 0, 0], [1, 1, 1, 1]]], bool)
    out = summarize_sequence(s)
    assert out["stages"][0]["per_seed"] == [0.75, 0.5]
    assert out["stages"][1]["per_seed"] == [0.75, 1.0]
    assert out["sequence"]["per_seed"] == [0.5, 0.5]   # seed 0: trials 0, 2; seed 1: trials 0, 1
    assert out["sequence"]["success_mean"] == 0.5
    assert out["sequence"]["ci95_low"] == out["sequence"]["ci95_high"] == 0.5  # no spread over seeds
    assert out["stages"][0]["success_mean"] == pytest.approx(0.625)
    # t(1) = 12.706: half width 12.706 * std([0.75, 0.5]) / sqrt(2) = 12.706 * 0.125, clipped to [0, 1]
    assert out["stages"][0]["ci95_low"] == 0.0 and out["stages"][0]["ci95_high"] == 1.0
    assert out["independent_product"] == pytest.approx((0.75 * 0.75 + 0.5 * 1.0) / 2)
    assert out["stages"][1] == summarize_seeds(s[:, 1])
    # a chained mode's own sequence outcomes replace the paper's
    chained = np.array([[1, 0, 0, 0], [0, 0, 0, 0]], bool)
    assert summarize_sequence(s, chained)["sequence"]["per_seed"] == [0.25, 0.0]


def test_paper_table_from_per_stage_comparisons():
    rng = np.random.default_rng(0)
    fresh = lambda s: FreshEval(inits=np.zeros(s.shape + (3,)), success=s, returns=np.zeros(s.shape))  # noqa: E731
    outcomes = rng.random((2, 3, 5, 8)) < 0.7  # [stages, methods, seeds, trials]
    results = [ComparisonResult(fresh={m: fresh(outcomes[k, i]) for i, m in enumerate(("baseline", "deployment", "x"))},
                                deployment={}, finetune=None, control=None) for k in range(2)]
    table = paper_sequence_table(results, ("baseline", "deployment"))
    assert set(table) == {"baseline", "deployment"}
    for i, m in enumerate(("baseline", "deployment")):
        per_seed = (outcomes[0, i] & outcomes[1, i]).mean(axis=1)
        np.testing.assert_allclose(table[m]["sequence"]["per_seed"], per_seed)
        np.testing.assert_allclose(table[m]["stages"][1]["per_seed"], outcomes[1, i].mean(axis=1))


def test_ppo_act_is_the_policy_mean_or_a_sample():
    model = ActorCritic(6, (8,), (8,), "tanh")
    params = model.init(jax.random.key(0), jnp.zeros(24), jnp.zeros(44))
    policy = Policy(params=params, obs_stats=init_stats(24))
    state = SimpleNamespace(obs=jnp.linspace(-1.0, 1.0, 24))
    key = jax.random.key(1)
    np.testing.assert_allclose(ppo_act(model, policy)(state, key), policy_action(model, policy, state.obs, key, True))
    sampled = ppo_act(model, policy, deterministic=False)(state, key)
    np.testing.assert_allclose(sampled, policy_action(model, policy, state.obs, key, False))
    assert not np.allclose(sampled, policy_action(model, policy, state.obs, key, True))


# ------------------------------------------------------------------ chained reset (MJX)


@pytest.fixture(scope="module")
def envs():
    """Stage 0 (no loose parts, exact plug yaw) and stage 1 (pin 0 loose), jitted resets."""
    names = stage_names(ASSEMBLY)
    env0 = AssemblyEnv(EnvConfig(task=names[0], init_yaw_noise=0.0))
    env1 = AssemblyEnv(EnvConfig(task=names[1]))
    return env0, env1, jax.jit(env0.reset), jax.jit(env1.reset)


@pytest.mark.parametrize("name", multipart_names())
def test_socket_offset_keeps_the_base_in_place(name):
    mp = get_multipart(name)
    for i in range(mp.num_stages - 1):
        origin = [np.asarray(mp.parts[j].goal_pos) + [0.0, 0.0, mp.parts[j].depth] for j in (i, i + 1)]
        np.testing.assert_allclose(next_socket_offset(mp.stage(i), mp.stage(i + 1)), origin[1] - origin[0],
                                   atol=1e-12)
    with pytest.raises(ValueError, match="not the stage after"):
        next_socket_offset(mp.stage(0), mp.stage(2))


def test_chained_reset_places_loose_parts_exactly(envs):
    _, env1, _, reset1 = envs
    key = jax.random.key(3)
    init = jnp.asarray(env1.init_high)
    sock_pos, sock_quat = jnp.array([0.01, -0.02, 0.03]), yaw_quat(jnp.asarray(0.1))
    assembled = env1.assembled_start(sock_pos + jnp.asarray(env1.mj_model.body("socket").pos), sock_quat)
    state = reset1(key, init, assembled)
    assert float(env1.prior_part_displacement(state.data)) < EXACT
    np.testing.assert_allclose(env1.socket_pose(state.data)[0], assembled.socket_pos, atol=1e-7)
    # a shifted and tilted pose is reproduced, and its displacement measured
    shift = jnp.array([[0.001, 0.0, 0.0]])
    tilt = quat_mul(assembled.part_quat[0], jnp.array([jnp.cos(0.01), jnp.sin(0.01), 0.0, 0.0]))[None]
    moved = StageStart(socket_pos=assembled.socket_pos, socket_quat=sock_quat,
                       part_pos=assembled.part_pos + shift, part_quat=assembled.part_quat)
    state = reset1(key, init, moved)
    pos, quat = env1.loose_part_poses(state.data)
    np.testing.assert_allclose(pos, moved.part_pos, atol=1e-7)
    assert float(env1.prior_part_displacement(state.data)) == pytest.approx(0.001, abs=EXACT)
    state = reset1(key, init, moved.replace(part_pos=assembled.part_pos, part_quat=tilt))
    np.testing.assert_allclose(env1.loose_part_poses(state.data)[1], tilt / jnp.linalg.norm(tilt), atol=1e-6)
    assert float(env1.prior_part_displacement(state.data)) > 1e-4
    # the wrong number of parts is refused
    with pytest.raises(ValueError, match="loose part"):
        env1.reset(key, init, moved.replace(part_pos=jnp.zeros((2, 3)), part_quat=jnp.zeros((2, 4))))


def test_hand_off_from_an_inserted_plug_is_the_assembled_next_stage(envs):
    """Stage 0 reset with θ = 0 (plug exactly home) hands stage 1 its pin at the assembled pose."""
    env0, env1, reset0, reset1 = envs
    keys = jax.random.split(jax.random.key(0), 2)
    home = jnp.zeros((2, 3))
    end0 = jax.vmap(reset0)(keys, home)
    start = jax.vmap(lambda s: chain_start(env0, env1, s))(end0)
    assert start.part_pos.shape == (2, 1, 3) and start.part_quat.shape == (2, 1, 4)
    state1 = jax.vmap(reset1)(keys, jnp.broadcast_to(jnp.asarray(env1.init_high), (2, 3)), start)
    disp = jax.vmap(env1.prior_part_displacement)(state1.data)
    assert float(jnp.max(disp)) < 1e-4, disp  # the IK's residual only
    # the base did not move: its pose is stage 0's socket minus stage 0's origin, in both stages
    s0, q0 = jax.vmap(env0.socket_pose)(end0.data)
    s1, q1 = jax.vmap(env1.socket_pose)(state1.data)
    np.testing.assert_allclose(q0, q1)
    offset = jnp.asarray(next_socket_offset(env0.assembly, env1.assembly), jnp.float32)
    np.testing.assert_allclose(s1 - s0, jax.vmap(lambda q: rotate(q, offset))(q0), atol=1e-6)


def test_evaluate_chain_pads_batches_and_hands_off(envs):
    """Two stages, two control steps of zero action, N = 3 in batches of 2 (one padded)."""
    env0, env1, _, _ = envs
    still = lambda state, key: jnp.zeros(6)  # noqa: E731
    stages = [ChainStage(env0, still, steps=2), ChainStage(env1, still, steps=2)]
    inits = jnp.stack([jnp.zeros((3, 3)), jnp.broadcast_to(jnp.asarray(env1.init_high), (3, 3))])
    out = evaluate_chain(stages, jax.random.key(1), inits, batch_size=2)
    assert out.stage_success.shape == out.displacement.shape == (2, 3) and out.sequence_success.shape == (3,)
    np.testing.assert_array_equal(out.sequence_success, out.stage_success.all(axis=0))
    assert out.stage_success[0].all()      # θ = 0: stage 0's plug starts home and the hand holds it there
    assert not out.stage_success[1].any()  # stage 1's plug is still above its hole
    assert np.all(out.displacement[0] == 0.0)  # stage 0 has no loose parts
    assert np.max(out.displacement[1]) < 2e-4, out.displacement  # pin 0 released where it was inserted
    with pytest.raises(ValueError, match="inits must be"):
        evaluate_chain(stages, jax.random.key(1), inits[:1])


@pytest.mark.slow
def test_scripted_chain_assembles_two_pin_plate():
    """The privileged script inserts all three stages in a chain; pins stay within 1 mm."""
    envs = [AssemblyEnv(EnvConfig(task=t)) for t in stage_names(ASSEMBLY)]
    stages = [ChainStage(env, (lambda e: lambda s, k: scripted_action(e, s))(env), steps=150) for env in envs]
    n = 4
    inits = jnp.stack([jnp.broadcast_to(jnp.array([0.0, 0.0, e.assembly.depth + 0.015]), (n, 3)) for e in envs])
    out = evaluate_chain(stages, jax.random.key(0), inits, batch_size=2)  # two batches: one compile per stage
    assert out.stage_success.shape == (3, n) and out.sequence_success.shape == (n,)
    assert out.sequence_success.all(), out
    assert np.max(out.displacement[1:]) < 1e-3, out.displacement
