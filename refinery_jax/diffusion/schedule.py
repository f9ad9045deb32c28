"""DDPM noise schedule, the forward (noising) process and DDIM sampling, for ε-prediction.

Conventions (Ho et al. 2020; Song et al. 2021; Nichol & Dhariwal 2021):

- `T` discrete steps t = 0..T-1; ᾱ_t = ∏_{s≤t} (1 - β_s); x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε.
- The cosine ("squaredcos_cap_v2") schedule: β_t = min(1 - f((t+1)/T) / f(t/T), 0.999) with
  f(u) = cos²((u + 0.008) / 1.008 · π/2), as ResiP's base policy (100 steps).
- DDIM with η = 0 (deterministic) on K of the T steps, "trailing" spacing: the first step
  starts at t = T-1, where x is (nearly) pure noise, e.g. T = 100, K = 4: 99, 74, 49, 24.
  ResiP's diffusers scheduler uses "leading" spacing (75, 50, 25, 0), which starts pure
  noise as if it were x_75 and ends on a step from t = 0; trailing spacing avoids both
  mismatches (Lin et al. 2024), so one DDIM step from T-1 is exactly the model's estimate
  of E[x_0 | x_{T-1}] (tests/test_diffusion.py checks it against the closed form).
- `clip_sample`: the x_0 estimate is clipped to [-1, 1] (actions are normalised to that
  box) and ε re-derived from it, as diffusers does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class NoiseSchedule:
    betas: jax.Array            # [T]
    alphas_cumprod: jax.Array   # [T] ᾱ_t

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]


def cosine_schedule(num_steps: int = 100, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """The squared-cosine schedule (float64 on the host, then float32, as diffusers computes it)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    t = np.arange(num_steps, dtype=np.float64)
    betas = np.minimum(1.0 - f((t + 1) / num_steps) / f(t / num_steps), max_beta)
    return NoiseSchedule(betas=jnp.asarray(betas, jnp.float32),
                         alphas_cumprod=jnp.asarray(np.cumprod(1.0 - betas), jnp.float32))


def add_noise(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε; t [] or [B] (int) broadcast over x0's leading axis."""
    a = schedule.alphas_cumprod[t].reshape(jnp.shape(t) + (1,) * (x0.ndim - jnp.ndim(t)))
    return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def ddim_timesteps(num_train_steps: int, num_inference_steps: int) -> np.ndarray:
    """Trailing spacing: T-1 first, K steps evenly spaced, e.g. (100, 4) -> [99, 74, 49, 24]."""
    if not 1 <= num_inference_steps <= num_train_steps:
        raise ValueError(f"num_inference_steps must be in 1..{num_train_steps}, got {num_inference_steps}")
    steps = np.round(np.arange(num_train_steps, 0, -num_train_steps / num_inference_steps)).astype(np.int32) - 1
    return steps


def ddim_step(schedule: NoiseSchedule, x_t: jax.Array, eps: jax.Array, t, t_prev, clip_sample: bool = True):
    """One η = 0 DDIM step from t to t_prev (t_prev < 0: to x_0). Returns (x_{t_prev}, x_0 estimate)."""
    a_t = schedule.alphas_cumprod[t]
    a_prev = jnp.where(t_prev >= 0, schedule.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0)
    x0 = (x_t - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t)
    if clip_sample:
        x0 = jnp.clip(x0, -1.0, 1.0)
        eps = (x_t - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)
    return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * eps, x0


def ddim_sample(eps_fn, schedule: NoiseSchedule, x_start: jax.Array, num_inference_steps: int = 4,
                clip_sample: bool = True) -> jax.Array:
    """Run DDIM from x_start (noise at t = T-1) to x_0. eps_fn(x_t, t [] int32) -> ε estimate.

    A `lax.scan` over the K steps, so it traces eps_fn once (jit/vmap-able)."""
    steps = ddim_timesteps(schedule.num_steps, num_inference_steps)
    prev = np.append(steps[1:], -1).astype(np.int32)

    def body(x, ts):
        t, t_prev = ts
        x, _ = ddim_step(schedule, x, eps_fn(x, t), t, t_prev, clip_sample)
        return x, None

    x, _ = jax.lax.scan(body, x_start, (jnp.asarray(steps), jnp.asarray(prev)))
    return x
