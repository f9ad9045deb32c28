"""XLA flags the project needs in effect before JAX initialises (CPU backend only).

- `--xla_cpu_use_fusion_emitters=false`: with jaxlib >= 0.7.1, XLA's CPU fusion
  emitters make MJX kinematics cost grow exponentially with kinematic-chain depth
  (a 7-DoF arm step took 2.4 s instead of ~1 ms).
- `--xla_cpu_multi_thread_eigen=false`: vmapped PPO chunks over seeds hung for good
  here (jaxlib 0.10.2: compile done, every XLA worker idle, the result never ready;
  2 of 2 runs), matching the Eigen intra-op pool deadlock reported for vmapped
  graphs on XLA:CPU (PyAutoFit issues 1528/1530), which this flag avoids.

Both only affect the CPU backend, so they are harmless on GPU/TPU.
`tests/test_xla_flags.py` guards them.
"""

import os
import sys
import warnings

CPU_FUSION_FLAG = "--xla_cpu_use_fusion_emitters"
CPU_EIGEN_FLAG = "--xla_cpu_multi_thread_eigen"
CPU_FLAGS = (CPU_FUSION_FLAG, CPU_EIGEN_FLAG)  # each set to false


def ensure_cpu_flags() -> None:
    """Append `FLAG=false` to XLA_FLAGS for each of CPU_FLAGS the user has not set.

    Keeps every flag the user already set, including their own choice for these.
    Warns when JAX's backend is already initialised, because the flags would then be
    ignored for this process.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    missing = [flag for flag in CPU_FLAGS if flag not in flags]
    if not missing:
        return
    os.environ["XLA_FLAGS"] = " ".join([flags] + [f"{flag}=false" for flag in missing]).strip()
    if _jax_backend_initialised():
        warnings.warn(
            "refinery_jax was imported after JAX initialised its backend, so "
            f"{' and '.join(missing)}=false cannot take effect; MJX on CPU may be very slow or hang. "
            "Import refinery_jax (or set XLA_FLAGS) before running any JAX computation.",
            RuntimeWarning,
            stacklevel=3,
        )


def _jax_backend_initialised() -> bool:
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(xla_bridge is not None and getattr(xla_bridge, "_backends", None))
