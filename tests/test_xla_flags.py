"""The CPU fusion-emitter trap: choosing MJX sets the flag without clobbering the user's, only
then, and MJX stays fast."""

import os
import subprocess
import sys
import time

import jax
import mujoco
import pytest
from mujoco import mjx

from refinery_jax.xla_flags import CPU_FUSION_FLAG


def _flags_after(backend: str, env_flags: str | None) -> str:
    """XLA_FLAGS in a fresh process after importing the package and choosing `backend`."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if env_flags is not None:
        env["XLA_FLAGS"] = env_flags
    code = ("import os, refinery_jax\nfrom refinery_jax.envs.physics import resolve_backend\n"
            f"resolve_backend({backend!r})\nprint(repr(os.environ.get('XLA_FLAGS', '')))")
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    return eval(out.stdout.strip().splitlines()[-1])  # noqa: S307  (our own repr)


def test_choosing_mjx_sets_the_flag_and_keeps_user_flags():
    assert _flags_after("mjx", None) == f"{CPU_FUSION_FLAG}=false"
    assert _flags_after("mjx", "--xla_dump_to=/tmp/x") == f"--xla_dump_to=/tmp/x {CPU_FUSION_FLAG}=false"
    # a user's explicit choice wins
    assert _flags_after("mjx", f"{CPU_FUSION_FLAG}=true") == f"{CPU_FUSION_FLAG}=true"
    # the C backend does not need it (and runs XLA's own CPU code 2x faster without it)
    if jax.default_backend() == "cpu":
        assert _flags_after("auto", None) == "" and _flags_after("c", "--xla_dump_to=/tmp/x") == "--xla_dump_to=/tmp/x"


def test_flag_in_effect_for_this_test_process():
    assert f"{CPU_FUSION_FLAG}=false" in os.environ["XLA_FLAGS"]  # conftest: the suite runs MJX too


def _hinge_chain(depth: int) -> mujoco.MjModel:
    body = ""
    for _ in range(depth):
        body = f'<body pos="0 0 0.1"><joint type="hinge" axis="0 1 0"/><geom type="capsule" size="0.02 0.05"/>{body}</body>'
    return mujoco.MjModel.from_xml_string(f"<mujoco><worldbody>{body}</worldbody></mujoco>")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the trap is specific to XLA:CPU")
def test_nine_deep_chain_kinematics_is_not_exponential():
    """Without the flag, `mjx.kinematics` on a 9-deep chain took ~20 s per call; with it ~2 ms."""
    m = mjx.put_model(_hinge_chain(9), impl="jax")
    d = mjx.make_data(m)
    kinematics = jax.jit(mjx.kinematics)
    jax.block_until_ready(kinematics(m, d))  # compile
    start = time.perf_counter()
    for _ in range(5):
        out = kinematics(m, d)
    jax.block_until_ready(out)
    per_call = (time.perf_counter() - start) / 5
    assert per_call < 0.2, f"mjx.kinematics on a 9-deep chain took {per_call:.3f} s: fusion-emitter trap is back"


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the trap is specific to XLA:CPU")
def test_arm_reset_compiles_without_the_flag():
    """The C backend runs without the flag (faster XLA code), and reset's forward kinematics is a
    deep chain of small products too: without a barrier per link, the arm's reset took minutes to
    compile and run; with them ~10 s. In a fresh process without the flag."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = ("import time, jax, jax.numpy as jnp\n"
            "from refinery_jax.envs.assembly_env import AssemblyEnv, EnvConfig\n"
            "e = AssemblyEnv(EnvConfig(embodiment='franka', backend='c'))\n"
            "t = time.perf_counter()\n"
            "s = jax.jit(jax.vmap(e.reset))(jax.random.split(jax.random.key(0), 4), jnp.tile(e.init_high, (4, 1)))\n"
            "jax.block_until_ready(s); import os; print(time.perf_counter() - t, os.environ.get('XLA_FLAGS', ''))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seconds, *flags = out.stdout.strip().splitlines()[-1].split()
    assert not flags, flags  # the C backend did not set it
    assert float(seconds) < 90, f"the arm's reset took {float(seconds):.0f} s to compile and run without the flag"
