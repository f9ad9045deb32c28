"""refinery_jax: Refinery (active fine-tuning + deployment-time optimisation) in JAX, on MuJoCo.

Physics runs on C MuJoCo (the CPU default) or MJX (GPU/TPU); choosing MJX sets the XLA
CPU flag it needs before JAX starts (`refinery_jax.xla_flags`).
"""

__version__ = "0.1.0"
