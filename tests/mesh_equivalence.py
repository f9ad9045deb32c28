"""Run by tests/test_mesh.py in a subprocess with 4 forced host devices (the flag must be
set before JAX starts, and would change the rest of the suite): trains and evaluates the
same small problem on one device and on meshes, and prints the comparisons as JSON.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/mesh_equivalence.py TMPDIR [--reference] [--resume]

--reference also trains on one device and compares; --resume also continues the 4-device
run from its first checkpoint on 2 devices and on 1 (more compiles: the slow test).
"""

import dataclasses
import json
import os
import pathlib
import shutil
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from refinery_jax.compile_cache import enable_compile_cache  # noqa: E402
from refinery_jax.envs.samplers import env_uniform  # noqa: E402
from refinery_jax.evaluation import make_evaluate  # noqa: E402
from refinery_jax.mesh import batch_sharding, make_mesh, to_host, use_mesh  # noqa: E402
from refinery_jax.ppo import default_hyperparams, make_trainer  # noqa: E402
from refinery_jax.refinery.specialists import train_specialists  # noqa: E402
from test_ppo import SMOKE, SMOKE_HP  # noqa: E402

CONFIG = dataclasses.replace(SMOKE, num_envs=16, num_steps=10, num_updates=4, num_minibatches=2, update_epochs=2)
CHUNK = 2
SEEDS = 2


def max_difference(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main(tmp: pathlib.Path, reference: bool, resume: bool) -> dict:
    enable_compile_cache()
    assert len(jax.devices()) == 4, jax.devices()
    # (the default check trains one chunk; the comparisons and resumes need two)
    config = CONFIG if reference or resume else dataclasses.replace(CONFIG, num_updates=CHUNK)
    trainer = make_trainer(config)
    hparams = default_hyperparams(config, **SMOKE_HP)
    keys = jax.vmap(jax.random.key)(jnp.arange(SEEDS))
    physics = trainer.env.physics
    calls = []  # the leading (batch) shape of every host call of the C backend
    host_step = physics._host_step

    def spy(*args):
        calls.append(list(args[1].shape))
        return host_step(*args)

    physics._host_step = spy
    quiet = lambda *a: None  # noqa: E731
    out = {}

    # training: a 2 (seeds) x 2 (envs) mesh, checkpointed after every chunk (and one device)
    if reference:
        one = train_specialists(trainer, hparams, keys, CHUNK, progress=quiet)
        out["calls_one_device"], calls[:] = sorted({tuple(c) for c in calls}), []
    mesh = make_mesh(4, seed_axis=2)
    four = train_specialists(trainer, hparams, keys, CHUNK, checkpoint_dir=tmp / "four", progress=quiet, mesh=mesh)
    out["calls_mesh"] = sorted({tuple(c) for c in calls})
    out["call_count_ratio"] = len(calls) / max(1, config.num_updates * config.num_steps)
    calls[:] = []
    if reference:
        out["params_difference"] = max_difference(one.params, four.params)
        out["obs_difference"] = max_difference(one.env_state.obs, four.env_state.obs)
        out["update_equal"] = bool(np.array_equal(one.update, four.update))
    out["params_finite"] = bool(all(np.all(np.isfinite(x)) for x in jax.tree.leaves(to_host(four.params))))
    obs, kernel = four.env_state.obs, jax.tree.leaves(four.params)[0]
    out["obs_spec"], out["params_spec"] = list(obs.sharding.spec), list(kernel.sharding.spec)
    out["obs_shard_shapes"] = sorted({tuple(s.data.shape) for s in obs.addressable_shards})
    out["obs_devices"] = len({s.device for s in obs.addressable_shards})

    # resume the 4-device run from its first chunk on 2 devices (envs axis only) and on 1
    for name, resume_mesh in (("two", make_mesh(2)), ("one", None)) if resume else ():
        shutil.copytree(tmp / "four", tmp / name)
        shutil.rmtree(tmp / name / str(CONFIG.num_updates))  # keep the checkpoint after the first chunk
        resumed = train_specialists(trainer, hparams, keys, CHUNK, checkpoint_dir=tmp / name, resume=True,
                                    progress=quiet, mesh=resume_mesh)
        out[f"resumed_on_{name}_params_difference"] = max_difference(resumed.params, four.params)
        out[f"resumed_on_{name}_devices"] = len(jax.tree.leaves(resumed.params)[0].sharding.device_set)
    calls[:] = []

    # evaluation: one device vs the episodes split over all 4 devices
    env = trainer.env
    evaluate = make_evaluate(env, trainer.model, batch_size=16)
    policy = jax.tree.map(lambda x: x[0], to_host(trainer.policy(four)))
    inits = jax.vmap(env_uniform(env))(jax.random.split(jax.random.key(7), 40))
    alone = jax.block_until_ready(evaluate(policy, inits, jax.random.key(8)))
    eval_calls_one, calls[:] = list(calls), []
    mesh = make_mesh(4)
    with use_mesh(mesh):
        split = jax.block_until_ready(jax.jit(evaluate)(policy, jax.device_put(inits, batch_sharding(mesh, False)),
                                                         jax.random.key(8)))
    out["eval_identical"] = {f: bool(np.array_equal(getattr(alone, f), getattr(split, f))) for f in alone._fields}
    out["eval_successes"] = int(np.sum(alone.success))
    out["eval_calls"] = [len(eval_calls_one), len(calls), sorted({tuple(c) for c in calls})]
    out["eval_shards"] = [sorted({list(s.data.shape)[0] for s in split.success.addressable_shards}),
                         len({s.device for s in split.success.addressable_shards})]
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(pathlib.Path(sys.argv[1]), "--reference" in sys.argv, "--resume" in sys.argv)))
