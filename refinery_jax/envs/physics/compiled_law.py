"""The impedance law compiled to C (`impedance.c`) and installed as MuJoCo's control callback.

With it, `mujoco.batch.Batch.step(nstep=decimation)` runs a whole control period on
MuJoCo's threads, evaluating the law at every substep with no Python in between; without
it, the C backend evaluates the same law in NumPy between single substeps (slower on the
Franka, whose null-space term needs two small solves per world and substep).

The library is built once per machine with the system C compiler (`$CC`, default `cc`)
against the installed MuJoCo's headers and library, and cached under
$REFINERY_JAX_CACHE/../compiled (default ~/.cache/refinery_jax/compiled), keyed by the
source, the MuJoCo version and the compiler. No compiler, or a failed build: `load()`
returns None with the reason, and the backend uses NumPy.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

import mujoco

from refinery_jax.compile_cache import cache_dir

SOURCE = pathlib.Path(__file__).with_name("impedance.c")
_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_lock = threading.Lock()
_loaded: dict[str, object] = {}


def _mujoco_paths() -> tuple[pathlib.Path, pathlib.Path]:
    root = pathlib.Path(mujoco.__file__).parent
    libraries = sorted(root.glob("libmujoco.so*")) + sorted(root.glob("libmujoco*.dylib"))
    if not libraries or not (root / "include" / "mujoco" / "mujoco.h").exists():
        raise RuntimeError(f"the mujoco package at {root} has no C headers or library to build against")
    return root / "include", libraries[0]


def _build(compiler: str) -> pathlib.Path:
    include, library = _mujoco_paths()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + mujoco.__version__.encode() + compiler.encode() + str(library).encode()).hexdigest()[:16]
    target = cache_dir().parent / "compiled" / f"impedance-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = pathlib.Path(tmp) / target.name
        command = [compiler, "-O2", "-shared", "-fPIC", "-std=c99", f"-I{include}", str(SOURCE), "-o", str(built),
                   str(library), f"-Wl,-rpath,{library.parent}", "-lm"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr.strip()}")
        os.replace(built, target)  # atomic: parallel builders (test workers) agree on one file
    return target


def load():
    """(library, None) with the callback installed, or (None, reason) when it cannot be built."""
    with _lock:
        if "library" in _loaded:
            return _loaded["library"], _loaded["reason"]
        library, reason = None, None
        compiler = os.environ.get("CC", "cc")
        if shutil.which(compiler) is None:
            reason = f"no C compiler ({compiler!r} not found; set $CC)"
        else:
            try:
                library = ctypes.CDLL(str(_build(compiler)))
                library.refinery_impedance_userdata_size.restype = ctypes.c_int
                install(library)
            except (OSError, RuntimeError) as error:
                library, reason = None, str(error)
        _loaded.update(library=library, reason=reason)
        return library, reason


def install(library) -> None:
    """Make the law MuJoCo's control callback (process-wide; worlds without its marker are untouched)."""
    current = mujoco.get_mjcb_control()
    if current is not None and current is not _loaded.get("callback"):
        raise RuntimeError("another MuJoCo control callback is installed; the C backend's compiled law would replace it")
    _loaded["callback"] = _CALLBACK(("refinery_impedance", library))
    mujoco.set_mjcb_control(_loaded["callback"])


def userdata_size(library, num_dofs: int) -> int:
    return int(library.refinery_impedance_userdata_size(num_dofs))
