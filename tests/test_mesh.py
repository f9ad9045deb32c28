"""Scale-out (`refinery_jax.mesh`, `envs.physics.host_batching`): the pieces in-process on
this process's one device, and equivalence on 4 forced host devices in a subprocess
(`tests/mesh_equivalence.py`: the device count is fixed when JAX starts).

Stated tolerances: training on a mesh vs one device, parameters within 1e-4 after 4 PPO
updates (measured 5e-6: the all-reduced sums add in another order); evaluation bit-identical;
a run resumed on another device count within 1e-5 of the uninterrupted one (measured 6e-8).
The default suite trains on the mesh (split, per-device host calls) and checks evaluation;
the comparisons with one-device training and the resumes are `slow` (more compiles).
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from refinery_jax.envs.physics.host_batching import host_call, lead_spec
from refinery_jax.mesh import ENV_FIELDS, check_fits, describe, make_mesh, train_state_shardings

SCRIPT = pathlib.Path(__file__).with_name("mesh_equivalence.py")


def test_lead_spec_lays_mesh_axes_on_batch_dimensions():
    axes = ("seeds", "envs")
    assert lead_spec((8,), axes, (1, 4)) == P(("seeds", "envs"))  # one batch dimension: the whole mesh
    assert lead_spec((2, 8), axes, (2, 2)) == P("seeds", "envs")   # seeds x environments
    assert lead_spec((2, 8, 3), axes, (2, 2)) == P("seeds", "envs")  # inner dimensions stay whole
    assert lead_spec((6,), axes, (1, 4)) is None                    # not divisible: one unsplit call
    assert lead_spec((3, 8), axes, (2, 2)) is None
    assert lead_spec((8,), ("envs",), (4,)) == P("envs")
    assert lead_spec((), axes, (1, 4)) is None


def test_host_call_folds_every_vmap_into_one_call_without_a_mesh():
    seen = []

    def double(x, y):
        seen.append(x.shape)
        return np.asarray(x) * 2 + np.asarray(y)[..., None]

    def per_env(x, y):
        return host_call(double, jax.ShapeDtypeStruct((3,), jnp.float32), x, y)

    x = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    y = jnp.float32(1.0)  # unbatched: broadcast to every environment
    out = jax.jit(jax.vmap(jax.vmap(per_env, in_axes=(0, None)), in_axes=(0, None)))(x, y)
    np.testing.assert_array_equal(out, x * 2 + 1)
    assert seen == [(2, 5, 3)]  # seeds x environments in one host call
    np.testing.assert_array_equal(per_env(x[0, 0], y), x[0, 0] * 2 + 1)  # and unbatched


def test_mesh_arguments_fail_clearly():
    with pytest.raises(ValueError, match="available"):
        make_mesh(len(jax.devices()) + 1)
    with pytest.raises(ValueError, match="seeds axis"):
        make_mesh(1, seed_axis=2)
    mesh = make_mesh()
    assert describe(mesh)["mesh"] == {"seeds": 1, "envs": len(jax.devices())}
    assert describe(None)["devices"] == 1
    check_fits(mesh, 16, 3)  # one device divides anything


def test_check_fits_names_what_does_not_split():
    class FakeMesh:  # the shape of a 2 x 2 mesh without needing 4 devices in this process
        shape = {"seeds": 2, "envs": 2}
        size = 4

    with pytest.raises(ValueError, match="3 seeds"):
        check_fits(FakeMesh, 16, 3)
    with pytest.raises(ValueError, match="15 environments per seed"):
        check_fits(FakeMesh, 15, 2)
    with pytest.raises(ValueError, match="10 environments do not split evenly over 4"):
        check_fits(FakeMesh, 10)


def test_train_state_shardings_split_environment_fields_only():
    from refinery_jax.ppo import default_hyperparams, make_trainer
    from test_ppo import SMOKE

    trainer = make_trainer(SMOKE)
    keys = jax.random.split(jax.random.key(0), 2)
    shapes = jax.eval_shape(jax.vmap(trainer.init, in_axes=(0, None)), keys, default_hyperparams(SMOKE))
    shardings = train_state_shardings(make_mesh(), shapes)
    for field in shapes.__dataclass_fields__:
        specs = {s.spec for s in jax.tree.leaves(getattr(shardings, field))}
        if jax.tree.leaves(getattr(shapes, field)):
            assert specs == ({P("seeds", "envs")} if field in ENV_FIELDS else {P("seeds")}), field
    # the environment fields really have the environment dimension second
    assert all(x.shape[:2] == (2, SMOKE.num_envs) for x in jax.tree.leaves(shapes.env_state))


def _run_on_four_devices(tmp_path, *flags) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), *flags], env=env, capture_output=True,
                          text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _check_training_and_evaluation(out):
    # training on a 2 (seeds) x 2 (envs) mesh: the environments are split, not replicated: each
    # device holds 1 seed x 8 of the 16 environments; parameters per seed
    assert out["params_finite"]
    assert out["obs_spec"] == ["seeds", "envs"] and out["params_spec"] == ["seeds"]
    assert out["obs_shard_shapes"] == [[1, 8, 31]] and out["obs_devices"] == 4
    # the C backend steps each device's own environments: 4 host calls of [1, 8] per step (one
    # device: one call of [2, 16])
    assert out["calls_mesh"] == [[1, 8]] and out["call_count_ratio"] == 4.0
    # evaluation: the episodes split over 4 devices give the same numbers to the bit
    assert all(out["eval_identical"].values()), out["eval_identical"]
    one_calls, mesh_calls, shapes = out["eval_calls"]
    assert mesh_calls == 4 * one_calls and shapes == [[4]]
    assert out["eval_shards"] == [[10], 4]  # 40 episodes, 10 on each device


def test_four_devices_train_split_and_evaluate_as_one(tmp_path):
    _check_training_and_evaluation(_run_on_four_devices(tmp_path))


@pytest.mark.slow
def test_four_devices_train_as_one_and_resume_on_other_device_counts(tmp_path):
    out = _run_on_four_devices(tmp_path, "--reference", "--resume")
    _check_training_and_evaluation(out)
    # training: the mesh against one device
    assert out["update_equal"] and out["calls_one_device"] == [[2, 16]]
    assert out["params_difference"] < 1e-4, out["params_difference"]
    assert out["obs_difference"] < 1e-4, out["obs_difference"]
    for name, devices in (("two", 2), ("one", 1)):
        assert out[f"resumed_on_{name}_devices"] == devices
        assert out[f"resumed_on_{name}_params_difference"] < 1e-5, out


@pytest.mark.slow
def test_two_processes_train_as_one_device(tmp_path):
    """The multi-host path on one machine: 2 processes x 2 host devices joined by
    `initialize_distributed` (gloo), one mesh over the 4 devices, checkpointed from both."""
    import socket

    from refinery_jax.ppo import default_hyperparams, make_trainer
    from refinery_jax.refinery.specialists import train_specialists
    from mesh_equivalence import CHUNK, CONFIG, SEEDS
    from test_ppo import SMOKE_HP

    with socket.socket() as probe:  # a free port for the coordinator
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    script = pathlib.Path(__file__).with_name("mesh_multiprocess.py")
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
    results = [json.loads([x for x in o.splitlines() if x.startswith("RESULT ")][-1][7:]) for o, _ in outs]
    assert all(r["process_count"] == 2 and r["devices"] == 4 and r["local_devices"] == 2 for r in results)
    assert all(r["obs_shards_here"] == 2 for r in results)  # each process holds its own devices' environments
    a, b = (np.load(tmp_path / f"params_{i}.npy") for i in range(2))
    np.testing.assert_array_equal(a, b)  # both processes gathered the same parameters

    trainer = make_trainer(CONFIG)
    one = train_specialists(trainer, default_hyperparams(CONFIG, **SMOKE_HP), jax.vmap(jax.random.key)(jnp.arange(SEEDS)),
                            CHUNK, progress=lambda *args: None)
    reference = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(one.params))])
    assert np.max(np.abs(a - reference)) < 1e-4  # measured 7e-6
    assert sorted(int(p.name) for p in (tmp_path / "run").iterdir() if p.name.isdigit()) == [2, 4]
