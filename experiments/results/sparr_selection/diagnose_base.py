"""Where the quick square_peg base fails in a gap setting (issue 20, 2026-12-06): final height,
xy error, force, and the base's action on the rim, on the table's 200 evaluation episodes.

    python diagnose_base.py friction|sim|clearance|...
"""
import sys, json, pathlib, numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, "experiments")
import sparr as S
from refinery_jax.envs.gap import GapEnv, named_gaps
from refinery_jax.envs.samplers import env_uniform
from refinery_jax.refinery.specialists import specialist_policy
from refinery_jax.residual.sparr import specialist_base
gapname = sys.argv[1] if len(sys.argv) > 1 else "friction"
args = S.parse_args(["--base-run", "runs/square_peg", "--gap", gapname, "--out", "runs/unused"])
trainer, policy = specialist_policy(args.base_run, args.state, 0)
env = GapEnv(trainer.env.config, args.gap_config)
base = specialist_base(trainer.model, policy, trainer.config.obs_clip)
a = env.sim.assembly if hasattr(env, "sim") else None
n = 200
k1, k2 = jax.random.split(jax.random.key(1000))
inits = jax.vmap(env_uniform(env))(jax.random.split(k1, n)); keys = jax.random.split(k2, n)
def one(init, key):
    def body(s, _):
        m, _ = base.mean_std(s.obs)
        nxt = env.step(s, m)
        z, xy, yaw = env.goal_errors(nxt.physics, nxt.info) if hasattr(env, "goal_errors") else (0., 0., 0.)
        return nxt, (nxt.success, z, xy, yaw, nxt.wrench, m)
    s0 = env.reset(key, init)
    _, out = jax.lax.scan(body, s0, None, length=env.config.episode_steps)
    return out
succ, z, xy, yaw, w, act = jax.device_get(jax.jit(jax.vmap(one))(inits, keys))
anys = succ.any(1)
print(gapname, "success", anys.mean())
f = ~anys
print("failures: final z_err mm quantiles", np.percentile(z[f, -1]*1e3, [10, 50, 90]))
print("failures: min z_err mm quantiles", np.percentile(z[f].min(1)*1e3, [10, 50, 90]))
print("failures: final xy_err mm quantiles", np.percentile(xy[f, -1]*1e3, [10, 50, 90]))
print("failures: final kp dist mm", np.percentile(yaw[f, -1]*1e3, [10, 50, 90]))
print("failures: final |F| N", np.percentile(np.linalg.norm(w[f, -1, :3], axis=-1), [10, 50, 90]))
print("successes: min step", np.percentile(succ[anys].argmax(1), [10, 50, 90]) if anys.any() else None)

stuck = f & (z[:, -1] > 0.014)
print("stuck on rim:", stuck.sum(), "of", f.sum())
print("base action on rim, last 10 steps, mean per dim", act[stuck, -10:].mean((0, 1)).round(3))
print("base action |a| quantiles per dim (10,50,90)", np.percentile(np.abs(act[stuck, -10:]).reshape(-1, 6), [10, 50, 90], axis=0).round(3))
print("force on rim mean (fingertip frame)", w[stuck, -10:, :3].mean((0, 1)).round(2))
