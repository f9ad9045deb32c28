"""JAX's persistent compilation cache, shared by the tests and the experiment scripts.

MJX programs take tens of seconds to compile on CPU; with the cache, a program is
compiled once per machine (per jax version) and loaded afterwards, also by fresh
clones. Location: $REFINERY_JAX_CACHE, default ~/.cache/refinery_jax/jax.
"""

from __future__ import annotations

import os
import pathlib


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("REFINERY_JAX_CACHE", pathlib.Path.home() / ".cache" / "refinery_jax" / "jax"))


def enable_compile_cache(min_compile_time_s: float = 1.0) -> pathlib.Path:
    """Turn the cache on for programs that took at least `min_compile_time_s` to compile."""
    import jax

    path = cache_dir()
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
    return path
