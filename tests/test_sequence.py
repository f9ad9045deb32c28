"""Sequence success: the paper's product of stage outcomes, and chained stages on two_pin_plate.

Synthetic outcomes are plain numpy. The chained reset compiles `reset` of two stages of
two_pin_plate once for the module (stage 0 with no plug yaw noise, so θ = 0 puts its plug
exactly home); the full scripted 3-stage chain runs with -m slow.
"""

import json
import pathlib
import subprocess
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refinery_jax.assets.multipart import get_multipart, multipart_names, stage_names
from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig, StageStart
from refinery_jax.envs.rotations import quat_mul, rotate, yaw_quat
from refinery_jax.envs.samplers import uniform_box
from refinery_jax.envs.episodes import memoryless
from refinery_jax.envs.scripted import scripted_actor
from refinery_jax.ppo import ActorCritic, Policy, init_stats
from refinery_jax.ppo.networks import initial_carry, policy_action
from refinery_jax.refinery import ComparisonResult, FreshEval, summarize_seeds
from refinery_jax.success_models import DeploymentConfig
from refinery_jax.refinery.sequence import (
    ChainStage,
    chain_batch_size,
    chain_start,
    chain_inits,
    add_sequence_differences,
    chained_summary,
    fit_joint_model,
    format_chain_diagnostics,
    format_sequence_table,
    joint_sampler,
    make_chain_evaluator,
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
    carry = initial_carry(model, (), 24)
    params = model.init(jax.random.key(0), jnp.zeros(24), jnp.zeros(44), carry)
    policy = Policy(params=params, obs_stats=init_stats(24))
    state = SimpleNamespace(obs=jnp.linspace(-1.0, 1.0, 24))
    key = jax.random.key(1)
    mean = policy_action(model, policy, carry, state.obs, key, True)[1]
    actor = ppo_act(model, 24)
    np.testing.assert_allclose(actor.act(policy, actor.start(policy), state, key)[1], mean)
    sampled = ppo_act(model, 24, deterministic=False).act(policy, carry, state, key)[1]
    np.testing.assert_allclose(sampled, policy_action(model, policy, carry, state.obs, key, False)[1])
    assert not np.allclose(sampled, mean)


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
    assert float(env1.prior_part_displacement(state.physics)) < EXACT
    np.testing.assert_allclose(env1.socket_pose(state.physics)[0], assembled.socket_pos, atol=1e-7)
    # a shifted and tilted pose is reproduced, and its displacement measured
    shift = jnp.array([[0.001, 0.0, 0.0]])
    tilt = quat_mul(assembled.part_quat[0], jnp.array([jnp.cos(0.01), jnp.sin(0.01), 0.0, 0.0]))[None]
    moved = StageStart(socket_pos=assembled.socket_pos, socket_quat=sock_quat,
                       part_pos=assembled.part_pos + shift, part_quat=assembled.part_quat)
    state = reset1(key, init, moved)
    pos, quat = env1.loose_part_poses(state.physics)
    np.testing.assert_allclose(pos, moved.part_pos, atol=1e-7)
    assert float(env1.prior_part_displacement(state.physics)) == pytest.approx(0.001, abs=EXACT)
    state = reset1(key, init, moved.replace(part_pos=assembled.part_pos, part_quat=tilt))
    np.testing.assert_allclose(env1.loose_part_poses(state.physics)[1], tilt / jnp.linalg.norm(tilt), atol=1e-6)
    assert float(env1.prior_part_displacement(state.physics)) > 1e-4
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
    disp = jax.vmap(env1.prior_part_displacement)(state1.physics)
    assert float(jnp.max(disp)) < 1e-4, disp  # the IK's residual only
    # the base did not move: its pose is stage 0's socket minus stage 0's origin, in both stages
    s0, q0 = jax.vmap(env0.socket_pose)(end0.physics)
    s1, q1 = jax.vmap(env1.socket_pose)(state1.physics)
    np.testing.assert_allclose(q0, q1)
    offset = jnp.asarray(next_socket_offset(env0.assembly, env1.assembly), jnp.float32)
    np.testing.assert_allclose(s1 - s0, jax.vmap(lambda q: rotate(q, offset))(q0), atol=1e-6)


@pytest.mark.parametrize("trials,batch", [(200, 50), (1000, 63), (64, 64), (65, 33), (16, 16), (1, 1)])
def test_chain_batch_size_splits_trials_evenly(trials, batch):
    assert chain_batch_size(trials) == batch


def test_chain_batch_size_needs_a_trial():
    with pytest.raises(ValueError, match="at least one trial"):
        chain_batch_size(0)


def test_evaluate_chain_pads_batches_and_hands_off(envs):
    """Two stages, two control steps of zero action, N = 3 in batches of 2 (one padded)."""
    env0, env1, _, _ = envs
    still = memoryless(lambda scale, state, key: scale * jnp.ones(6))  # params: an action scale
    stages = [ChainStage(env0, still, steps=2), ChainStage(env1, still, steps=2)]
    inits = jnp.stack([jnp.zeros((3, 3)), jnp.broadcast_to(jnp.asarray(env1.init_high), (3, 3))])
    evaluate_chain = make_chain_evaluator(stages, batch_size=2)
    out = evaluate_chain([0.0, 0.0], jax.random.key(1), inits)
    assert out.stage_success.shape == out.displacement.shape == (2, 3) and out.sequence_success.shape == (3,)
    np.testing.assert_array_equal(out.sequence_success, out.stage_success.all(axis=0))
    assert out.stage_success[0].all()      # θ = 0: stage 0's plug starts home and the hand holds it there
    assert not out.stage_success[1].any()  # stage 1's plug is still above its hole
    assert np.all(out.displacement[0] == 0.0)  # stage 0 has no loose parts
    assert np.max(out.displacement[1]) < 2e-4, out.displacement  # pin 0 released where it was inserted
    with pytest.raises(ValueError, match="inits must be"):
        evaluate_chain([0.0, 0.0], jax.random.key(1), inits[:1])
    with pytest.raises(ValueError, match="one params entry per stage"):
        evaluate_chain([0.0], jax.random.key(1), inits)
    # params are arguments, not constants: another value reuses the compiled stages and acts differently
    pushed = evaluate_chain([1.0, 0.0], jax.random.key(1), inits)  # stage 0's hand lifts its plug out
    assert not pushed.stage_success[0].any()
    # no chain reached stage 1, so it was not run
    assert not pushed.stage_success[1].any() and np.isnan(pushed.displacement[1]).all()
    # a chain that failed stage 0 has failed: stage 1 runs only the other two, packed into one
    # batch, each from its own hand-off (pin 0 inserted; trial 1 left it out of its hole)
    high = jnp.asarray(env0.init_high)
    mixed = jnp.stack([jnp.stack([jnp.zeros(3), high, jnp.zeros(3)]), jnp.zeros((3, 3))])
    split = evaluate_chain([0.0, 0.0], jax.random.key(1), mixed)
    np.testing.assert_array_equal(split.stage_success, [[True, False, True], [True, False, True]])
    assert np.isnan(split.displacement[1, 1]) and np.all(split.displacement[1, [0, 2]] < 2e-4), split.displacement


@pytest.mark.slow
def test_scripted_chain_assembles_two_pin_plate():
    """The privileged script inserts all three stages in a chain; pins stay within 1 mm."""
    envs = [AssemblyEnv(EnvConfig(task=t)) for t in stage_names(ASSEMBLY)]
    stages = [ChainStage(env, scripted_actor(env), steps=150) for env in envs]
    n = 4
    inits = jnp.stack([jnp.broadcast_to(jnp.array([0.0, 0.0, e.assembly.depth + 0.015]), (n, 3)) for e in envs])
    evaluate_chain = make_chain_evaluator(stages, batch_size=2)  # two batches: one compile per stage
    out = evaluate_chain([False] * len(stages), jax.random.key(0), inits)
    assert out.stage_success.shape == (3, n) and out.sequence_success.shape == (n,)
    assert out.sequence_success.all(), out
    assert np.max(out.displacement[1:]) < 1e-3, out.displacement


# ------------------------------------------------------------------ chained summaries, Table I, joint selection


def by_hand_chains():
    s = np.array([[[1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]]], bool)  # 1 seed, 3 stages, 4 chained trials
    disp = np.zeros((1, 3, 4))
    disp[0, 2] = [0.001, 0.002, 0.0, 0.004]  # m
    return s, s.all(axis=1), disp


def test_chained_summary_by_hand():
    out = chained_summary(*by_hand_chains())
    np.testing.assert_allclose(out["conditional_per_stage"], [0.75, 2 / 3, 0.5])  # among trials that got there
    np.testing.assert_allclose(out["reached_per_stage"], [1.0, 0.75, 0.5])
    assert out["sequence"]["per_seed"] == [0.25]
    assert out["displacement_mm"][0] == {"mean": 0.0, "p95": 0.0, "max": 0.0}
    # stage 3 was reached by trials 0 and 3 only (1 mm and 4 mm); trial 1's 2 mm follows a failure
    assert out["displacement_mm"][2]["max"] == pytest.approx(4.0) and out["displacement_mm"][2]["mean"] == pytest.approx(2.5)
    nobody = chained_summary(np.zeros((1, 2, 3), bool), np.zeros((1, 3), bool), np.zeros((1, 2, 3)))
    assert np.isnan(nobody["conditional_per_stage"][1])
    assert np.isnan(nobody["displacement_mm"][1]["mean"]) and nobody["displacement_mm"][0]["max"] == 0.0


def test_sequence_table_text_and_figure(tmp_path):
    from refinery_jax.refinery.plots import plot_sequence

    rng = np.random.default_rng(1)
    s = rng.random((2, 3, 50)) < 0.8
    paper = {m: summarize_sequence(s) for m in ("baseline", "refinery")}
    chained = {m: chained_summary(s, s.all(axis=1), np.zeros(s.shape)) for m in ("baseline", "refinery", "refinery_joint")}
    worse = s.all(axis=1).copy()
    worse[:, :10] = False  # refinery_joint loses 10 chains per seed that baseline won (paired)
    add_sequence_differences(chained, {"baseline": s.all(axis=1), "refinery": s.all(axis=1), "refinery_joint": worse})
    text = format_sequence_table(paper, chained).splitlines()
    assert text[0].split()[:11] == ["method", "stage", "1", "stage", "2", "stage", "3", "seq", "paper", "seq", "chain"]
    assert [line.split()[0] for line in text[1:]] == ["baseline", "refinery", "refinery_joint"]
    assert text[1].split()[-1] == "-"  # baseline: no difference to itself
    assert text[2].split()[-3:] == ["+0.000", "[+0.000,", "+0.000]"]
    lost = s.all(axis=1)[:, :10].mean(axis=1) * 10 / 50  # per seed: the wins turned into losses
    assert float(text[3].split()[-3]) == pytest.approx(-lost.mean(), abs=5e-4)
    assert text[3].split()[-5] == "-"  # the joint selection has no paper-mode row
    assert float(text[1].split()[-3]) == pytest.approx(paper["baseline"]["sequence"]["success_mean"], abs=5e-4)
    limits = format_chain_diagnostics({"baseline": chained_summary(*by_hand_chains())}).splitlines()
    assert limits[1].split()[0] == "method" and limits[2].split()[0] == "baseline"
    # by hand: stage 1 all reached, 3 of 4 succeed, nothing moved; stage 3 reached by 2 of 4, 1 succeeds
    assert limits[2].split()[1:4] == ["0.750", "[1.00]", "0.0"]
    assert limits[2].split()[7:9] == ["0.500", "[0.50]"]
    assert limits[2].split()[9] == f"{np.percentile([1.0, 4.0], 95):.1f}"  # trials 0 and 3: 1 and 4 mm
    path = plot_sequence(paper, chained, tmp_path / "sequence.png", title="test")
    assert (tmp_path / "sequence.png").stat().st_size > 1000 and path.endswith("sequence.png")


@pytest.fixture(scope="module")
def diagonal_chains():
    """Two stages with θ in different boxes (x ∈ ±1 cm about 0 and 10 cm); a chain succeeds iff
    its stages' θ_x lie on opposite sides (beyond 4 mm): each stage alone has two equally good
    regions, only the pair says which goes with which."""
    lows = [np.array([-0.01, -0.01, 0.0], np.float32), np.array([0.09, -0.01, 0.0], np.float32)]
    highs = [lo + np.array([0.02, 0.02, 0.01], np.float32) for lo in lows]
    inits = chain_inits(jax.random.key(0), [uniform_box(lo, hi) for lo, hi in zip(lows, highs)], 2000)
    return lows, highs, inits, crossed(inits[0, :, 0], inits[1, :, 0])


def crossed(x0, x1):
    x0, x1 = np.asarray(x0), np.asarray(x1) - 0.1
    return ((x0 < -0.004) & (x1 > 0.004)) | ((x0 > 0.004) & (x1 < -0.004))


def test_joint_selection_finds_what_independent_stages_cannot(diagonal_chains):
    from refinery_jax.refinery.deployment import fit_success_model

    lows, highs, inits, success = diagonal_chains
    assert inits.shape == (2, 2000, 3) and 0.1 < success.mean() < 0.26
    model = fit_joint_model(jax.random.key(1), inits, success, lows, highs)
    assert bool(model.usable) and int(model.num_successes) == success.sum()
    pick = DeploymentConfig(selection="random")  # a GMM sample each (argmax would pick one mode per stage)
    sample = joint_sampler(model, 3, pick)
    chosen = np.asarray(jax.vmap(sample)(jax.random.split(jax.random.key(2), 300)))  # [300, K, 3]
    assert chosen.shape == (300, 2, 3)
    for k in range(2):  # stage order kept: each stage's θ in its own box
        assert np.all(chosen[:, k] >= lows[k] - 1e-7) and np.all(chosen[:, k] <= highs[k] + 1e-7)
    joint_rate = crossed(chosen[:, 0, 0], chosen[:, 1, 0]).mean()
    # independent per-stage GMMs (each fitted on its stage's θ of the successful chains) pick each stage alone
    singles = [fit_success_model(jax.random.key(3 + k), inits[k], success, lows[k], highs[k]) for k in range(2)]
    from refinery_jax.refinery.deployment import deployment_sampler

    alone = chain_inits(jax.random.key(4), [deployment_sampler(m, pick) for m in singles], 300)
    independent_rate = crossed(alone[0, :, 0], alone[1, :, 0]).mean()  # about 1/2: right sides by chance
    assert joint_rate > 0.8 and independent_rate < 0.65, (joint_rate, independent_rate)


def test_joint_model_needs_more_successes_than_dimensions(diagonal_chains):
    lows, highs, inits, success = diagonal_chains
    few = np.zeros_like(success)
    few[np.flatnonzero(success)[:6]] = True  # 6 successes < 3K + 1 = 7
    model = fit_joint_model(jax.random.key(1), inits, few, lows, highs)
    assert not bool(model.usable)
    chosen = np.asarray(jax.vmap(joint_sampler(model, 3))(jax.random.split(jax.random.key(2), 500)))
    assert chosen[:, 1, 0].std() > 0.8 * 0.02 / np.sqrt(12)  # the uniform fallback, not a point


def test_joint_row_without_a_usable_joint_model_draws_as_refinery(diagonal_chains):
    """run_chained with stand-in stages and an evaluator where no chain succeeds: the joint
    model cannot be fitted, and refinery_joint must then choose θ as refinery does (each
    stage's GMM), not uniformly."""
    from refinery_jax.refinery.deployment import fit_success_model
    from refinery_jax.refinery.sequence import ChainResult, run_chained

    lows, highs, inits, _ = diagonal_chains
    near_centre = lambda k: np.abs(np.asarray(inits[k, :, 0]) - (lows[k][0] + 0.01)) < 0.002  # noqa: E731
    models = [jax.tree.map(lambda a: a[None], fit_success_model(jax.random.key(k), inits[k], near_centre(k), lows[k],
                                                                highs[k]))
              for k in range(2)]  # [S = 1]: each stage succeeds within 2 mm of its box centre in x
    stages = [SimpleNamespace(trainer=SimpleNamespace(policy=lambda p: p, env=SimpleNamespace(init_low=lo, init_high=hi)),
                              baseline=jnp.zeros((1, 1)),
                              result=SimpleNamespace(finetune=SimpleNamespace(train=jnp.zeros((1, 1))),
                                                     deployment={"baseline": m, "finetuned": m}))
              for lo, hi, m in zip(lows, highs, models)]
    calls = []

    def never(params, key, chain_inits):  # a ChainEvaluator under which no stage ever succeeds
        calls.append(chain_inits.shape)
        fail = np.zeros(chain_inits.shape[:2], bool)
        return ChainResult(fail, fail[0], np.zeros(fail.shape), np.asarray(chain_inits))

    out, joint = run_chained(never, stages, jax.random.key(0)[None], trials=200, fit_trials=100, progress=lambda m: None)
    assert calls == [(2, 200, 3)] * 4 + [(2, 100, 3)] + [(2, 200, 3)]  # four rows, the fit, the joint row
    assert not bool(joint[0].usable)
    spread = lambda row: np.asarray(out[row].inits[0, :, :, 0]).std(axis=1)  # noqa: E731  [K] m
    uniform_std = 0.02 / np.sqrt(12)
    assert np.all(spread("baseline") > 0.8 * uniform_std)
    assert np.all(spread("refinery") < 0.5 * uniform_std)
    assert np.all(spread("refinery_joint") < 0.5 * uniform_std), spread("refinery_joint")


# ------------------------------------------------------------------ experiments/sequence.py

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "sequence.py"


@pytest.fixture(scope="module")
def sequence_main(load_script_main):
    return load_script_main(SCRIPT)


@pytest.mark.parametrize("args,message", [
    (("--assembly", "nope"), "unknown assembly 'nope'"),
    (("--assembly", ASSEMBLY, "--seeds", "0"), "--seeds must be positive"),
    (("--assembly", ASSEMBLY, "--baseline-updates", "7"), "multiple of the chunk size"),
    (("--assembly", ASSEMBLY, "--init-from", "/nonexistent"), "holds no specialists"),
    (("--assembly", ASSEMBLY, "--init-from", "EMPTY_DONOR"), "holds no specialists"),
    (("--assembly", ASSEMBLY, "--all"), "not allowed with argument"),
    (("--assembly", ASSEMBLY, "--stage-updates", "10", "20"), "has 3 stages, got 2 values"),
    (("--assembly", ASSEMBLY, "--stage-updates", "10", "10", "7"), "multiple of the chunk size"),
    (("--assembly", ASSEMBLY, "--stage-updates", "10", "--baseline-updates", "10"), "exclude each other"),
    ((), "one of the arguments --assembly --all is required"),
])
def test_sequence_script_rejects_bad_arguments(sequence_main, capsys, tmp_path, args, message):
    donor = tmp_path / "donor"  # a refinery.py run directory whose specialists were never saved
    (donor / "baseline").mkdir(parents=True)
    (donor / "config.json").write_text(json.dumps({"seeds": [0], "ppo": {"num_updates": 10}}))
    args = tuple(str(donor) if a == "EMPTY_DONOR" else a for a in args)
    with pytest.raises(SystemExit) as exc:
        sequence_main(["--out", str(tmp_path / "run"), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_sequence_script_never_overwrites_a_finished_run(sequence_main, tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        sequence_main(["--assembly", ASSEMBLY, "--out", str(tmp_path)])
    assert "finished run" in str(exc.value.code)
    assert (tmp_path / "results.json").read_text() == "{}"
    with pytest.raises(SystemExit) as exc:  # --all wants a directory of its own
        (tmp_path / "config.json").write_text("{}")
        sequence_main(["--all", "--out", str(tmp_path)])
    assert "single-assembly run" in str(exc.value.code)


@pytest.mark.slow
def test_sequence_script_end_to_end_and_resume(tmp_path):
    """two_pin_plate (3 stages) on a tiny budget: per-stage tables, both sequence modes, the joint
    row, the figure; --resume after losing results.json restores every stage and chained row."""
    out = tmp_path / "run"
    args = [sys.executable, str(SCRIPT), "--assembly", ASSEMBLY, "--seeds", "2", "--out", str(out),
            "--stage-updates", "10", "10", "20", "--max-rounds", "2", "--eval-trials", "16", "--gmm-inits", "16"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=7200, cwd=SCRIPT.parents[1])  # ~1 h loaded
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["stages"] == list(stage_names(ASSEMBLY)) and len(results["per_stage"]) == 3
    assert set(results["paper"]) == {"baseline", "deployment", "finetune", "refinery"}
    assert set(results["chained"]) == {"baseline", "deployment", "finetune", "refinery", "refinery_joint"}
    for row in results["chained"].values():
        assert len(row["stages"]) == 3 and len(row["sequence"]["per_seed"]) == 2
        assert row["sequence"]["success_mean"] <= min(s["success_mean"] for s in row["stages"]) + 1e-9
    assert pathlib.Path(results["figure"]).exists() and (out / "table.txt").exists()
    # per-stage budgets, and each stage after the first starts from the stage before
    batch = results["specialist_env_steps_per_stage"][0] // 10
    assert results["specialist_env_steps_per_stage"] == [10 * batch, 10 * batch, 20 * batch]
    assert "(20 PPO updates, from stage 2's specialists)" in first.stdout
    assert "within 5 mm of its assembled pose" in (out / "table.txt").read_text()
    assert results["loose_part_tolerance_m"] == 0.005
    (out / "results.json").rename(tmp_path / "first.json")
    again = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=3600, cwd=SCRIPT.parents[1])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "restored chain_fresh_refinery_joint" in again.stdout and "restored finetune" in again.stdout
    second = json.loads((out / "results.json").read_text())
    assert second["chained"] == results["chained"] and second["paper"] == results["paper"]
    (out / "results.json").unlink()  # a resumed run refuses other settings and keeps its record
    record = (out / "config.json").read_text()
    changed = subprocess.run(args[:-1] + ["32", "--resume"], capture_output=True, text=True, timeout=600,
                             cwd=SCRIPT.parents[1])
    assert changed.returncode != 0 and "was started with fingerprint" in changed.stderr
    assert (out / "config.json").read_text() == record
