"""Actor and critic MLPs (Flax) and the Gaussian policy (distrax).

The actor reads the (normalised) policy observation; the critic reads the privileged
observation when the critic is asymmetric. The two are separate networks; the
log-std is a learned state-independent vector.
"""

from __future__ import annotations

from typing import Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from refinery_jax.ppo.normalization import RunningStats, normalize

ACTIVATIONS = {"elu": nn.elu, "relu": nn.relu, "tanh": nn.tanh, "silu": nn.silu}


class MLP(nn.Module):
    hidden: Sequence[int]
    out: int
    activation: str = "elu"
    head_scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=nn.initializers.orthogonal(np.sqrt(2.0)))(x))
        return nn.Dense(self.out, kernel_init=nn.initializers.orthogonal(self.head_scale))(x)


class ActorCritic(nn.Module):
    action_size: int
    actor_hidden: Sequence[int]
    critic_hidden: Sequence[int]
    activation: str = "elu"

    def setup(self):
        self.actor = MLP(self.actor_hidden, self.action_size, self.activation, head_scale=0.01)
        self.critic = MLP(self.critic_hidden, 1, self.activation, head_scale=1.0)
        self.log_std = self.param("log_std", nn.initializers.zeros, (self.action_size,))

    def __call__(self, obs, critic_obs):
        mean, log_std = self.policy(obs)
        return mean, log_std, self.value(critic_obs)

    def policy(self, obs):
        """obs [..., d] -> (mean [..., A], log_std [A])."""
        return self.actor(obs), self.log_std

    def value(self, critic_obs):
        """critic_obs [..., d_c] -> [...]."""
        return self.critic(critic_obs)[..., 0]


def action_distribution(mean: jax.Array, log_std: jax.Array) -> distrax.MultivariateNormalDiag:
    """Diagonal Gaussian over raw actions (the environment clips to [-1, 1])."""
    return distrax.MultivariateNormalDiag(mean, jnp.broadcast_to(jnp.exp(log_std), mean.shape))


@struct.dataclass
class Policy:
    """What acting needs: network parameters and the observation statistics."""

    params: dict
    obs_stats: RunningStats


def policy_action(model: ActorCritic, policy: Policy, obs: jax.Array, key: jax.Array, deterministic: bool,
                  obs_clip: float = 5.0) -> jax.Array:
    """One action [..., A]: the mean (deterministic) or a sample."""
    mean, log_std = model.apply(policy.params, normalize(policy.obs_stats, obs, obs_clip), method=ActorCritic.policy)
    if deterministic:
        return mean
    return action_distribution(mean, log_std).sample(seed=key)
