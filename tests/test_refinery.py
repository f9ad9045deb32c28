"""Refinery: the convergence rule, statistics, samplers, and the whole comparison on a tiny task.

The end-to-end fixture starts from a hand-made "specialist" on the round peg (no yaw
to correct): a proportional controller toward the observed goal written into the
actor's weights. It succeeds often but not always (about 90 % in a hand run over 64
starts), without any training, which makes the GMM, the GP and the table non-trivial
in CI time.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from refinery_jax.envs.assembly_env import EnvConfig, observation_slice
from refinery_jax.evaluation import make_evaluate
from refinery_jax.ppo import PPOConfig, default_hyperparams, make_trainer
from refinery_jax.refinery import (
    KEY_STREAMS,
    METHODS,
    MIN_SUCCESSES,
    ComparisonConfig,
    FineTuneConfig,
    cell_variance,
    comparison_table,
    deployment_sampler,
    expected_normal_range,
    format_table,
    gp_data,
    has_converged,
    key_streams,
    make_comparison,
    make_finetune,
    proposal_sampler,
    run_comparison,
    summarize_seeds,
    t_quantile_975,
    wilson_interval,
)
from refinery_jax.refinery.results_io import load_run, pack_arrays, save_run
from refinery_jax.refinery.finetune import stop_span
from refinery_jax.refinery.stats import mcnemar_exact_p, paired_difference
from refinery_jax.refinery.deployment import fit_success_model
from refinery_jax.success_models import ProposalConfig

REPO = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# pure pieces
# ---------------------------------------------------------------------------

def test_convergence_rule_on_a_synthetic_history():
    rates = jnp.array([0.50, 0.62, 0.70, 0.76, 0.77, 0.78, 0.79, 0.79, 0.0, 0.0])
    # 1e6 trials per rate: no noise allowance, the relative 5 %: rounds 3..7 span 0.09; rounds 4..8
    # span 0.03 <= 0.05 x 0.778
    got = [bool(has_converged(rates, n, 5, 0.05, 10 ** 6)) for n in range(1, 11)]
    assert got[:7] == [False] * 7
    assert got[7]  # after the 8th evaluation
    # entries beyond `count` are ignored (the zeros at 9 and 10 would break the span)
    assert bool(has_converged(rates, 8, 5, 0.05, 10 ** 6))
    assert not bool(has_converged(rates, 4, 5, 1.0, 10 ** 6))  # fewer evaluations than the window
    assert bool(has_converged(jnp.full(6, 0.9), 5, 5, 0.05, 256))
    assert bool(has_converged(jnp.zeros(5), 5, 5, 0.05, 256))  # a policy stuck at 0 has stopped changing
    # the same five rates: within noise on 256 trials (allowed 2.326 x 0.0243 = 0.057), not on 4096
    noisy = jnp.array([0.80, 0.84, 0.82, 0.79, 0.83])
    assert bool(has_converged(noisy, 5, 5, 0.05, 256)) and not bool(has_converged(noisy, 5, 5, 0.05, 4096))
    span, allowed = stop_span(noisy, 5, 5, 0.05, 256)
    assert float(span) == pytest.approx(0.05) and float(allowed) == pytest.approx(2.326 * (0.816 * 0.184 / 256) ** 0.5, rel=1e-3)


def test_expected_normal_range_matches_tables_and_simulation():
    # d2 of statistical process control tables
    for n, d2 in ((2, 1.128), (3, 1.693), (5, 2.326), (10, 3.078)):
        assert expected_normal_range(n) == pytest.approx(d2, abs=1e-3)
    draws = np.random.default_rng(0).normal(size=(200_000, 7))
    assert expected_normal_range(7) == pytest.approx(np.ptp(draws, axis=1).mean(), abs=0.01)
    assert expected_normal_range(1) == pytest.approx(0.0, abs=1e-9)


def test_stopping_rule_follows_the_policy_not_the_evaluation_noise():
    """Simulated evaluations (binomial rates): a policy that stopped improving is stopped within a
    few rounds whatever the number of evaluation trials; one that still improves by more than
    the noise is not stopped. The old rule (absolute span < 0.05) failed the first half at 64
    trials: a flat policy's rates mostly span more than 0.05, so it ran to the round budget."""
    rng = np.random.default_rng(0)
    runs, rounds, window = 2000, 10, 5
    for trials in (64, 256, 4096):
        check = jax.jit(jax.vmap(lambda r, n: has_converged(r, n, window, 0.05, trials), in_axes=(0, None)))
        flat = rng.binomial(trials, 0.8, (runs, rounds)) / trials
        stopped = np.any(np.stack([np.asarray(check(flat, n)) for n in range(window, rounds + 1)]), axis=0)
        assert stopped.mean() > 0.8, (trials, stopped.mean())
        improving = rng.binomial(trials, np.linspace(0.4, 0.85, rounds), (runs, rounds)) / trials
        # +0.05 per round: at 64 trials (σ ≈ 0.06 per rate) some windows look flat
        assert np.asarray(check(improving, window)).mean() < (0.2 if trials == 64 else 0.01), trials
    flat_64 = rng.binomial(64, 0.8, (runs, rounds)) / 64
    old = np.any([np.ptp(flat_64[:, n - window:n], axis=1) < 0.05 for n in range(window, rounds + 1)], axis=0)
    assert old.mean() < 0.3  # measured 0.21 (the new rule: 0.87)


def test_gp_data_keeps_earlier_rounds_down_weighted():
    inits = jnp.arange(4 * 2 * 3, dtype=jnp.float32).reshape(4, 2, 3)  # R = 4 rounds of E = 2 points
    success = jnp.array([[1, 0], [0, 1], [1, 1], [0, 0]], bool)
    x, y, w = gp_data(inits, success, jnp.asarray(2), 3, 0.5)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(inits[jnp.array([2, 1, 0])].reshape(-1, 3)))
    np.testing.assert_array_equal(np.asarray(y), [1, 1, 0, 1, 1, 0])
    np.testing.assert_allclose(np.asarray(w), [1, 1, 0.5, 0.5, 0.25, 0.25])
    _, _, w = gp_data(inits, success, jnp.asarray(0), 3, 0.5)
    np.testing.assert_allclose(np.asarray(w), [1, 1, 0, 0, 0, 0])  # no rounds before the first: padding


def test_t_quantiles_and_intervals_match_scipy():
    for dof in (1, 2, 4, 9, 29):
        assert t_quantile_975(dof) == pytest.approx(scipy.stats.t.ppf(0.975, dof), abs=1e-3)
    low, high = wilson_interval(37, 50)
    ref = scipy.stats.binomtest(37, 50).proportion_ci(0.95, method="wilson")
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-3)

    rng = np.random.default_rng(0)
    success = rng.random((4, 200)) < np.array([[0.6], [0.7], [0.8], [0.75]])
    row = summarize_seeds(success)
    rates = success.mean(1)
    ref_low, ref_high = scipy.stats.t.interval(0.95, 3, loc=rates.mean(), scale=scipy.stats.sem(rates))
    assert row["success_mean"] == pytest.approx(rates.mean())
    assert row["success_std"] == pytest.approx(rates.std(ddof=1))
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((ref_low, ref_high), abs=1e-3)
    one = summarize_seeds(success[:1])
    assert one["ci_method"].startswith("wilson") and one["success_std"] == 0.0


def test_paired_difference_against_scipy_and_by_hand():
    rng = np.random.default_rng(3)
    base = rng.random((3, 400)) < 0.7
    row = base.copy()
    flip = rng.random(base.shape) < 0.1
    row[flip] = ~row[flip]  # discordant pairs both ways
    got = paired_difference(row, base)
    b, c = int(np.sum(row & ~base)), int(np.sum(~row & base))
    assert (got["row_only"], got["reference_only"]) == (b, c) and b > 0 and c > 0
    assert got["mcnemar_p"] == pytest.approx(scipy.stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)
    diffs = row.mean(1) - base.mean(1)
    low, high = scipy.stats.t.interval(0.95, 2, loc=diffs.mean(), scale=scipy.stats.sem(diffs))
    assert got["difference"] == pytest.approx(diffs.mean())
    assert (got["ci95_low"], got["ci95_high"]) == (pytest.approx(low, abs=2e-4), pytest.approx(high, abs=2e-4))
    # one seed, by hand: n = 100 pairs, 12 row-only, 4 reference-only; +1/2 per cell -> n' = 102
    one = np.zeros((1, 100), bool), np.zeros((1, 100), bool)
    one[0][0, :12] = True
    one[1][0, 12:16] = True
    got = paired_difference(*one)
    diff, var = (12.5 - 4.5) / 102, ((12.5 + 4.5) - (12.5 - 4.5) ** 2 / 102) / 102 ** 2
    assert got["difference"] == pytest.approx(0.08)
    assert got["ci95_low"] == pytest.approx(diff - 1.96 * var ** 0.5) and got["ci95_high"] == pytest.approx(diff + 1.96 * var ** 0.5)
    # identical outcomes: no difference, p = 1, and still an interval of non-zero width for one seed
    same = paired_difference(base[:1], base[:1])
    assert same["difference"] == 0 and same["mcnemar_p"] == 1.0 and same["ci95_low"] < 0 < same["ci95_high"]
    assert mcnemar_exact_p(0, 7) == pytest.approx(2 / 2 ** 7)
    with pytest.raises(ValueError, match="one shape"):
        paired_difference(base, base[:, :10])


def test_cell_variance_by_hand():
    low, high = np.array([-1.0, -1.0, 0.0]), np.array([1.0, 1.0, 1.0])
    # two cells of a 2x2 grid populated: (x<0, y<0) all successes, (x>0, y>0) half
    inits = np.array([[-0.5, -0.5, 0.5]] * 10 + [[0.5, 0.5, 0.5]] * 10)
    success = np.array([1] * 10 + [1, 0] * 5, bool)
    stats = cell_variance(inits, success, low, high, cells=2, min_trials=10)
    assert stats["cells_used"] == 2
    assert stats["variance"] == pytest.approx(np.var([1.0, 0.5]))
    assert stats["variance_denoised"] == pytest.approx(np.var([1.0, 0.5]) - np.mean([0.0, 0.25 / 9]))
    assert cell_variance(inits, success, low, high, cells=2, min_trials=11)["cells_used"] == 0


def test_proposal_sampler_mixes_proposals_and_uniform():
    low, high = jnp.array([-1.0, -1.0, 0.0]), jnp.array([1.0, 1.0, 1.0])
    proposals = jnp.array([[0.1, 0.2, 0.3], [-0.4, 0.5, 0.6]])
    keys = jax.random.split(jax.random.key(0), 4000)
    only = jax.vmap(proposal_sampler(proposals, low, high, 0.0))(keys)
    assert bool(jnp.all(jnp.any(jnp.all(only[:, None] == proposals[None], -1), -1)))
    frac_first = float(jnp.mean(jnp.all(only == proposals[0], -1)))
    assert 0.45 < frac_first < 0.55
    mixed = jax.vmap(proposal_sampler(proposals, low, high, 0.25))(keys)
    is_proposal = jnp.any(jnp.all(mixed[:, None] == proposals[None], -1), -1)
    assert 0.22 < 1 - float(jnp.mean(is_proposal)) < 0.28
    assert bool(jnp.all((mixed >= low) & (mixed <= high)))


@pytest.fixture(scope="module")
def edge_gmm():
    """A GMM fitted to successes crowded against the box's +x face (half its mass lies outside)."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal([0.0095, 0.0, 0.015], [0.001, 0.002, 0.002], (300, 3)),
                        rng.uniform([-0.01, -0.01, 0.01], [0.01, 0.01, 0.02], (300, 3))]).astype(np.float32)
    success = np.arange(600) < 300
    return x, success, fit_success_model(jax.random.key(0), x, success, *EDGE_BOX)


EDGE_BOX = np.array([-0.01, -0.01, 0.01], np.float32), np.array([0.01, 0.01, 0.02], np.float32)


def test_deployment_sampler_stays_in_the_box(edge_gmm):
    x, success, model = edge_gmm
    low, high = EDGE_BOX
    keys = jax.random.split(jax.random.key(2), 512)
    for selection in ("argmax", "random"):
        from refinery_jax.success_models import DeploymentConfig
        inits = np.asarray(jax.jit(jax.vmap(deployment_sampler(model, DeploymentConfig(selection=selection))))(keys))
        assert np.all((inits >= low) & (inits <= high)), selection
        assert len(np.unique(inits, axis=0)) > 400, "a fresh selection per episode, not one fixed point"
        assert np.mean(inits[:, 0] > 0.005) > 0.5, "selections follow the successes"
    # too few successes: uniform over the box
    unusable = model.replace(usable=jnp.asarray(False))
    inits = np.asarray(jax.vmap(deployment_sampler(unusable))(keys))
    assert np.all((inits >= low) & (inits <= high)) and abs(float(inits[:, 0].mean())) < 0.002
    assert MIN_SUCCESSES == 4


def test_fit_deployment_eagerly_and_under_jit():
    """Algorithm 2's offline phase with a stand-in evaluator (success iff θ_x > 0): the GMM
    learns the successful half, and the jitted call gives the eager one's model."""
    from types import SimpleNamespace

    from refinery_jax.refinery import fit_deployment

    low, high = EDGE_BOX
    evaluate = lambda policy, inits, key: SimpleNamespace(inits=inits, success=inits[:, 0] > policy)  # noqa: E731
    eager = fit_deployment(jax.random.key(7), evaluate, 0.0, low, high, num_inits=400)
    jitted = jax.jit(lambda k, p: fit_deployment(k, evaluate, p, low, high, num_inits=400))(jax.random.key(7), 0.0)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-4, atol=1e-6)
    assert bool(eager.usable) and 150 < int(eager.num_successes) < 250
    chosen = np.asarray(jax.vmap(deployment_sampler(eager))(jax.random.split(jax.random.key(8), 300)))
    assert np.mean(chosen[:, 0] > 0) > 0.9


def test_success_model_does_not_depend_on_units_and_is_the_same_under_jit(edge_gmm):
    """The GMM is fitted in the unit box: θ in millimetres gives the same selections (x 1000) as
    θ in metres. (With the old absolute reg_covar of 1e-6 m², a 1 mm floor on every std in
    metres and 1 µm in millimetres, the two differed.) Eager and jitted fits agree."""
    x, success, model = edge_gmm
    low, high = EDGE_BOX
    in_mm = fit_success_model(jax.random.key(0), 1000 * x, success, 1000 * low, 1000 * high)
    keys = jax.random.split(jax.random.key(5), 256)
    metres = np.asarray(jax.vmap(deployment_sampler(model))(keys), np.float64)
    millimetres = np.asarray(jax.vmap(deployment_sampler(in_mm))(keys), np.float64)
    np.testing.assert_allclose(millimetres, 1000 * metres, atol=1e-3)
    jitted = jax.jit(fit_success_model)(jax.random.key(0), x, success, low, high)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(model)):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-4, atol=1e-6)
    # an extreme box (1 µm wide) still gives finite selections inside it
    tiny_box = fit_success_model(jax.random.key(0), 1e-4 * x, success, 1e-4 * low, 1e-4 * high)
    tiny = np.asarray(jax.vmap(deployment_sampler(tiny_box))(keys))
    assert np.all(np.isfinite(tiny)) and np.all((tiny >= 1e-4 * low - 1e-12) & (tiny <= 1e-4 * high + 1e-12))


# ---------------------------------------------------------------------------
# the comparison end to end on a tiny configuration
# ---------------------------------------------------------------------------

GAIN = 30.0  # proportional gain of the hand-made specialist (action units per metre)


def p_controller(train_state):
    """Overwrite the actor with mean = GAIN * (observed goal - fingertip) in xyz, 0 in rotation."""
    params = jax.tree.map(lambda x: x, train_state.params)
    actor = params["params"]["actor"]
    (l0, d0), (l1, d1) = sorted(actor.items())
    hidden = actor[l0]["kernel"].shape[1]
    obs_dim = actor[l0]["kernel"].shape[0]
    error = observation_slice("goal_minus_fingertip")
    w0 = jnp.zeros((obs_dim, hidden)).at[error.start + jnp.arange(3), jnp.arange(3)].set(1.0)
    offset = 10.0  # keeps the ELU in its linear part
    actor[l0] = {"kernel": w0, "bias": jnp.full(hidden, offset)}
    w1 = jnp.zeros((hidden, 6)).at[jnp.arange(3), jnp.arange(3)].set(GAIN)
    actor[l1] = {"kernel": w1, "bias": jnp.concatenate([jnp.full(3, -GAIN * offset), jnp.zeros(3)])}
    stats = train_state.obs_stats.replace(mean=jnp.zeros_like(train_state.obs_stats.mean),
                                          var=jnp.ones_like(train_state.obs_stats.var))
    return train_state.replace(params=params, obs_stats=stats)


TINY_PPO = PPOConfig(env=EnvConfig(task="round_peg"), num_envs=8, num_steps=8, num_updates=2, update_epochs=1, num_minibatches=2,
                     actor_hidden=(16,), critic_hidden=(16,))
# one θ count everywhere (fresh rows, GMM data, BO rounds): a single compiled evaluation
TINY = ComparisonConfig(eval_trials=16, gmm_inits=16, finetune=FineTuneConfig(
    eval_points=16, updates_per_round=1, max_rounds=3, window=2, learning_rate=1e-5,
    proposal=ProposalConfig(q=4, num_candidates=64, num_starts=4, num_steps=5)))


@pytest.fixture(scope="module")
def tiny():
    trainer = make_trainer(TINY_PPO)
    evaluate = make_evaluate(trainer.env, trainer.model, batch_size=16)
    comparison = make_comparison(TINY, trainer, evaluate)
    keys = jax.random.split(jax.random.key(0), 2)
    baseline = jax.jit(jax.vmap(trainer.init, in_axes=(0, None)))(keys, default_hyperparams(TINY_PPO))
    baseline = jax.vmap(p_controller)(baseline)
    messages = []
    result = run_comparison(comparison, trainer, keys, baseline, progress=messages.append)
    table = comparison_table(result, trainer.env.init_low, trainer.env.init_high)
    return dict(trainer=trainer, comparison=comparison, keys=keys, baseline=baseline, result=result, table=table,
                messages=messages)


def test_comparison_table_has_five_rows_from_fresh_trials(tiny):
    table = tiny["table"]
    assert tuple(table) == METHODS
    for method, row in table.items():
        assert len(row["per_seed"]) == 2 and row["trials_per_seed"] == TINY.eval_trials
        assert row["ci95_low"] <= row["success_mean"] <= row["ci95_high"]
        assert 0.0 <= row["success_mean"] <= 1.0
    base = table["baseline"]
    assert 0.0 < base["success_mean"] < 1.0, "the hand-made specialist should succeed from some θ only"
    assert all(table["deployment"]["gmm"]["usable_per_seed"])
    # deployment concentrates the starts
    for conc in table["deployment"]["init_concentration_per_seed"]:
        assert max(conc["std_over_uniform_std"][:2]) < 0.9


def test_fresh_trials_are_disjoint_from_fitting_data(tiny):
    result = tiny["result"]
    fitted = [result.deployment["baseline"].fit_inits, result.deployment["finetuned"].fit_inits,
              result.finetune.history.eval_inits.reshape(2, -1, 3)]
    for method in METHODS:
        fresh = np.asarray(result.fresh[method].inits)
        for seed in range(2):
            for data in fitted:
                data = np.asarray(data[seed])
                same = np.any(np.all(fresh[seed][:, None] == data[None], -1))
                assert not same, f"{method} reused a fitting init"
    streams = jax.vmap(lambda k: jnp.stack([jax.random.key_data(v) for v in key_streams(k).values()]))(tiny["keys"])
    flat = np.asarray(streams).reshape(-1, streams.shape[-1])
    assert len(np.unique(flat, axis=0)) == 2 * len(KEY_STREAMS)


def test_rows_share_their_fresh_trials(tiny):
    """Common random numbers: the uniform-θ rows are evaluated on the same θ, the GMM rows draw
    theirs with one key, and each row's paired difference to Baseline is in the table."""
    fresh = tiny["result"].fresh
    for method in ("finetune", "uniform_finetune"):
        np.testing.assert_array_equal(np.asarray(fresh[method].inits), np.asarray(fresh["baseline"].inits))
    assert not np.array_equal(np.asarray(fresh["deployment"].inits), np.asarray(fresh["baseline"].inits))
    table = tiny["table"]
    assert "vs_baseline" not in table["baseline"]
    for method in METHODS[1:]:
        d = table[method]["vs_baseline"]
        expected = np.asarray(fresh[method].success).mean(1) - np.asarray(fresh["baseline"].success).mean(1)
        np.testing.assert_allclose(d["per_seed"], expected)
        assert d["ci95_low"] <= d["difference"] <= d["ci95_high"]
    assert "Δ vs baseline" in format_table(table).splitlines()[0]


def test_finetune_history_and_control_budget(tiny):
    bo, control = tiny["result"].finetune, tiny["result"].control
    rounds = np.asarray(bo.rounds)
    assert np.all((rounds >= TINY.finetune.window) | np.asarray(bo.converged) | (rounds == TINY.finetune.max_rounds))
    assert np.all(np.asarray(bo.done))
    np.testing.assert_array_equal(np.asarray(control.rounds), rounds)
    steps = TINY.finetune.updates_per_round * TINY_PPO.batch_size
    for s, r in enumerate(rounds):
        trained = np.asarray(bo.history.trained[s, :r])
        assert trained.sum() == r - 1 and not trained[-1], "every round trains except the final evaluation"
        assert int(bo.history.env_steps[s, r - 1]) == (r - 1) * steps
        assert int(control.history.env_steps[s, r - 1]) == (r - 1) * steps
        proposals = np.asarray(bo.history.proposals[s, :r])
        low, high = tiny["trainer"].env.init_low, tiny["trainer"].env.init_high
        assert np.all((proposals >= low) & (proposals <= high)) and np.ptp(proposals) > 0
        assert int(bo.train.update[s]) == int(tiny["baseline"].update[s]) + (r - 1) * TINY.finetune.updates_per_round


def test_fine_tuning_rounds_share_one_compiled_program(tiny):
    """Proposals and the uniform share are traced state of one PPO program: every round of the BO
    run and of the uniform control ran the same compiled `improve` (and `record`), no recompile
    per round, and the ablation's arms reuse it through `share_programs`."""
    from refinery_jax.refinery.comparison import batched
    from refinery_jax.refinery.finetune import share_programs

    bo = tiny["comparison"].finetune_bo
    assert int(np.max(np.asarray(tiny["result"].finetune.rounds))) >= 2
    assert batched(bo.improve)._cache_size() == 1
    assert batched(bo.record)._cache_size() == 1
    other = make_finetune(dataclasses.replace(TINY.finetune, proposal=ProposalConfig(kind="ei", q=4, num_candidates=64,
                                                                                 num_starts=4, num_steps=5)),
                          tiny["trainer"], tiny["comparison"].evaluate)
    assert share_programs(other, bo).improve is bo.improve
    with pytest.raises(ValueError, match="updates_per_round"):
        share_programs(make_finetune(dataclasses.replace(TINY.finetune, updates_per_round=2), tiny["trainer"],
                                     tiny["comparison"].evaluate), bo)


def test_theta_box_is_a_script_option():
    from refinery_jax.envs.assembly_env import AssemblyEnv
    from refinery_jax.refinery.presets import configure

    spec, _ = configure("quick", "round_peg", init_xy=0.004, init_height=(0.005, 0.008))
    env = AssemblyEnv(spec.config.env)
    depth = env.assembly.depth
    np.testing.assert_allclose(env.init_low, [-0.004, -0.004, depth + 0.005], rtol=1e-6)
    np.testing.assert_allclose(env.init_high, [0.004, 0.004, depth + 0.008], rtol=1e-6)


def test_fine_tuning_ignores_the_specialists_curriculum():
    """A specialist trained with a start-height curriculum (the paper preset) is fine-tuned on
    the proposals themselves: every episode that starts during a round starts at a proposal,
    not raised or lowered by the curriculum's offset."""
    from refinery_jax.ppo.config import CurriculumConfig

    config = dataclasses.replace(TINY_PPO, curriculum=CurriculumConfig(initial=-0.006, minimum=-0.008), num_steps=16)
    trainer = make_trainer(config)
    evaluate = make_evaluate(trainer.env, trainer.model, batch_size=16)
    finetune = make_finetune(dataclasses.replace(TINY.finetune, uniform_share=0.0), trainer, evaluate)
    state = finetune.init(jax.random.key(0), trainer.init(jax.random.key(1)))
    state = jax.jit(finetune.record)(state, jnp.zeros((TINY.finetune.eval_points, 3)), jnp.ones(TINY.finetune.eval_points, bool))
    proposal = jnp.array([0.004, -0.003, 0.03])
    state = state.replace(history=state.history.replace(proposals=state.history.proposals.at[0].set(proposal)))
    before = np.asarray(state.train.env_state.info.init)
    after = np.asarray(jax.jit(finetune.improve)(state).train.env_state.info.init)
    restarted = np.any(after != before, axis=1)
    assert restarted.any(), "no episode started during the round: lengthen it"
    np.testing.assert_allclose(after[restarted], np.broadcast_to(np.asarray(proposal), after[restarted].shape), atol=1e-6)


def test_a_failed_gp_fit_is_recorded_and_falls_back_visibly(tiny):
    """Non-finite evaluation data (here NaN θ) make the GP's posterior non-finite: the round is
    marked `gp_failed`, its proposals are uniform draws inside the box, and the log says so."""
    from refinery_jax.refinery.comparison import run_rounds

    finetune, baseline = tiny["comparison"].finetune_bo, tiny["baseline"]
    one = jax.tree.map(lambda a: a[0], baseline)
    state = finetune.init(jax.random.key(1), one)
    inits = jnp.full((TINY.finetune.eval_points, 3), jnp.nan)
    recorded = jax.jit(finetune.record)(state, inits, jnp.ones(TINY.finetune.eval_points, bool))
    assert bool(recorded.history.gp_failed[0])
    proposals = np.asarray(recorded.history.proposals[0])
    low, high = tiny["trainer"].env.init_low, tiny["trainer"].env.init_high
    assert np.all(np.isfinite(proposals)) and np.all((proposals >= low) & (proposals <= high))
    fine = jax.jit(finetune.record)(state, jnp.zeros_like(inits), jnp.ones(TINY.finetune.eval_points, bool))
    assert not bool(fine.history.gp_failed[0])
    # through the round loop: an evaluator that reports NaN θ reached (the GP learns from those)
    messages = []

    def nan_evaluate(policies, inits, keys):
        result = tiny["comparison"].evaluate(policies, inits, keys)
        return result._replace(inits=jnp.full_like(result.inits, jnp.nan))

    states = jax.vmap(lambda k, t: finetune.init(k, t, 1))(tiny["keys"], baseline)
    out = run_rounds(finetune, states, nan_evaluate, tiny["trainer"].policy, progress=messages.append)
    assert np.all(np.asarray(out.history.gp_failed[:, 0]))
    assert any("GP fit NOT finite for seed(s) [0, 1]" in m for m in messages)


def test_same_seed_gives_the_same_table(tiny):
    again = run_comparison(tiny["comparison"], tiny["trainer"], tiny["keys"], tiny["baseline"], progress=lambda m: None)
    table = comparison_table(again, tiny["trainer"].env.init_low, tiny["trainer"].env.init_high)
    for method in METHODS:
        assert table[method]["per_seed"] == tiny["table"][method]["per_seed"]
    np.testing.assert_array_equal(np.asarray(again.finetune.history.proposals),
                                  np.asarray(tiny["result"].finetune.history.proposals))


@pytest.fixture(scope="module")
def tiny_run_dir(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("refinery_run")
    env = tiny["trainer"].env
    arrays = pack_arrays(tiny["result"], env.init_low, env.init_high, TINY.finetune)
    results = {"task": "round_peg", "seeds": [0, 1], "eval_trials": TINY.eval_trials, "methods": tiny["table"]}
    save_run(out, results, arrays)
    return out


def test_saved_run_round_trips_and_draws(tiny_run_dir, tiny):
    from refinery_jax.refinery.plots import draw_run_figures

    run = load_run(tiny_run_dir)
    assert run.methods == METHODS
    inits, success = run.fresh("refinery", 1)
    np.testing.assert_array_equal(inits, np.asarray(tiny["result"].fresh["refinery"].inits[1]))
    # the GP figure conditions on what the round's GP saw: this round's data and, down-weighted, earlier rounds'
    _, x, y, weights, _ = run.gp_round(0, 1)
    e = TINY.finetune.eval_points
    assert x.shape == (TINY.finetune.gp_rounds * e, 3)
    np.testing.assert_allclose(weights[: 2 * e], [1.0] * e + [TINY.finetune.gp_decay] * e)
    np.testing.assert_array_equal(x[:e], np.asarray(tiny["result"].finetune.history.eval_inits[0, 1]))
    figures = draw_run_figures(run, tiny_run_dir / "figures", "round_peg")
    assert all(pathlib.Path(p).stat().st_size > 1000 for p in figures.values())


def test_notebook_executes_on_a_saved_run(tiny_run_dir):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / "explore_refinery_run.ipynb", as_version=4)
    os.environ["REFINERY_RUN"] = str(tiny_run_dir)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    finally:
        del os.environ["REFINERY_RUN"]
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "baseline" in outputs and "refinery" in outputs and "length-scales" in outputs
    assert not any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))


# ---------------------------------------------------------------------------
# the experiment script's guards (before anything compiles)
# ---------------------------------------------------------------------------

SCRIPT = REPO / "experiments" / "refinery.py"


def test_script_help():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert proc.returncode == 0 and "--seeds" in proc.stdout and "--acquisition" in proc.stdout


@pytest.fixture(scope="module")
def script_main(load_script_main):
    return load_script_main(SCRIPT)


@pytest.mark.parametrize("args,message", [
    (("--task", "nope"), "unknown task 'nope'"),
    (("--seeds", "0"), "--seeds must be positive"),
    (("--acquisition", "thompson"), "invalid choice: 'thompson'"),
    (("--baseline-updates", "7"), "multiple of the chunk size"),
    (("--baselines", "/nonexistent"), "holds no specialists"),
    (("--baselines", "/nonexistent", "--baseline-updates", "10"), "exclude each other"),
    (("--init-xy", "0"), "positive width on every axis"),
    (("--init-height", "0.02", "0.01"), "bad init box"),
])
def test_script_rejects_bad_arguments(script_main, capsys, tmp_path, args, message):
    with pytest.raises(SystemExit) as exc:
        script_main(["--out", str(tmp_path / "run"), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_script_never_overwrites_a_finished_run(script_main, tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        script_main(["--out", str(tmp_path)])
    assert "finished run" in str(exc.value.code)
    assert (tmp_path / "results.json").read_text() == "{}"


@pytest.mark.slow
def test_one_jitted_run_equals_the_round_loop(tiny):
    """`finetune.run` (a while_loop: one jittable function of the key) gives the loop's result."""
    finetune = tiny["comparison"].finetune_bo
    keys = jax.vmap(lambda k: key_streams(k)["finetune"])(tiny["keys"])
    state = jax.jit(jax.vmap(lambda k, ts: finetune.run(finetune.init(k, ts))))(keys, tiny["baseline"])
    looped = tiny["result"].finetune
    np.testing.assert_array_equal(np.asarray(state.rounds), np.asarray(looped.rounds))
    np.testing.assert_allclose(np.asarray(state.history.success_rate), np.asarray(looped.history.success_rate))
    np.testing.assert_allclose(np.asarray(state.history.proposals), np.asarray(looped.history.proposals), atol=1e-6)


@pytest.mark.slow
def test_script_runs_end_to_end_and_resumes(tmp_path):
    """The experiment script on a tiny budget; a rerun with --resume after losing results.json
    restores every stage and reproduces the table."""
    out = tmp_path / "run"
    args = [sys.executable, str(SCRIPT), "--task", "round_peg", "--seeds", "2", "--out", str(out),
            "--baseline-updates", "10", "--max-rounds", "2", "--eval-trials", "32", "--gmm-inits", "32"]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    first = subprocess.run(args, capture_output=True, text=True, timeout=3600, cwd=REPO, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert tuple(results["methods"]) == METHODS
    assert all(pathlib.Path(p).exists() for p in results["figures"].values())
    (out / "results.json").rename(tmp_path / "first.json")
    again = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=3600, cwd=REPO, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "restored finetune" in again.stdout
    second = json.loads((out / "results.json").read_text())
    for method in METHODS:
        assert second["methods"][method]["per_seed"] == results["methods"][method]["per_seed"]


ABLATION = REPO / "experiments" / "acquisition_ablation.py"


@pytest.mark.parametrize("args,message", [
    (("--task", "nope"), "unknown task 'nope'"),
    (("--rounds", "0"), "--rounds must be positive"),
    (("--acquisitions", "ucb", "thompson"), "invalid choice: 'thompson'"),
    (("--baseline-updates", "7"), "multiple of the chunk size"),
    (("--baselines", "/nonexistent"), "holds no specialists"),
])
def test_ablation_script_rejects_bad_arguments(load_script_main, capsys, tmp_path, args, message):
    ablation_main = load_script_main(ABLATION)
    with pytest.raises(SystemExit) as exc:
        ablation_main(["--out", str(tmp_path / "run"), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ablation_script_end_to_end(tmp_path):
    """Two acquisitions and the uniform control on a tiny budget: every arm gets the same rounds
    and env steps, and is evaluated on the same fresh trials."""
    out = tmp_path / "ablation"
    args = [sys.executable, str(ABLATION), "--task", "round_peg", "--seeds", "2", "--out", str(out),
            "--baseline-updates", "10", "--rounds", "2", "--eval-trials", "16", "--acquisitions", "ucb", "ei"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=3600, cwd=REPO,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"baseline", "ucb", "ei", "uniform"} and results["rounds"] == 2
    steps = {name: arm["finetune_env_steps_per_seed"] for name, arm in results["arms"].items() if name != "baseline"}
    assert len({tuple(s) for s in steps.values()}) == 1, steps
    assert pathlib.Path(results["figure"]).exists()


def test_table_without_cell_variance_prints_a_dash_not_nan():
    """The ablation's arms are measured on uniform trials only: no cell variance to print."""
    from refinery_jax.refinery.comparison import format_table

    row = dict(success_mean=0.5, success_std=0.1, ci95_low=0.4, ci95_high=0.6, per_seed=[0.5, 0.5])
    lines = format_table({"ucb": row, "baseline": {**row, "cell_variance": 0.0012}}).splitlines()
    assert lines[1].split()[5] == "-" and "nan" not in "\n".join(lines)
    assert lines[2].split()[5] == "0.0012"


@pytest.mark.slow
def test_paper_preset_through_every_refinery_script(tmp_path):
    """The AutoMate-style preset (LSTM actor, imitation reward from disassembly demos,
    start-height curriculum) on a tiny budget: specialists from experiments/train_specialist.py,
    loaded (not retrained) by experiments/refinery.py and the acquisition ablation; and
    experiments/sequence.py training its own per stage."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}

    def run(script, *args):
        proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=5400,
                              cwd=REPO, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    specialists = tmp_path / "specialists"
    run(REPO / "experiments" / "train_specialist.py", "--task", "round_peg", "--preset", "paper", "--updates", "50",
        "--out", str(specialists), "--eval-episodes", "16", "--map-grid", "2", "--map-z", "1", "--map-trials", "1")
    tiny = ["--eval-trials", "16", "--gmm-inits", "16", "--max-rounds", "2", "--no-figures"]
    out = tmp_path / "refinery"
    proc = run(SCRIPT, "--task", "round_peg", "--preset", "paper", "--baselines", str(specialists), "--out", str(out),
               *tiny)
    assert "training 1 specialist(s)" not in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert tuple(results["methods"]) == METHODS and results["preset"] == "paper"
    assert not (out / "specialists").exists(), "loaded specialists must not be retrained"
    ablation = tmp_path / "ablation"
    run(ABLATION, "--task", "round_peg", "--preset", "paper", "--seeds", "1", "--baselines", str(specialists),
        "--out", str(ablation), "--rounds", "2", "--eval-trials", "16", "--acquisitions", "ucb")
    arms = json.loads((ablation / "results.json").read_text())["arms"]
    assert set(arms) == {"baseline", "ucb", "uniform"} and "vs_uniform" in arms["ucb"]
    sequence = tmp_path / "sequence"
    run(REPO / "experiments" / "sequence.py", "--assembly", "two_pin_plate", "--preset", "paper", "--seeds", "1",
        "--out", str(sequence), "--baseline-updates", "50", *tiny)
    assert set(json.loads((sequence / "results.json").read_text())["paper"]) == {"baseline", "deployment", "finetune",
                                                                                "refinery"}


@pytest.mark.slow
def test_comparison_with_yaw_in_theta(tmp_path):
    """θ = (x, y, z, yaw): the whole comparison, its table, saved arrays and figures run on
    4-D initial conditions, and the rows and proposals carry the yaw."""
    from refinery_jax.refinery.plots import draw_run_figures

    config = dataclasses.replace(TINY_PPO, env=dataclasses.replace(TINY_PPO.env, theta_yaw=True))
    trainer = make_trainer(config)
    evaluate = make_evaluate(trainer.env, trainer.model, batch_size=16)
    keys = jax.random.split(jax.random.key(0), 2)
    baseline = jax.vmap(p_controller)(jax.jit(jax.vmap(trainer.init, in_axes=(0, None)))(keys, default_hyperparams(config)))
    result = run_comparison(make_comparison(TINY, trainer, evaluate), trainer, keys, baseline, progress=lambda m: None)
    low, high = trainer.env.init_low, trainer.env.init_high
    assert low.shape == (4,)
    table = comparison_table(result, low, high)
    assert tuple(table) == METHODS and all(0 <= row["success_mean"] <= 1 for row in table.values())
    for method in METHODS:
        inits = np.asarray(result.fresh[method].inits)
        assert inits.shape == (2, TINY.eval_trials, 4) and np.ptp(inits[..., 3]) > 0.01
    proposals = np.asarray(result.finetune.history.proposals)
    assert proposals.shape[-1] == 4 and np.all((proposals[..., 3] >= low[3]) & (proposals[..., 3] <= high[3]))
    arrays = pack_arrays(result, low, high, TINY.finetune)
    save_run(tmp_path, {"task": "round_peg", "seeds": [0, 1], "eval_trials": TINY.eval_trials, "methods": table}, arrays)
    figures = draw_run_figures(load_run(tmp_path), tmp_path / "figures", "round_peg")
    assert figures and all(pathlib.Path(f).exists() for f in figures.values())
