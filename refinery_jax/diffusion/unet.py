"""A conditional 1-D convolutional U-Net over action chunks (Chi et al. 2023's ConditionalUnet1D).

Input: a noisy chunk [..., horizon, action_size] (channels last), the diffusion step [...]
and the observation [..., obs_size]. Every residual block is FiLM-conditioned on
[sinusoidal step embedding -> MLP, observation]: the condition gives a per-channel scale
and bias. Down path: two residual blocks per level, then a stride-2 convolution (not after
the last level); two middle blocks; up path: skip concatenation, two residual blocks, a
stride-2 transposed convolution; a final convolution back to the action size. Output: the
ε estimate, same shape as the chunk.

ResiP's base uses down_dims (256, 512, 1024), ~66 M parameters, for images. Here the
observation is a 31-value state and training runs on 2 CPU cores, so the default
(`DEFAULT_DOWN_DIMS` = 16, 32, 64: 0.37 M parameters) is 16x narrower per level. Measured
(experiments/benchmarks/diffusion_throughput.py, 2 vCPUs shared with a training run):
0.17 s per BC update at batch 256 (3000 updates, 34 epochs of 300 demos, in 8.5 min), a
4-step DDIM chunk in 1.5 ms for one environment; 32/64/128 (1.2 M) takes 0.36 s and 3.3 ms,
8/16/32 (0.14 M) 0.08 s and 0.9 ms.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

DEFAULT_DOWN_DIMS = (16, 32, 64)


def mish(x):
    return x * jnp.tanh(jax.nn.softplus(x))


def step_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal embedding [..., dim] of integer steps t [...] (sin half, then cos half)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half) / (half - 1))
    angles = jnp.asarray(t, jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ConvBlock(nn.Module):
    features: int
    kernel_size: int
    groups: int

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, (self.kernel_size,), padding="SAME")(x)
        return mish(nn.GroupNorm(num_groups=self.groups, epsilon=1e-5)(x))


class FiLMResidualBlock(nn.Module):
    features: int
    kernel_size: int
    groups: int

    @nn.compact
    def __call__(self, x, cond):
        h = ConvBlock(self.features, self.kernel_size, self.groups)(x)
        scale, bias = jnp.split(nn.Dense(2 * self.features)(mish(cond)), 2, axis=-1)
        h = scale[..., None, :] * h + bias[..., None, :]
        h = ConvBlock(self.features, self.kernel_size, self.groups)(h)
        skip = x if x.shape[-1] == self.features else nn.Conv(self.features, (1,))(x)
        return h + skip


class ConditionalUnet1D(nn.Module):
    action_size: int
    down_dims: tuple[int, ...] = DEFAULT_DOWN_DIMS
    step_embed_dim: int = 64
    kernel_size: int = 5
    groups: int = 8

    @nn.compact
    def __call__(self, chunk, t, obs):
        """chunk [..., H, A], t [...] int, obs [..., O] -> ε estimate [..., H, A]; H divisible by
        2^(levels - 1)."""
        levels = len(self.down_dims)
        if chunk.shape[-2] % 2 ** (levels - 1):
            raise ValueError(f"chunk length {chunk.shape[-2]} must be divisible by {2 ** (levels - 1)}")
        lead = chunk.shape[:-2]
        x = chunk.reshape((-1,) + chunk.shape[-2:])
        e = step_embedding(jnp.broadcast_to(t, lead).reshape(-1), self.step_embed_dim)
        e = nn.Dense(self.step_embed_dim)(mish(nn.Dense(4 * self.step_embed_dim)(e)))
        cond = jnp.concatenate([e, obs.reshape(-1, obs.shape[-1])], axis=-1)
        block = lambda f: FiLMResidualBlock(f, self.kernel_size, self.groups)  # noqa: E731

        skips = []
        for i, features in enumerate(self.down_dims):
            x = block(features)(x, cond)
            x = block(features)(x, cond)
            skips.append(x)
            if i < levels - 1:
                x = nn.Conv(features, (3,), strides=(2,), padding=((1, 1),))(x)
        x = block(self.down_dims[-1])(x, cond)
        x = block(self.down_dims[-1])(x, cond)
        for i, features in reversed(list(enumerate(self.down_dims[:-1]))):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = block(features)(x, cond)
            x = block(features)(x, cond)
            x = nn.ConvTranspose(features, (4,), strides=(2,), padding="SAME")(x)
        # the first level's skip joins before the output blocks (Chi et al.'s version leaves it unused)
        x = jnp.concatenate([x, skips.pop()], axis=-1)
        x = block(self.down_dims[0])(x, cond)
        x = ConvBlock(self.down_dims[0], self.kernel_size, self.groups)(x)
        x = nn.Conv(self.action_size, (1,))(x)
        return x.reshape(lead + x.shape[-2:])
