"""One process of a 2-process run on CPU (2 forced host devices each, gloo collectives), run by
tests/test_mesh.py: the same small training as tests/mesh_equivalence.py on a mesh spanning
both processes (1 x 4), checkpointed; prints its gathered parameters' digest as JSON.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/mesh_multiprocess.py PORT ID TMPDIR
"""

import json
import os
import pathlib
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(pathlib.Path(__file__).parent))

from refinery_jax.mesh import initialize_distributed  # noqa: E402

port, process_id, tmp = int(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3])
initialize_distributed(f"localhost:{port}", 2, process_id)  # before anything else touches JAX

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mesh_equivalence import CHUNK, CONFIG, SEEDS  # noqa: E402
from refinery_jax.mesh import make_mesh, to_host  # noqa: E402
from refinery_jax.ppo import default_hyperparams, make_trainer  # noqa: E402
from refinery_jax.refinery.specialists import train_specialists  # noqa: E402
from test_ppo import SMOKE_HP  # noqa: E402

trainer = make_trainer(CONFIG)
keys = jax.vmap(jax.random.key)(jnp.arange(SEEDS))
mesh = make_mesh(4)
state = train_specialists(trainer, default_hyperparams(CONFIG, **SMOKE_HP), keys, CHUNK,
                          checkpoint_dir=tmp / "run", progress=lambda *a: None, mesh=mesh)
params = np.concatenate([np.ravel(x) for x in jax.tree.leaves(to_host(state.params))])
np.save(tmp / f"params_{process_id}.npy", params)
print("RESULT " + json.dumps({"process_count": jax.process_count(), "devices": len(jax.devices()),
                              "local_devices": len(jax.local_devices()),
                              "obs_shards_here": len(state.env_state.obs.addressable_shards)}))
