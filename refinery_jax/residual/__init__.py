"""Residual policies: a frozen base under a learned correction.

- `bases` (ResiP, issue 19): the bases PPO's residual training takes (`ppo.base.BasePolicy`,
  batched for the rollout and per environment for the episode loop): a diffusion base
  (chunked, per-environment queues) or a PPO specialist's mean action.
- `sparr` (SPARR, issue 20): an off-policy residual learned on a "real" robot (`envs.gap`),
  one episode after another, with RLPD (`offpolicy`), on the robot's own senses.
"""
