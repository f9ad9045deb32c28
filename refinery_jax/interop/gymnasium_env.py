"""The project's assembly tasks as a Gymnasium vector environment: NumPy in, NumPy out.

    env = AssemblyVectorEnv(EnvConfig(task="square_peg"), num_envs=64)
    obs, info = env.reset(seed=0, options={"init": theta})   # theta [64, 3]: where each episode starts
    obs, reward, terminated, truncated, info = env.step(actions)  # actions [64, 6] in [-1, 1]

The physics is C MuJoCo (`--backend c`, the CPU default; the environment's bookkeeping is
the project's jitted code around it). `reset` takes the initial condition θ per
environment through `options["init"]` (the plug tip's offset from its goal, socket frame,
m), which is what Refinery needs of any simulator (`refinery.external`). Episodes have the
task's fixed length and end together; there is no auto-reset (`AutoresetMode.DISABLED`):
call `reset` again. `info["success"]` is the episode's outcome on its last step (the
environment's rule; a diverged simulation counts as a failure), False before. Needs
gymnasium (the interop extra).
"""

from __future__ import annotations

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium.vector import AutoresetMode

from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig


class AssemblyVectorEnv(gymnasium.vector.VectorEnv):
    metadata = {"autoreset_mode": AutoresetMode.DISABLED}

    def __init__(self, config: EnvConfig, num_envs: int):
        if num_envs < 1:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        self.env = AssemblyEnv(config)
        self.num_envs = num_envs
        self.theta_low, self.theta_high = np.asarray(self.env.init_low), np.asarray(self.env.init_high)
        self.single_observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (self.env.observation_size,), np.float32)
        self.single_action_space = gymnasium.spaces.Box(-1.0, 1.0, (self.env.action_size,), np.float32)
        self.observation_space = gymnasium.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, num_envs)
        self._reset = jax.jit(jax.vmap(self.env.reset))
        self._step = jax.jit(jax.vmap(self.env.step))
        self._states = None
        self._failed = np.zeros(num_envs, bool)
        self._key = jax.random.key(0)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """options["init"]: θ [num_envs, d] (default: uniform over the task's box);
        options["keys"]: the episodes' nuisance keys (default: drawn from `seed`)."""
        super().reset(seed=seed)
        if seed is not None:
            self._key = jax.random.key(seed)
        self._key, k_theta, k_episodes = jax.random.split(self._key, 3)
        options = options or {}
        theta = options.get("init")
        if theta is None:
            theta = np.asarray(jax.random.uniform(k_theta, (self.num_envs, self.theta_low.shape[0]),
                                                  minval=self.theta_low, maxval=self.theta_high))
        theta = np.asarray(theta, np.float32)
        if theta.shape != (self.num_envs, self.theta_low.shape[0]):
            raise ValueError(f"options['init'] must have shape ({self.num_envs}, {self.theta_low.shape[0]}), "
                             f"got {theta.shape}")
        keys = options.get("keys", jax.random.split(k_episodes, self.num_envs))
        self._states = self._reset(keys, jnp.asarray(theta))
        self._failed[:] = False
        return np.asarray(self._states.obs), {"init": np.asarray(self._states.info.init)}

    def step(self, actions):
        if self._states is None:
            raise RuntimeError("call reset() first")
        actions = np.asarray(actions, np.float32)
        if actions.shape != (self.num_envs, self.env.action_size):
            raise ValueError(f"actions must have shape ({self.num_envs}, {self.env.action_size}), got {actions.shape}")
        self._states = self._step(self._states, jnp.asarray(actions))
        s = self._states
        terminated, truncated = np.asarray(s.terminated), np.asarray(s.truncated)
        self._failed |= terminated
        success = np.asarray(s.success) & truncated & ~self._failed
        return (np.asarray(s.obs), np.asarray(s.reward), terminated, truncated,
                {"success": success, "critic_obs": np.asarray(s.critic_obs)})
