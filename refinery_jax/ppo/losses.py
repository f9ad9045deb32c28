"""PPO's losses and advantage estimator as free functions on arrays.

Shapes: T rollout steps, B environments, N = flattened minibatch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(rewards, values, next_values, terminated, done, gamma, lam):
    """Generalised advantage estimation that bootstraps at time-limit truncation.

    Step t is the transition (s_t, a_t, r_t, s'_t) where s'_t is the state the step
    reached, before any auto-reset. `next_values[t] = V(s'_t)`.

        δ_t = r_t + γ (1 - terminated_t) V(s'_t) - V(s_t)
        A_t = δ_t + γ λ (1 - done_t) A_{t+1}

    A truncated episode (done, not terminated) still bootstraps from V(s'_t); only
    the recursion stops at every episode end, since s_{t+1} belongs to a new episode.

    Args:
      rewards, values, next_values: [T, B] float. terminated, done: [T, B] bool
      (done = terminated | truncated). gamma, lam: [] (may be traced).
    Returns:
      (advantages [T, B], returns [T, B]) with returns = advantages + values.
    """
    not_terminal = 1.0 - terminated.astype(rewards.dtype)
    continues = 1.0 - done.astype(rewards.dtype)
    deltas = rewards + gamma * not_terminal * next_values - values

    def backward(next_advantage, inputs):
        delta, cont = inputs
        advantage = delta + gamma * lam * cont * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(rewards[0]), (deltas, continues), reverse=True)
    return advantages, advantages + values


def clipped_policy_loss(log_ratio, advantages, clip_eps):
    """PPO's clipped surrogate, to minimise: -mean(min(ρ A, clip(ρ, 1±ε) A)).

    Args: log_ratio [N] = log π_new(a|s) - log π_old(a|s); advantages [N]; clip_eps [].
    Returns: (loss [], clip_fraction [] share of samples with |ρ - 1| > ε).
    """
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = -jnp.mean(jnp.minimum(unclipped, clipped))
    return loss, jnp.mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32))


def clipped_value_loss(values, old_values, returns, clip_eps):
    """0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, ±ε) - R)^2)). All [N] -> []."""
    clipped = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    return 0.5 * jnp.mean(jnp.maximum((values - returns) ** 2, (clipped - returns) ** 2))


def approx_kl(log_ratio):
    """KL(π_old || π_new) estimate mean((ρ - 1) - log ρ) (non-negative, low variance). [N] -> []."""
    return jnp.mean(jnp.expm1(log_ratio) - log_ratio)


def normalize_advantages(advantages):
    """Zero mean, unit std over the minibatch. [N] -> [N]."""
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)
