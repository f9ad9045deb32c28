"""Demonstrations without humans: only successes are kept, they replay open-loop to the same
observations and success, chunks are padded as stated, and bad files are refused."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refinery_jax.diffusion import demos as demo_io
from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig
from refinery_jax.envs.episodes import Actor, run_episode
from refinery_jax.envs.scripted import scripted_actor


@pytest.fixture(scope="module")
def env():
    return AssemblyEnv(EnvConfig(backend="c"))


@pytest.fixture(scope="module")
def collected(env):
    return demo_io.collect(env, num_demos=6, seed=3, batch=8)


def test_demos_are_successes_that_replay(env, collected):
    d = collected
    steps = env.config.episode_steps
    assert d.observations.shape == (6, steps, env.observation_size)
    assert d.actions.shape == (6, steps, env.action_size)
    assert d.meta["attempts"] >= 8 and 0 < d.meta["teacher_success"] <= 1
    assert d.meta["num_demos"] == 6 and d.meta["task"] == env.config.task

    # the recorded actions, played back open-loop from the same key and θ, see the recorded
    # observations (each before its action) and succeed
    replay = Actor(start=lambda actions: jnp.zeros((), jnp.int32),
                   act=lambda actions, t, state, key: (t + 1, actions[t]))
    episodes = jax.jit(jax.vmap(lambda a, k, i: run_episode(env, replay, a, k, i, record=True)))(
        jnp.asarray(d.actions), jax.random.wrap_key_data(jnp.asarray(d.keys)), jnp.asarray(d.inits))
    assert bool(np.all(episodes.success))
    np.testing.assert_allclose(np.asarray(episodes.trajectory[0]), d.observations, atol=1e-6)


def test_chunks_are_the_next_actions_padded_with_the_last(collected):
    obs, chunks = demo_io.chunk_dataset(collected, prediction=4)
    n, steps, a = collected.actions.shape
    assert obs.shape == (n * steps, collected.observations.shape[-1]) and chunks.shape == (n * steps, 4, a)
    acts = collected.actions
    np.testing.assert_array_equal(chunks[0], acts[0, :4])                      # demo 0, step 0
    np.testing.assert_array_equal(chunks[steps + 5], acts[1, 5:9])            # demo 1, step 5
    last = chunks[steps - 2]                                                  # demo 0, two steps from the end
    np.testing.assert_array_equal(last[:2], acts[0, -2:])
    np.testing.assert_array_equal(last[2:], np.repeat(acts[0, -1:], 2, axis=0))
    np.testing.assert_array_equal(obs[steps + 5], collected.observations[1, 5])


def test_saved_demos_reload_and_are_never_overwritten(env, collected, tmp_path):
    path = demo_io.save(collected, tmp_path / "demos.npz")
    again = demo_io.load(path, env)
    np.testing.assert_array_equal(again.actions, collected.actions)
    assert again.meta == collected.meta
    # a run records its demos by content: a copy elsewhere matches, one changed action does not
    moved = demo_io.load(demo_io.save(again, tmp_path / "elsewhere" / "copy.npz"))
    assert demo_io.digest(moved) == demo_io.digest(collected)
    changed = dataclasses.replace(collected, actions=collected.actions.copy())
    changed.actions[0, 0, 0] += 1e-3
    assert demo_io.digest(changed) != demo_io.digest(collected)
    with pytest.raises(FileExistsError):
        demo_io.save(collected, path)
    other = AssemblyEnv(EnvConfig(task="round_peg", backend="c"))
    with pytest.raises(ValueError, match="task: file 'square_peg', environment 'round_peg'"):
        demo_io.load(path, other)
    with pytest.raises(ValueError, match="teacher"):
        demo_io.collect(env, num_demos=2, teacher="human")
    # any Actor teaches, with its own params: the script told to hold still never inserts
    holding = demo_io.Teacher(name="holding script", actor=scripted_actor(env), params=True)
    with pytest.raises(RuntimeError, match="the holding script teacher succeeded in 0 of 8"):
        demo_io.collect(env, num_demos=1, teacher=holding, batch=8, max_attempts=8)
    with pytest.raises(RuntimeError, match="succeeded in 0 of 8"):
        # 2 steps per episode: no insertion can finish
        demo_io.collect(AssemblyEnv(EnvConfig(backend="c", episode_seconds=2 / 15)), num_demos=1, batch=8,
                        max_attempts=8)


def test_collect_demos_script(load_script_main, tmp_path):
    import pathlib

    main = load_script_main(pathlib.Path(__file__).parents[1] / "experiments" / "collect_demos.py")
    out = tmp_path / "d.npz"
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "d.txt")])  # not .npz: refused before anything runs
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--task", "no_such_task"])
    with pytest.raises(SystemExit):  # a teacher run without specialists: refused before anything compiles
        main(["--out", str(out), "--teacher-run", str(tmp_path)])
    summary = main(["--out", str(out), "--demos", "2", "--batch", "8", "--seed", "1"])
    assert summary["num_demos"] == 2 and summary["backend"] == "c" and 0 < summary["teacher_success"] <= 1
    assert demo_io.load(out).observations.shape[0] == 2 and out.with_suffix(".json").exists()
    with pytest.raises(SystemExit):
        main(["--out", str(out)])  # never overwritten
