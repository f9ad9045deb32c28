"""Residual policies (ResiP, issue 19): a frozen base under a PPO-trained correction.

- `bases`: the bases PPO's residual training takes (`ppo.base.BasePolicy`, batched for the
  rollout and per environment for the episode loop): a diffusion base (chunked,
  per-environment queues) or a PPO specialist's mean action.
"""
