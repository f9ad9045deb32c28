"""XLA flags the project needs in effect before JAX initialises.

With jaxlib >= 0.7.1, XLA's CPU fusion emitters make MJX kinematics cost grow
exponentially with kinematic-chain depth (a 7-DoF arm step took 2.4 s instead of
~1 ms). Turning the emitters off restores normal speed; the flag only affects the
CPU backend, so it is harmless on GPU/TPU. `tests/test_xla_flags.py` guards it.
"""

import os
import sys
import warnings

CPU_FUSION_FLAG = "--xla_cpu_use_fusion_emitters"


def ensure_cpu_flags() -> None:
    """Append `--xla_cpu_use_fusion_emitters=false` to XLA_FLAGS.

    Keeps every flag the user already set, including their own choice for this one.
    Warns when JAX's backend is already initialised, because the flag would then be
    ignored for this process.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if CPU_FUSION_FLAG in flags:
        return
    os.environ["XLA_FLAGS"] = (flags + f" {CPU_FUSION_FLAG}=false").strip()
    if _jax_backend_initialised():
        warnings.warn(
            "refinery_jax was imported after JAX initialised its backend, so "
            f"{CPU_FUSION_FLAG}=false cannot take effect; MJX on CPU may be very slow. "
            "Import refinery_jax (or set XLA_FLAGS) before running any JAX computation.",
            RuntimeWarning,
            stacklevel=3,
        )


def _jax_backend_initialised() -> bool:
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(xla_bridge is not None and getattr(xla_bridge, "_backends", None))
