"""Checkpoints: exact resume, clear errors for corrupt or mismatched checkpoints; the script's guards.

Shares the tiny PPO config and chunk size with tests/test_ppo.py, so the persistent
compilation cache serves the compiled `init` and chunk to both files.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refinery_jax.checkpoints import CheckpointError, config_fingerprint, latest_step, restore_checkpoint, save_checkpoint
from refinery_jax.ppo import default_hyperparams, make_chunk, make_trainer

from test_ppo import CHUNK, SMOKE, SMOKE_HP

REPO = pathlib.Path(__file__).parents[1]
SCRIPT = REPO / "experiments" / "train_specialist.py"


def _assert_trees_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def smoke():
    trainer = make_trainer(SMOKE)
    return trainer, jax.jit(trainer.init), jax.jit(make_chunk(trainer, CHUNK))


def test_resume_after_interruption_gives_identical_parameters(smoke, tmp_path):
    _, init, chunk = smoke
    hp = default_hyperparams(SMOKE, **SMOKE_HP)
    meta = {"fingerprint": config_fingerprint(SMOKE)}
    # uninterrupted: two chunks
    straight, _ = chunk(chunk(init(jax.random.key(7), hp))[0])
    # interrupted: one chunk, checkpoint, "process dies", fresh template, restore, one more chunk
    first, _ = chunk(init(jax.random.key(7), hp))
    save_checkpoint(tmp_path, int(first.update), first, meta)
    del first
    template = init(jax.random.key(123), hp)  # a fresh run's state: only shapes matter
    restored, got_meta = restore_checkpoint(tmp_path, template, expected_meta=meta)
    assert got_meta["fingerprint"] == meta["fingerprint"] and int(restored.update) == CHUNK
    resumed, _ = chunk(restored)
    _assert_trees_equal(resumed.params, straight.params)
    _assert_trees_equal(resumed.opt_state, straight.opt_state)
    _assert_trees_equal((resumed.obs_stats, resumed.key, resumed.update), (straight.obs_stats, straight.key,
                                                                          straight.update))


def _small_state():
    return {"w": jnp.arange(6.0).reshape(2, 3), "key": jax.random.key(0), "step": jnp.int32(3),
            "flags": jnp.array([True, False])}


def test_roundtrip_keeps_keys_dtypes_and_latest_step(tmp_path):
    state = _small_state()
    assert latest_step(tmp_path / "none") is None
    save_checkpoint(tmp_path, 1, state, {"fingerprint": "a"})
    save_checkpoint(tmp_path, 2, jax.tree.map(lambda x: x, {**state, "step": jnp.int32(4)}), {"fingerprint": "a"})
    assert latest_step(tmp_path) == 2
    restored, meta = restore_checkpoint(tmp_path, state)
    assert int(restored["step"]) == 4 and meta == {"fingerprint": "a"}
    _assert_trees_equal({k: v for k, v in restored.items() if k != "step"}, {k: v for k, v in state.items()
                                                                           if k != "step"})
    earlier, _ = restore_checkpoint(tmp_path, state, step=1)
    assert int(earlier["step"]) == 3


def test_mismatched_checkpoints_give_clear_errors(tmp_path):
    state = _small_state()
    save_checkpoint(tmp_path, 1, state, {"fingerprint": "config-a"})
    with pytest.raises(CheckpointError, match="another run.*config-a"):
        restore_checkpoint(tmp_path, state, expected_meta={"fingerprint": "config-b"})
    with pytest.raises(CheckpointError, match=r"\(2, 3\).*\(3, 3\)"):
        restore_checkpoint(tmp_path, {**state, "w": jnp.zeros((3, 3))})
    with pytest.raises(CheckpointError, match="structure"):
        restore_checkpoint(tmp_path, {"w": state["w"]})
    with pytest.raises(CheckpointError, match="no checkpoint"):
        restore_checkpoint(tmp_path / "empty", state)


def test_checkpoints_from_before_an_added_derived_field_restore_it_as_zeros(tmp_path):
    """A state saved before `Physics.constraint_force` existed restores, that leaf as zeros;
    any other missing leaf is still an error."""
    from flax import struct  # noqa: PLC0415

    @struct.dataclass
    class Before:
        qpos: np.ndarray

    @struct.dataclass
    class After:
        qpos: np.ndarray
        constraint_force: np.ndarray

    old = {"physics": Before(qpos=np.arange(3.0, dtype=np.float32)), "step": np.int32(4)}
    save_checkpoint(tmp_path / "c", 1, old, {"fingerprint": "f"})
    new = {"physics": After(qpos=np.zeros(3, np.float32), constraint_force=np.ones(6, np.float32)),
           "step": np.int32(0)}
    state, _ = restore_checkpoint(tmp_path / "c", new)
    np.testing.assert_array_equal(state["physics"].qpos, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(state["physics"].constraint_force, np.zeros(6))
    assert int(state["step"]) == 4
    with pytest.raises(CheckpointError, match="missing"):
        restore_checkpoint(tmp_path / "c", {**new, "other": np.zeros(2, np.float32)})


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    state = _small_state()
    save_checkpoint(tmp_path, 1, state, {"fingerprint": "a"})
    data = [p for p in (tmp_path / "1" / "state").rglob("*") if p.is_file() and p.stat().st_size > 0
            and "METADATA" not in p.name and p.name != "commit_success.txt"]
    assert data, "expected array data files"
    for p in data:
        p.write_bytes(b"\x00garbage" * 3)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        restore_checkpoint(tmp_path, state)


# ---------------------------------------------------------------------------
# the experiment script's argument and directory guards (checked before JAX compiles anything)
# ---------------------------------------------------------------------------

def _script(*args, timeout=120):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


@pytest.fixture(scope="module")
def script_main(load_script_main):
    return load_script_main(SCRIPT)


def _exit_message(main, *argv):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    return exc.value.code


def test_script_help():
    proc = _script("--help")
    assert proc.returncode == 0
    assert "--resume" in proc.stdout and "--overwrite" in proc.stdout and "quick" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (("--task", "no_such_task"), "unknown task 'no_such_task'"),
    (("--task", "peg_tower/9"), "stage"),
    (("--preset", "huge"), "invalid choice: 'huge'"),
    (("--updates", "0"), "--updates must be positive"),
])
def test_script_rejects_bad_arguments(script_main, capsys, tmp_path, args, message):
    assert _exit_message(script_main, "--out", str(tmp_path / "run"), *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,memory,size", [
    (("--memory", "history"), "history", 4),        # not the LSTM's width: 128 observations deep
    (("--memory", "lstm"), "lstm", 128),
    (("--memory", "history", "--memory-size", "8"), "history", 8),
])
def test_script_memory_sizes_follow_the_kind(script_main, tmp_path, args, memory, size):
    parse_args = script_main.__globals__["parse_args"]
    config = parse_args(["--out", str(tmp_path / "run"), *args]).spec.config
    assert (config.memory, config.memory_size, config.memory_layers) == (memory, size, 1)


def test_script_trains_a_multipart_stage(script_main, tmp_path):
    """A stage "ASSEMBLY/i" is a task of its own (a teacher for experiments/collect_demos.py)."""
    args = script_main.__globals__["parse_args"](["--task", "peg_tower/3", "--out", str(tmp_path / "run")])
    assert args.spec.config.env.task == "peg_tower/3"


def test_script_refuses_to_overwrite_runs(script_main, tmp_path):
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "results.json").write_text('{"success_rate": 0.9}')
    message = _exit_message(script_main, "--out", str(finished))
    assert "finished run" in message and "--overwrite" in message
    assert "finished run" in _exit_message(script_main, "--out", str(finished), "--resume")
    assert (finished / "results.json").read_text() == '{"success_rate": 0.9}'

    unfinished = tmp_path / "unfinished"
    (unfinished / "specialists").mkdir(parents=True)
    assert "--resume" in _exit_message(script_main, "--out", str(unfinished))

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "not empty" in _exit_message(script_main, "--out", str(foreign))
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_script_killed_run_resumes_to_the_same_parameters(tmp_path):
    import orbax.checkpoint as ocp

    common = ["--task", "square_peg_loose", "--preset", "quick", "--updates", "20", "--eval-episodes", "8",
              "--map-grid", "2", "--map-z", "1", "--map-trials", "1"]
    straight = _script("--out", str(tmp_path / "a"), *common, timeout=3000)
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(out), *common], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 3000
    while latest_step(out / "specialists") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(1.0)
    proc.kill()
    proc.wait()
    assert latest_step(out / "specialists") == 10 and not (out / "results.json").exists()  # killed mid-run
    assert _script("--out", str(out), *common).returncode != 0  # refuses without --resume
    resumed = _script("--out", str(out), "--resume", *common, timeout=3000)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a = ocp.StandardCheckpointer().restore(tmp_path / "a" / "specialists" / "20" / "state")
    b = ocp.StandardCheckpointer().restore(out / "specialists" / "20" / "state")
    _assert_trees_equal(a["params"], b["params"])
    import json
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "a", out))
    assert ra["success_rate"] == rb["success_rate"] and ra["mean_return"] == rb["mean_return"]
    assert rb["resumed"] is True and ra["env_steps"] == rb["env_steps"] == 20 * 256 * 25


def test_resume_never_replaces_the_record_of_a_run_s_settings(tmp_path):
    from refinery_jax.run_dirs import write_run_config

    first = {"fingerprint": "abc", "args": {"acquisitions": "['ucb', 'pi']"}}
    write_run_config(tmp_path, first, resume=False)
    write_run_config(tmp_path, first, resume=True)  # same settings: fine
    for changed, what in (({**first, "fingerprint": "xyz"}, "fingerprint"),
                          ({**first, "args": {"acquisitions": "['ei']"}}, "args.acquisitions")):
        with pytest.raises(SystemExit) as exc:
            write_run_config(tmp_path, changed, resume=True, must_match=("fingerprint", "args.acquisitions"))
        assert what in str(exc.value.code)
        assert json.loads((tmp_path / "config.json").read_text()) == first


def test_load_specialists_checks_the_donor_run(tmp_path):
    """`load_specialists` (sequence --init-from, ablation --baselines): a prefix of the donor's
    seeds, its task/preset when asked, finished, and checkpoints of the run its config.json names."""
    from refinery_jax.checkpoints import template_from_shapes
    from refinery_jax.envs.assembly_env import CRITIC_OBS_SIZE, POLICY_OBS_SIZE
    from refinery_jax.ppo.presets import preset
    from refinery_jax.refinery.specialists import SPECIALISTS_DIR, load_specialists, seed_keys

    spec = preset("quick", "square_peg")
    trainer = make_trainer(spec.config)
    hparams = default_hyperparams(spec.config, imitation_weight=spec.imitation_weight, **spec.hparams)
    shapes = jax.eval_shape(jax.vmap(trainer.init, in_axes=(0, None)), seed_keys([0, 1])[0], hparams)
    done = spec.config.num_updates
    state = template_from_shapes(shapes)
    state = state.replace(update=np.full(2, done, np.int32), params=jax.tree.map(
        lambda a: np.broadcast_to(np.arange(2, dtype=a.dtype).reshape((2,) + (1,) * (a.ndim - 1)), a.shape),
        state.params))  # seed s's weights all equal s

    def donor(name, fingerprint="f0", update=done, saved_fingerprint="f0",
              observation=(POLICY_OBS_SIZE, CRITIC_OBS_SIZE)):
        run = tmp_path / name
        info = {"fingerprint": fingerprint, "task": "square_peg", "preset": "quick", "seeds": [0, 1],
                "ppo": {"num_updates": done}, "backend": spec.config.env.backend,
                "observation": {"policy": observation[0], "critic": observation[1]}}
        (run / SPECIALISTS_DIR).mkdir(parents=True)
        (run / "config.json").write_text(json.dumps(info))
        save_checkpoint(run / SPECIALISTS_DIR, update, state.replace(update=np.full(2, update, np.int32)),
                        {**{k: info[k] for k in ("task", "preset", "seeds")}, "fingerprint": saved_fingerprint})
        return run

    run = donor("ok")
    one = load_specialists(run, [0], task="square_peg", preset="quick")
    assert all(a.shape[0] == 1 for a in jax.tree.leaves(one.params))
    assert all(np.all(np.asarray(a) == 0) for a in jax.tree.leaves(one.params))
    both = load_specialists(run, [0, 1])
    assert all(np.all(np.asarray(a)[1] == 1) for a in jax.tree.leaves(both.params))
    with pytest.raises(ValueError, match="seeds"):
        load_specialists(run, [1])
    with pytest.raises(ValueError, match="task 'square_peg', not 'keyed_peg'"):
        load_specialists(run, [0], task="keyed_peg")
    with pytest.raises(ValueError, match="unfinished"):
        load_specialists(donor("half", update=10), [0])
    with pytest.raises(CheckpointError, match="another run"):
        load_specialists(donor("mixed", saved_fingerprint="f1"), [0])
    # specialists trained before the observation grew (24 / 44 values): refused before anything is built
    with pytest.raises(ValueError, match="observe 24 .*retrain"):
        load_specialists(donor("old", observation=(24, 44)), [0])
