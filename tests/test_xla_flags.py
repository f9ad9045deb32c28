"""The CPU fusion-emitter trap: the flag is set without clobbering the user's, and MJX stays fast."""

import os
import subprocess
import sys
import time

import jax
import mujoco
import pytest
from mujoco import mjx

from refinery_jax.xla_flags import CPU_FUSION_FLAG


def _flags_after_import(env_flags: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if env_flags is not None:
        env["XLA_FLAGS"] = env_flags
    code = "import refinery_jax, os; print(os.environ['XLA_FLAGS'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_import_sets_flag_and_keeps_user_flags():
    assert _flags_after_import(None) == f"{CPU_FUSION_FLAG}=false"
    assert _flags_after_import("--xla_dump_to=/tmp/x") == f"--xla_dump_to=/tmp/x {CPU_FUSION_FLAG}=false"
    # a user's explicit choice wins
    assert _flags_after_import(f"{CPU_FUSION_FLAG}=true") == f"{CPU_FUSION_FLAG}=true"


def test_flag_in_effect_for_this_test_process():
    assert f"{CPU_FUSION_FLAG}=false" in os.environ["XLA_FLAGS"]


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
