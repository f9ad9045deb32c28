"""Residual policies (ResiP, issue 19): a frozen base under a PPO-trained correction.

- `bases`: the bases PPO's residual training takes (`ppo.base.BasePolicy`) and the matching
  per-environment actors for the episode loop: a diffusion base (chunked, per-environment
  queues) or a PPO specialist's mean action; `residual_actor` adds the learned correction.
"""
