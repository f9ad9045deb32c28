"""Diffusion pieces against closed forms: the cosine schedule, noising, DDIM (one step is the
posterior mean; many steps carry noise to the data distribution), and the U-Net's shapes,
conditioning and step embedding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refinery_jax.diffusion.schedule import add_noise, cosine_schedule, ddim_sample, ddim_step, ddim_timesteps
from refinery_jax.diffusion.unet import step_embedding


def test_cosine_schedule_matches_its_closed_form():
    schedule = cosine_schedule(100)
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    t = np.arange(100)
    # before the 0.999 cap bites, ᾱ_t = f((t+1)/T) / f(0) exactly (the product telescopes)
    capped = np.asarray(schedule.betas) >= 0.999 - 1e-6
    assert capped[-1] and capped.sum() == 1  # only the last step is capped
    np.testing.assert_allclose(np.asarray(schedule.alphas_cumprod)[:-1], (f((t + 1) / 100) / f(0))[:-1], rtol=1e-5)
    assert np.all(np.diff(np.asarray(schedule.alphas_cumprod)) < 0)
    assert float(schedule.alphas_cumprod[-1]) < 1e-6  # the last step is (nearly) pure noise
    with pytest.raises(ValueError):
        cosine_schedule(0)


def test_add_noise_has_the_forward_marginals():
    schedule = cosine_schedule(100)
    key = jax.random.key(0)
    x0 = jnp.full((200_000, 1), 0.7)
    t = 40
    xt = add_noise(schedule, x0, jax.random.normal(key, x0.shape), jnp.full(x0.shape[0], t))
    a = float(schedule.alphas_cumprod[t])
    assert float(xt.mean()) == pytest.approx(np.sqrt(a) * 0.7, abs=5e-3)
    assert float(xt.std()) == pytest.approx(np.sqrt(1 - a), abs=5e-3)


def test_ddim_timesteps_are_trailing():
    assert ddim_timesteps(100, 4).tolist() == [99, 74, 49, 24]
    assert ddim_timesteps(100, 1).tolist() == [99]
    assert ddim_timesteps(100, 100).tolist() == list(range(99, -1, -1))
    with pytest.raises(ValueError):
        ddim_timesteps(100, 0)


def _gaussian_eps(schedule, mu, sigma):
    """The exact ε-predictor E[ε | x_t] for data x_0 ~ N(mu, sigma²) (per dimension)."""
    def eps(x, t):
        a = schedule.alphas_cumprod[t]
        return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * sigma ** 2 + 1 - a)
    return eps


def test_one_ddim_step_is_the_posterior_mean():
    """From x_{T-1}, one η = 0 DDIM step with the exact ε-predictor lands on E[x_0 | x_{T-1}],
    which for Gaussian data is mu + √ᾱ σ² (x - √ᾱ mu) / (ᾱ σ² + 1 - ᾱ)."""
    schedule = cosine_schedule(100)
    mu, sigma = 0.3, 0.2
    x = jax.random.normal(jax.random.key(1), (64, 8, 2))
    out = ddim_sample(_gaussian_eps(schedule, mu, sigma), schedule, x, num_inference_steps=1, clip_sample=False)
    a = schedule.alphas_cumprod[99]
    expected = mu + jnp.sqrt(a) * sigma ** 2 * (x - jnp.sqrt(a) * mu) / (a * sigma ** 2 + 1 - a)
    # float32: x_0 = (x - √(1-ᾱ) ε) / √ᾱ divides by √ᾱ_99 ≈ 5e-4, so rounding of ~1e-7 grows to
    # ~2e-4 (measured 4.5e-4 at most over these 1024 values)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-3)
    assert float(jnp.abs(out - x).max()) > 0.5  # it did move: the answer is not the input
    # t_prev < 0 means "to x_0": the step returns its own x_0 estimate
    x_prev, x0 = ddim_step(schedule, x, jnp.zeros_like(x), 99, -1, clip_sample=False)
    np.testing.assert_array_equal(np.asarray(x_prev), np.asarray(x0))


def test_ddim_carries_noise_to_the_data_distribution():
    """With the exact ε-predictor, 100 deterministic DDIM steps map N(0, 1) to N(mu, sigma²)."""
    schedule = cosine_schedule(100)
    mu, sigma = -0.2, 0.15
    x = jax.random.normal(jax.random.key(2), (20_000, 1))
    out = ddim_sample(_gaussian_eps(schedule, mu, sigma), schedule, x, num_inference_steps=100)
    assert float(out.mean()) == pytest.approx(mu, abs=0.01)
    assert float(out.std()) == pytest.approx(sigma, rel=0.05)
    # clip_sample keeps every x_0 estimate, hence the result, in the action box
    wide = ddim_sample(_gaussian_eps(schedule, 0.0, 3.0), schedule, x, num_inference_steps=4)
    assert float(jnp.abs(wide).max()) <= 1.0 + 1e-6


def test_step_embedding_is_sin_then_cos():
    e = step_embedding(jnp.array([0, 5]), 8)
    assert e.shape == (2, 8)
    np.testing.assert_allclose(np.asarray(e[0]), [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
    freqs = np.exp(-np.log(10000.0) * np.arange(4) / 3)
    np.testing.assert_allclose(np.asarray(e[1]), np.concatenate([np.sin(5 * freqs), np.cos(5 * freqs)]), atol=1e-5)


def test_unet_shapes_and_conditioning():
    from refinery_jax.diffusion.policy import init_bc

    # the toy BC test's network and shapes: Flax initialises eagerly, one compile per random draw
    # of each parameter's shape (~0.5 s each on CPU), which the two tests then share
    config = _toy_config()
    net = config.network(2)
    params = init_bc(config, jax.random.key(5), 1, 2, 1).params
    chunk = jax.random.normal(jax.random.key(3), (5, 8, 2))
    obs = jax.random.normal(jax.random.key(4), (5, 1))
    t = jnp.arange(5)
    apply = jax.jit(net.apply)  # (eager Flax dispatches every small op: slower than one compile per shape)
    out = apply(params, chunk, t, obs)
    assert out.shape == chunk.shape
    # the observation and the step both change the output (FiLM reaches every level)
    assert float(jnp.abs(apply(params, chunk, t, obs + 1.0) - out).max()) > 1e-3
    assert float(jnp.abs(apply(params, chunk, t + 50, obs) - out).max()) > 1e-3
    # leading axes: one environment, or environments x seeds
    single = apply(params, chunk[0], t[0], obs[0])
    np.testing.assert_allclose(np.asarray(single), np.asarray(out[0]), atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        net.apply(params, chunk[:, :7], t, obs)


# ---------------------------------------------------------------------------
# chunked execution: per-environment queues
# ---------------------------------------------------------------------------

def _reference_queues(obs_seq, restart_seq, execution, prediction):
    """Plain-Python per-environment queues with the tagging planner below."""
    batch = obs_seq.shape[1]
    queue, index, out = [None] * batch, [execution] * batch, []
    for obs, restart in zip(obs_seq, restart_seq):
        row = []
        for i in range(batch):
            if restart[i] or index[i] >= execution:
                queue[i] = [obs[i] * 100 + p for p in range(prediction)][:execution]
                index[i] = 0
            row.append(queue[i][index[i]])
            index[i] += 1
        out.append(row)
    return np.array(out)


def test_each_environment_replans_when_its_queue_empties_or_it_restarts():
    from refinery_jax.diffusion.chunks import empty_queue, next_actions, replan_slots

    batch, execution, prediction, steps = 16, 4, 6, 14
    assert replan_slots(batch, execution) == 10  # < batch: both the packed and the whole-batch path run
    rng = np.random.default_rng(0)
    obs_seq = np.arange(steps)[:, None] * 1000 + np.arange(batch)[None]  # tags: step and environment
    restart_seq = rng.random((steps, batch)) < 0.15
    restart_seq[5] = True  # everyone at once: the whole-batch path
    plan = lambda keys, obs: (obs[:, :1] * 100 + jnp.arange(prediction)[None])[..., None]  # noqa: E731

    @jax.jit
    def run(obs_seq, restart_seq):
        def body(queue, xs):
            obs, restart = xs
            actions, queue = next_actions(plan, jax.random.key(0), queue, obs, restart)
            return queue, actions[:, 0]
        return jax.lax.scan(body, empty_queue(batch, execution, 1), (obs_seq[..., None].astype(jnp.float32),
                                                                      jnp.asarray(restart_seq)))[1]

    np.testing.assert_array_equal(np.asarray(run(obs_seq, restart_seq)),
                                  _reference_queues(obs_seq, restart_seq, execution, prediction))


def test_a_plan_is_the_same_packed_or_in_the_whole_batch():
    """Environment i plans with fold_in(key, i): the same chunk whether it re-plans alone
    (packed path) or with every environment (whole-batch path)."""
    from refinery_jax.diffusion.chunks import empty_queue, next_actions

    batch, execution = 16, 4
    plan = lambda keys, obs: jax.vmap(lambda k: jax.random.normal(k, (6, 2)))(keys)  # noqa: E731
    obs = jnp.zeros((batch, 3))
    full = empty_queue(batch, execution, 2)
    one = full.replace(index=jnp.where(jnp.arange(batch) == 3, execution, 0))  # only env 3 is empty
    key = jax.random.key(7)
    a_all, _ = next_actions(plan, key, full, obs, jnp.zeros(batch, bool))
    a_one, q_one = next_actions(plan, key, one, obs, jnp.zeros(batch, bool))
    np.testing.assert_array_equal(np.asarray(a_one[3]), np.asarray(a_all[3]))
    assert int(q_one.index[3]) == 1 and int(q_one.index[0]) == 1
    np.testing.assert_array_equal(np.asarray(a_one[0]), 0.0)  # env 0 kept its (zero) queue


# ---------------------------------------------------------------------------
# behaviour cloning and planning
# ---------------------------------------------------------------------------

def test_normalizer_round_trips_and_survives_constant_dimensions():
    from refinery_jax.diffusion.policy import fit_normalizer

    x = np.array([[0.0, 5.0, 2.0], [1.0, 5.0, -2.0], [0.5, 5.0, 0.0]], np.float32)
    norm = fit_normalizer(x)
    u = np.asarray(norm.to_unit(x))
    np.testing.assert_allclose(u[:, 0], [-1.0, 1.0, 0.0])
    np.testing.assert_array_equal(u[:, 1], 0.0)  # constant: 0, not NaN
    np.testing.assert_allclose(np.asarray(norm.from_unit(u)), x, atol=1e-6)
    with pytest.raises(ValueError, match="non-finite"):
        fit_normalizer(np.array([[np.nan]]))


def _toy_config():
    from refinery_jax.diffusion.policy import DiffusionConfig

    return DiffusionConfig(prediction=8, execution=4, down_dims=(16, 32), step_embed_dim=16, learning_rate=3e-3,
                           warmup_updates=50, batch_size=64, ema_decay=0.9)


def _toy_bc(num_updates):
    """BC on chunks that repeat (o, -o) * 0.5 + 0.2 for a scalar observation o; returns the
    config, policy, losses and the planned vs expected chunks at three probes."""
    from refinery_jax.diffusion.policy import make_planner, train_bc

    config = _toy_config()
    obs = np.linspace(-1.0, 1.0, 256, dtype=np.float32)[:, None]
    chunks = np.repeat(np.concatenate([obs, -obs], axis=1)[:, None], 8, axis=1) * 0.5 + 0.2
    policy, losses = train_bc(config, obs, chunks, jax.random.key(0), num_updates=num_updates,
                              chunk_updates=min(num_updates, 500))
    probe = jnp.array([[-0.8], [0.0], [0.6]])
    planned = jax.jit(make_planner(config, 2))(policy, jax.random.split(jax.random.key(1), 3), probe)
    expected = np.repeat(np.concatenate([probe, -probe], axis=1)[:, None], 8, axis=1) * 0.5 + 0.2
    return config, obs, chunks, losses, np.asarray(planned), expected


def test_behaviour_cloning_reduces_the_loss_and_plans_in_action_units():
    from refinery_jax.diffusion.policy import DiffusionConfig, train_bc

    config, obs, chunks, losses, planned, expected = _toy_bc(300)
    assert losses.shape == (300,) and float(losses[-50:].mean()) < 0.5 * float(losses[:50].mean())
    assert planned.shape == (3, 8, 2)
    # in action units: inside the data's range (clip_sample keeps plans in the normalised box)
    assert planned.min() >= chunks.min() - 1e-5 and planned.max() <= chunks.max() + 1e-5
    with pytest.raises(ValueError, match="chunks"):
        train_bc(config, obs, chunks[:, :4], jax.random.key(0), num_updates=1)
    with pytest.raises(ValueError, match="execution"):
        DiffusionConfig(prediction=8, execution=9)


@pytest.mark.slow
def test_behaviour_cloning_learns_a_conditional_chunk():
    """DDIM-4 plans recover the chunks from fresh noise (measured max error 0.05 after 1500
    updates; 0.19 after 600; 0.02 with DDIM-16)."""
    _, _, _, _, planned, expected = _toy_bc(1500)
    assert np.abs(planned - expected).max() < 0.1


def test_chunk_actor_executes_each_plan_then_replans():
    """Inside run_episode (vmapped), environment i executes actions 0..E-1 of the chunk planned
    from its observation at steps 0, E, 2E, ..."""
    from refinery_jax.diffusion.policy import chunk_actor
    from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig
    from refinery_jax.envs.episodes import run_episode

    env = AssemblyEnv(EnvConfig(backend="c", episode_seconds=10 / 15))  # 10 steps
    execution, prediction = 4, 8
    # the fake plan: chunk position p carries policy + 0.01 p + obs[0] / 100 of the planning step
    plan = lambda policy, keys, obs: jnp.broadcast_to(  # noqa: E731
        (policy + 0.01 * jnp.arange(prediction, dtype=jnp.float32) + obs[:, :1] / 100)[:, :, None], (1, prediction, 6))
    actor = chunk_actor(plan, execution, 6)
    inits = jnp.tile(jnp.array([0.0, 0.0, 0.015]), (2, 1))
    policies = jnp.array([0.0, 0.5])  # one "policy" per environment, to tell them apart
    episodes = jax.jit(jax.vmap(lambda p, k, i: run_episode(env, actor, p, k, i, record=True)))(
        policies, jax.random.split(jax.random.key(0), 2), inits)
    observations, actions = (np.asarray(x) for x in episodes.trajectory)  # [2, 10, O], [2, 10, 6]
    t = np.arange(10)
    planned_at = t - t % execution  # 0, 0, 0, 0, 4, 4, 4, 4, 8, 8
    for i, policy in enumerate([0.0, 0.5]):
        expected = policy + 0.01 * (t % execution) + observations[i, planned_at, 0] / 100
        np.testing.assert_allclose(actions[i, :, 0], expected, atol=1e-6)
    assert len(set(observations[0, planned_at, 0].round(6))) > 1  # the observation did change between plans


def test_sample_target_plans_from_the_x0_the_network_regresses():
    """With target "sample" the U-Net's output is the x_0 estimate: turned into ε at step t, a DDIM
    step recovers it exactly (to x_0 it lands on it; to t_prev it re-noises it with that ε)."""
    from refinery_jax.diffusion.policy import eps_from_output

    schedule = cosine_schedule(100)
    x_t = jax.random.normal(jax.random.key(7), (16, 8, 2))
    x0 = 0.8 * jax.random.uniform(jax.random.key(8), (16, 8, 2), minval=-1.0, maxval=1.0)
    for t in (99, 49, 3):
        eps = eps_from_output(schedule, "sample", x_t, t, x0)
        x_prev, x0_estimate = ddim_step(schedule, x_t, eps, t, -1)
        # float32 round trip through ε divides by √ᾱ_t (5e-4 at t = 99): ~2e-4 there (see above)
        np.testing.assert_allclose(np.asarray(x0_estimate), np.asarray(x0), atol=1e-3 if t == 99 else 2e-5)
        np.testing.assert_allclose(np.asarray(x_prev), np.asarray(x0), atol=1e-3 if t == 99 else 2e-5)
    # halfway: √ᾱ_prev x_0 + √(1 - ᾱ_prev) ε, with the ε that x_t and x_0 imply
    x_prev, _ = ddim_step(schedule, x_t, eps_from_output(schedule, "sample", x_t, 74, x0), 74, 49)
    a, a_prev = schedule.alphas_cumprod[74], schedule.alphas_cumprod[49]
    implied = (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
    np.testing.assert_allclose(np.asarray(x_prev), np.asarray(jnp.sqrt(a_prev) * x0 + jnp.sqrt(1 - a_prev) * implied),
                               atol=1e-5)
    # "epsilon" passes the output through
    np.testing.assert_array_equal(np.asarray(eps_from_output(schedule, "epsilon", x_t, 49, x0)), np.asarray(x0))


def test_bc_loss_regresses_the_configured_target():
    """A stand-in network that outputs the clean chunk scores 0 when the target is x_0 and about
    E[ε²] = 1 when it is ε (and the reverse for one that outputs the noise it was given)."""
    from refinery_jax.diffusion.policy import bc_loss

    schedule = cosine_schedule(100)
    chunk = 0.5 * jax.random.uniform(jax.random.key(0), (512, 8, 2), minval=-1.0, maxval=1.0)

    class OutputsCleanChunk:
        @staticmethod
        def apply(params, x_t, t, obs):
            return chunk

    key = jax.random.key(1)
    assert float(bc_loss(OutputsCleanChunk, schedule, "sample", None, None, chunk, key)) == 0.0
    assert float(bc_loss(OutputsCleanChunk, schedule, "epsilon", None, None, chunk, key)) > 0.9
