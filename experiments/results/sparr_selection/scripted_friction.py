"""Is the friction gap solvable? The privileged scripted insertion at friction 0.5 and 1.0,
64 uniform starts, 5 s and 10 s (issue 20, 2026-12-06).
"""
import dataclasses

import jax
import numpy as np

from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig
from refinery_jax.envs.samplers import env_uniform
from refinery_jax.envs.scripted import run_scripted_episode
for fr in [0.5, 1.0]:
    cfg = EnvConfig(task="square_peg")
    cfg = dataclasses.replace(cfg, physics=dataclasses.replace(cfg.physics, friction=fr))
    env = AssemblyEnv(cfg)
    n = 64
    inits = jax.vmap(env_uniform(env))(jax.random.split(jax.random.key(0), n))
    keys = jax.random.split(jax.random.key(1), n)
    for sec in [5.0, 10.0]:
        final, success, _ = jax.jit(jax.vmap(lambda k, i: run_scripted_episode(env, k, i, sec)))(keys, inits)
        z, xy, _ = jax.vmap(env.goal_errors)(final.physics, final.info)
        print(fr, sec, "success", float(success.mean()), "z_err median mm", float(np.median(z))*1e3, flush=True)
