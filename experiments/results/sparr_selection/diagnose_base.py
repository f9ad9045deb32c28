"""Where the quick square_peg base fails in a gap setting (issue 20, 2026-12-06): final height,
xy error, force, and the base's action on the rim, on the table's 200 evaluation episodes
(experiments/sparr.py's evaluation seed 1000). Run from the repository root, with the base at
runs/square_peg:

    python experiments/results/sparr_selection/diagnose_base.py friction|sim|clearance|...
"""
import sys

import jax
import numpy as np

sys.path.insert(0, "experiments")
import sparr  # noqa: E402

from refinery_jax.envs.gap import GapEnv  # noqa: E402
from refinery_jax.envs.samplers import env_uniform  # noqa: E402
from refinery_jax.refinery.specialists import specialist_policy  # noqa: E402
from refinery_jax.residual.sparr import specialist_base  # noqa: E402

gap = sys.argv[1] if len(sys.argv) > 1 else "friction"
args = sparr.parse_args(["--base-run", "runs/square_peg", "--gap", gap, "--out", "runs/unused"])
trainer, policy = specialist_policy(args.base_run, args.state, 0)
env = GapEnv(trainer.env.config, args.gap_config)
base = specialist_base(trainer.model, policy, trainer.config.obs_clip)
n = 200
k_inits, k_keys = jax.random.split(jax.random.key(args.eval_seed))  # as sparr.py draws them
inits = jax.vmap(env_uniform(env))(jax.random.split(k_inits, n))
keys = jax.random.split(k_keys, n)


def episode(init, key):
    def body(state, _):
        action, _ = base.mean_std(state.obs)
        nxt = env.step(state, action)
        z, xy, keypoints = env.goal_errors(nxt.physics, nxt.info)
        return nxt, (nxt.success, z, xy, keypoints, nxt.wrench, action)

    return jax.lax.scan(body, env.reset(key, init), None, length=env.config.episode_steps)[1]


success, z, xy, keypoints, wrench, action = jax.device_get(jax.jit(jax.vmap(episode))(inits, keys))
succeeded = success.any(1)
failed = ~succeeded
q = [10, 50, 90]
print(gap, "success", succeeded.mean())
print("failures: final tip height above the goal, mm", np.percentile(z[failed, -1] * 1e3, q))
print("failures: lowest tip height, mm", np.percentile(z[failed].min(1) * 1e3, q))
print("failures: final xy error, mm", np.percentile(xy[failed, -1] * 1e3, q))
print("failures: final keypoint distance, mm", np.percentile(keypoints[failed, -1] * 1e3, q))
print("failures: final |F|, N", np.percentile(np.linalg.norm(wrench[failed, -1, :3], axis=-1), q))
if succeeded.any():
    print("successes: first successful step", np.percentile(success[succeeded].argmax(1), q))
on_rim = failed & (z[:, -1] > 0.014)  # not entered: the plug tip within 1 mm of the 15 mm-deep socket's top
print("on the rim:", on_rim.sum(), "of", failed.sum(), "failures")
print("base action on the rim (last 10 steps), mean per dimension", action[on_rim, -10:].mean((0, 1)).round(3))
print("base action on the rim, |a| quantiles per dimension", np.percentile(
    np.abs(action[on_rim, -10:]).reshape(-1, 6), q, axis=0).round(3))
print("force on the rim, mean (fingertip frame), N", wrench[on_rim, -10:, :3].mean((0, 1)).round(2))
