"""The XLA CPU flag MJX needs, set only where MJX runs on a CPU.

With jaxlib >= 0.7.1, XLA's CPU fusion emitters make MJX kinematics cost grow
exponentially with kinematic-chain depth (a 7-DoF arm step took 2.4 s instead of
~1 ms). Turning the emitters off (`--xla_cpu_use_fusion_emitters=false`) restores MJX's
speed, but it also slows everything else XLA compiles for the CPU: the environment,
policy and learner around the C MuJoCo backend ran 2x slower with it (measured on the
quick preset: 0.39 vs 0.19 s of JAX work per PPO update). So the flag is set when the
MJX backend is chosen (`envs.physics.resolve_backend("mjx")`, the scripts' `--backend
mjx`, the test suite), before JAX initialises, and not otherwise. The flag only affects
the CPU backend, so it is harmless on GPU/TPU. `tests/test_xla_flags.py` guards it.
"""

import os
import sys
import warnings

CPU_FUSION_FLAG = "--xla_cpu_use_fusion_emitters"


def use_mjx_cpu_flags() -> None:
    """Append `--xla_cpu_use_fusion_emitters=false` to XLA_FLAGS (for MJX on a CPU).

    Keeps every flag the user already set, including their own choice for this one.
    Warns when JAX's backend is already initialised, because the flag would then be
    ignored for this process.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if CPU_FUSION_FLAG in flags:
        return
    os.environ["XLA_FLAGS"] = (flags + f" {CPU_FUSION_FLAG}=false").strip()
    if jax_backend_initialised():
        warnings.warn(
            "the MJX backend was chosen after JAX initialised its backend, so "
            f"{CPU_FUSION_FLAG}=false cannot take effect; MJX on CPU may be very slow for deep arms. "
            "Choose the backend (resolve_backend('mjx'), --backend mjx) before running any JAX computation.",
            RuntimeWarning,
            stacklevel=3,
        )


def jax_backend_initialised() -> bool:
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(xla_bridge is not None and getattr(xla_bridge, "_backends", None))
