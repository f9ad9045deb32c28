"""Residual PPO on a frozen base (ResiP's scheme, `ppo.base`): the actor sees the base's
action, starts at a zero correction, the environment gets base + scale * residual, and the
base's per-environment state restarts with every episode."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_ppo import SMOKE, SMOKE_HP

from refinery_jax.ppo import default_hyperparams, make_trainer
from refinery_jax.ppo.base import BasePolicy, memoryless_base
from refinery_jax.ppo.networks import ActorCritic

# the residual-on-a-specialist fine-tuning check: a short batch on the smoke task
SMOKE_RESIDUAL = dataclasses.replace(SMOKE, env=dataclasses.replace(SMOKE.env, init_xy=0.002), num_envs=8, num_steps=8,
                                     num_minibatches=2, update_epochs=1)  # (a θ box with width: the GP needs one)
PUSH = jnp.array([0.0, 0.0, -1.0, 0.0, 0.0, 0.0])  # solves the smoke task on its own (straight down)


def _counting_base(scale):
    """Pushes down scaled by its parameter; its carry counts the steps since the episode began."""
    return BasePolicy(action_size=6, start=lambda batch: jnp.zeros(batch, jnp.int32),
                      act=lambda params, carry, obs, key: (jnp.broadcast_to(params * PUSH, obs.shape[:-1] + (6,)),
                                                           carry + 1),
                      restart=lambda carry, done: jnp.where(done, 0, carry), scale=scale)


@pytest.fixture(scope="module")
def residual():
    """The smoke task's trainer on the counting base, its jitted init and update (the base's
    parameters are a traced input: other bases reuse the compiled programs), one update."""
    trainer = make_trainer(SMOKE, base=_counting_base(0.1))
    hp = default_hyperparams(SMOKE, **SMOKE_HP)
    init, update = jax.jit(trainer.init), jax.jit(trainer.update)
    state = init(jax.random.key(0), hp, jnp.asarray(1.0))
    after, metrics = update(state)
    return trainer, state, after, metrics, (init, update, hp)


def test_residual_starts_at_zero_and_the_base_acts(residual):
    trainer, state, after, metrics, _ = residual
    obs_size = trainer.env.observation_size
    x = jax.random.normal(jax.random.key(1), (5, obs_size + 6))
    _, mean, _ = trainer.model.apply(state.params, x, jnp.zeros((5, 0)), method=ActorCritic.policy)
    np.testing.assert_array_equal(np.asarray(mean), 0.0)  # zero-initialised head: no correction yet
    # the base alone inserts the plug: every episode of the first rollout succeeds
    assert int(metrics.episodes) == SMOKE.num_envs and float(metrics.success_rate) == 1.0
    # the actor's input ends with the base action (its running mean is the push)
    np.testing.assert_allclose(np.asarray(after.obs_stats.mean[obs_size:]), np.asarray(PUSH), atol=1e-6)


def test_base_state_restarts_with_each_episode(residual):
    _, state, after, _, _ = residual
    assert np.all(np.asarray(state.base_carry) == 1)   # one action taken at init (for the statistics)
    # lockstep 15-step episodes in a 15-step rollout: every episode ended at the last step
    assert np.all(np.asarray(after.base_carry) == 0)


def test_the_base_is_a_traced_input_and_its_scale_matters(residual):
    """A base that does nothing leaves the smoke task unsolved: the success came from the base
    (the same compiled programs, the base's parameter 0 instead of 1)."""
    trainer, _, _, _, (init, update, hp) = residual
    _, metrics = update(init(jax.random.key(0), hp, jnp.asarray(0.0)))
    assert float(metrics.success_rate) < 0.2
    with pytest.raises(ValueError, match="base_params"):
        trainer.init(jax.random.key(0), hp)
    with pytest.raises(ValueError, match="acts in 3 dimensions"):
        make_trainer(SMOKE, base=memoryless_base(lambda p, o: o[..., :3], 3))


# ---------------------------------------------------------------------------
# the bases and the residual actor (refinery_jax.residual.bases)
# ---------------------------------------------------------------------------

def _policy(model, obs_size, key):
    from refinery_jax.ppo.networks import initial_carry
    from refinery_jax.ppo.normalization import init_stats
    from refinery_jax.ppo.networks import Policy

    params = model.init(key, jnp.zeros(obs_size), jnp.zeros(obs_size), initial_carry(model, (), obs_size))
    return Policy(params=params, obs_stats=init_stats(obs_size))


def test_diffusion_base_plays_each_chunk_and_replans_after_a_restart():
    from refinery_jax.diffusion.policy import DiffusionConfig, DiffusionPolicy, fit_normalizer, init_bc, make_planner
    from refinery_jax.residual.bases import diffusion_base

    config = DiffusionConfig(prediction=8, execution=4, down_dims=(8,), step_embed_dim=8)  # one level: a quick init
    obs_size, batch = 5, 3
    state = init_bc(config, jax.random.key(0), obs_size, 6, 10)
    unit = jnp.stack([-jnp.ones(6), jnp.ones(6)])
    policy = DiffusionPolicy(params=state.params, obs_norm=fit_normalizer(jnp.stack([-jnp.ones(obs_size),
                                                                                     jnp.ones(obs_size)])),
                             act_norm=fit_normalizer(unit))
    base = diffusion_base(config, 6)
    obs = jax.random.normal(jax.random.key(1), (batch, obs_size))
    key = jax.random.key(2)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))
    chunks = make_planner(config, 6)(policy, keys, obs)
    queue = base.start(batch)
    first, queue = base.act(policy, queue, obs, key)
    second, queue = base.act(policy, queue, obs + 1.0, jax.random.key(3))  # no re-plan: still the first chunk
    np.testing.assert_allclose(np.asarray(first), np.asarray(chunks[:, 0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(second), np.asarray(chunks[:, 1]), atol=1e-6)
    queue = base.restart(queue, jnp.array([False, True, False]))
    third, _ = base.act(policy, queue, obs, key)  # env 1 re-plans (same key and obs: its first action again)
    np.testing.assert_allclose(np.asarray(third[1]), np.asarray(chunks[1, 0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(third[0]), np.asarray(chunks[0, 2]), atol=1e-6)


def test_a_residual_acts_as_the_base_plus_the_scaled_correction():
    """`policy_actor(..., base=...)`: zero head -> the base's actions exactly; a residual whose
    mean is 1 adds 0.1 on the first step; and the batched base (PPO's) matches the actor's."""
    from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig
    from refinery_jax.envs.episodes import run_episode
    from refinery_jax.ppo.networks import policy_actor
    from refinery_jax.residual.bases import specialist_base

    env = AssemblyEnv(EnvConfig(backend="c", episode_seconds=5 / 15))
    o = env.observation_size
    specialist = ActorCritic(6, (8,), (8,), "tanh")
    base_policy = _policy(specialist, o, jax.random.key(4))
    base = specialist_base(specialist, scale=0.1)
    residual_model = ActorCritic(6, (8,), (8,), "tanh", actor_head_scale=0.0)
    residual = _policy(residual_model, o + 6, jax.random.key(5)).replace(base_params=base_policy)
    inits = jnp.tile(jnp.array([0.002, -0.001, 0.015]), (2, 1))
    keys = jax.random.split(jax.random.key(6), 2)

    def actions(actor, params):
        run = jax.vmap(lambda k, i: run_episode(env, actor, params, k, i, record=True))
        return np.asarray(jax.jit(run)(keys, inits).trajectory[1])

    base_only = actions(policy_actor(specialist, o), (base_policy, True))
    combined = policy_actor(residual_model, o, base=base)
    np.testing.assert_allclose(actions(combined, (residual, True)), base_only, atol=1e-6)  # zero head
    # a non-zero residual adds 0.1 x its mean: make its last-layer bias 1
    shifted = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.ones_like(x) if "actor" in str(path) and "Dense_1" in str(path) and "bias" in str(path) else x,
        residual.params)
    moved = actions(combined, (residual.replace(params=shifted), True))
    assert np.abs(moved - base_only).max() > 0.05  # it acts, and the episodes diverge from the base's
    np.testing.assert_allclose(moved[:, 0], base_only[:, 0] + 0.1, atol=1e-6)  # the first step: exactly +0.1
    # the batched base (for PPO) gives the per-environment actor's actions
    states = jax.vmap(env.reset)(keys, inits)
    batched, _ = base.act(base_policy, jnp.zeros((2, 0)), states.obs, jax.random.key(0))
    _, single = base.actor.act(base_policy, jnp.zeros(0), jax.tree.map(lambda x: x[1], states), jax.random.key(0))
    np.testing.assert_allclose(np.asarray(batched[1]), np.asarray(single), atol=1e-6)


def test_refinery_fine_tunes_the_residual_only():
    """A residual trainer goes through Algorithm 1 unchanged: `trainer.policy` carries the base,
    `make_evaluate(..., base=...)` evaluates base + residual, and a fine-tuning round updates
    the residual's weights while the base's stay as they were."""
    from refinery_jax.evaluation import make_evaluate
    from refinery_jax.refinery.finetune import FineTuneConfig, ProposalConfig, make_finetune
    from refinery_jax.residual.bases import specialist_base

    trainer = make_trainer(SMOKE_RESIDUAL, base=specialist_base(ActorCritic(6, (8,), (8,), "tanh")))
    base_policy = _policy(ActorCritic(6, (8,), (8,), "tanh"), trainer.env.observation_size, jax.random.key(4))
    hp = default_hyperparams(SMOKE_RESIDUAL, **SMOKE_HP)
    state = jax.jit(trainer.init)(jax.random.key(0), hp, base_policy)
    evaluate = make_evaluate(trainer.env, trainer.model, batch_size=8, base=trainer.base)
    config = FineTuneConfig(eval_points=8, updates_per_round=1, max_rounds=2, window=2,
                            proposal=ProposalConfig(q=2, num_candidates=16, num_starts=2, num_steps=2))
    finetune = make_finetune(config, trainer, evaluate)
    tuned = jax.jit(finetune.round)(finetune.init(jax.random.key(1), state))
    assert bool(tuned.history.trained[0]) and int(tuned.rounds) == 1
    assert np.all(np.isfinite(np.asarray(tuned.history.eval_success, float)))
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                        tuned.train.base_params, state.base_params)
    assert all(jax.tree.leaves(same))  # the base is frozen
    assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                                                tuned.train.params, state.params)))  # the residual moved
    assert trainer.policy(tuned.train).base_params is not None


def _script(load_script_main):
    import pathlib

    return load_script_main(pathlib.Path(__file__).parents[1] / "experiments" / "residual.py")


def test_residual_script_refuses_bad_arguments_before_running(load_script_main, tmp_path):
    main = _script(load_script_main)
    for bad in (["--residual-updates", "15"], ["--residual-scale", "0"], ["--task", "nope"], ["--mlp-updates", "0"],
                ["--demos-file", str(tmp_path / "missing.npz")], ["--down-dims", "8", "16", "32", "64", "128", "256", "512"]):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "run")] + bad)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_residual_script_end_to_end_and_resume(load_script_main, tmp_path):
    """Tiny budgets (about 3 min on 2 CPUs): demos, BC, residual PPO, paired table; then
    --resume after losing the results reloads the bases and the residual instead of training."""
    main = _script(load_script_main)
    argv = ["--demos", "4", "--bc-updates", "20", "--down-dims", "8", "16", "--residual-updates", "10",
            "--mlp-updates", "20", "--eval-trials", "8", "--gmm-inits", "8", "--out", str(tmp_path / "run")]
    first = main(argv)
    assert set(first["rows"]) == {"base", "base_residual", "base_residual_gmm", "ppo_scratch", "mlp_bc"}
    assert first["eval_trials"] == 8
    assert pathlib.Path(first["figure"]).exists()
    assert first["rows"]["base_residual"]["vs_base"]["ci_method"].startswith("agresti_min")
    with pytest.raises(SystemExit, match="finished run"):  # a finished run is not resumed
        main(argv + ["--resume"])
    (tmp_path / "run" / "results.json").unlink()
    # resuming with another base (U-Net widths): refused before anything is built, nothing overwritten
    saved = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(SystemExit, match="fingerprint"):
        main([a if a != "16" else "12" for a in argv] + ["--resume"])
    assert (tmp_path / "run" / "config.json").read_text() == saved
    again = main(argv + ["--resume"])
    assert again["rows"] == first["rows"]  # same bases, same residual, same paired trials
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "loaded the saved base policies" in log and "MLP behaviour cloning: loaded" in log
