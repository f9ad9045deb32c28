"""Tests of the Franka Panda MJCF fragment (refinery_jax.assets.franka)."""

import jax
import mujoco
import numpy as np
import pytest
from mujoco import mjx

from refinery_jax.assets import franka

# Published values, written out here independently of the module under test.
# Franka's modified (Craig) DH table: (a_{i-1}, d_i, alpha_{i-1}), then the flange.
DH = [(0.0, 0.333, 0.0), (0.0, 0.0, -np.pi / 2), (0.0, 0.316, np.pi / 2), (0.0825, 0.0, np.pi / 2),
      (-0.0825, 0.384, -np.pi / 2), (0.0, 0.0, np.pi / 2), (0.088, 0.0, np.pi / 2)]
FLANGE_D = 0.107
TCP = 0.1034
# Gaz et al. 2019 masses of links 1-7, and the Franka Hand.
LINK_MASSES = [4.970684, 0.646926, 3.228604, 3.587895, 1.225946, 1.666555, 0.735522]
HAND_MASS = 0.73
# Gaz et al. 2019 link inertia about the centre of mass, (Ixx, Ixy, Ixz, Iyy, Iyz, Izz).
LINK_INERTIA = [
    (7.0337e-01, -1.3900e-04, 6.7720e-03, 7.0661e-01, 1.9169e-02, 9.1170e-03),
    (7.9620e-03, -3.9250e-03, 1.0254e-02, 2.8110e-02, 7.0400e-04, 2.5995e-02),
    (3.7242e-02, -4.7610e-03, -1.1396e-02, 3.6155e-02, -1.2805e-02, 1.0830e-02),
    (2.5853e-02, 7.7960e-03, -1.3320e-03, 1.9552e-02, 8.6410e-03, 2.8323e-02),
    (3.5549e-02, -2.1170e-03, -4.0370e-03, 2.9474e-02, 2.2900e-04, 8.6270e-03),
    (1.9640e-03, 1.0900e-04, -1.1580e-03, 4.3540e-03, 3.4100e-04, 5.4330e-03),
    (1.2516e-02, -4.2800e-04, -1.1960e-03, 1.0027e-02, -7.4100e-04, 4.8150e-03),
]

PLUG = '<geom name="held" type="box" size="0.01 0.01 0.02" pos="0 0 -0.02" mass="0.05" contype="0" conaffinity="0"/>'


def scene(children: str = "", collision: bool = False, extra: str = "", gravcomp: bool = True) -> str:
    arm = franka.panda_arm_xml(children, collision=collision)
    if not gravcomp:
        arm = arm.replace('gravcomp="1"', 'gravcomp="0"')
    return ('<mujoco><compiler angle="radian"/><option gravity="0 0 -9.81"/><worldbody>' + extra + arm
            + "</worldbody><actuator>" + franka.panda_actuator_xml() + "</actuator></mujoco>")


def model(**kw) -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_string(scene(**kw))


def rot_x(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1.0]])


def rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


def trans(x, y, z):
    t = np.eye(4)
    t[:3, 3] = x, y, z
    return t


def dh_flange(q) -> np.ndarray:
    t = np.eye(4)
    for (a, d, alpha), qi in zip(DH, q):
        t = t @ rot_x(alpha) @ trans(a, 0, 0) @ rot_z(qi) @ trans(0, 0, d)
    return t @ trans(0, 0, FLANGE_D)


def test_compiles_with_seven_hinges_and_motors():
    m = model()
    assert m.njnt == 7 and m.nq == 7 and m.nv == 7 and m.nu == 7
    assert all(m.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE for j in range(7))
    assert tuple(m.joint(j).name for j in range(7)) == franka.PANDA_JOINT_NAMES
    np.testing.assert_allclose(m.jnt_range, franka.PANDA_JOINT_LIMITS)
    assert all(m.jnt_limited)
    np.testing.assert_allclose(m.actuator_ctrlrange[:, 1], [87, 87, 87, 87, 12, 12, 12])
    np.testing.assert_allclose(m.actuator_ctrlrange[:, 0], -m.actuator_ctrlrange[:, 1])
    assert all(m.actuator_ctrllimited)
    assert [m.jnt_dofadr[m.actuator_trnid[i, 0]] for i in range(7)] == list(range(7))
    np.testing.assert_allclose(m.dof_armature, [0.1] * 4 + [0.05] * 3)
    # The held part's text is pasted inside the fingertip body, which is gravity-compensated.
    m2 = model(children=PLUG)
    tip = m2.body("fingertip").id
    assert m2.geom_bodyid[m2.geom("held").id] == tip
    assert m2.site_bodyid[m2.site("fingertip_site").id] == tip
    moving = [b for b in range(m2.nbody) if m2.body(b).name not in ("world", "panda_link0")]
    assert len(moving) == 9 and np.all(m2.body_gravcomp[moving] == 1.0)
    # No arm geom collides unless asked.
    assert not np.any(m.geom_contype) and not np.any(m.geom_conaffinity)
    assert np.all(m.geom_group >= 1)


def test_forward_kinematics_matches_dh_table():
    m = model()
    d = mujoco.MjData(m)
    rng = np.random.default_rng(0)
    lo, hi = franka.PANDA_JOINT_LIMITS.T
    hand, tip = m.body("panda_hand").id, m.body("fingertip").id
    site = m.site("fingertip_site").id
    for _ in range(10):
        q = rng.uniform(lo, hi)
        d.qpos[:] = q
        mujoco.mj_kinematics(m, d)
        t = dh_flange(q)
        np.testing.assert_allclose(d.xpos[hand], t[:3, 3], atol=1e-6)
        np.testing.assert_allclose(d.xmat[hand].reshape(3, 3), t[:3, :3], atol=1e-6)
        np.testing.assert_allclose(d.site_xpos[site], t[:3, 3] + TCP * t[:3, 2], atol=1e-6)
        # Fingertip frame: the flange frame turned by pi about its x axis.
        np.testing.assert_allclose(d.xmat[tip].reshape(3, 3), (t @ rot_x(np.pi))[:3, :3], atol=1e-6)
    # Known zero configuration: flange at (0.088, 0, 0.926), pointing down.
    d.qpos[:] = 0
    mujoco.mj_kinematics(m, d)
    np.testing.assert_allclose(d.xpos[hand], [0.088, 0.0, 0.926], atol=1e-9)


def test_home_pose():
    m = model()
    d = mujoco.MjData(m)
    q = franka.PANDA_HOME_QPOS
    lo, hi = franka.PANDA_JOINT_LIMITS.T
    assert np.all(q - lo > 0.5) and np.all(hi - q > 0.5)
    d.qpos[:] = q
    mujoco.mj_forward(m, d)
    site = m.site("fingertip_site").id
    r = d.site_xmat[site].reshape(3, 3)
    np.testing.assert_allclose(r[:, 2], [0, 0, 1], atol=1e-3)
    np.testing.assert_allclose(r, np.eye(3), atol=1e-3)  # yaw 0, like the floating hand
    x, y, z = d.site_xpos[site]
    assert 0.4 < x < 0.6 and abs(y) < 1e-3 and 0.2 < z < 0.3
    jp, jr = np.zeros((3, 7)), np.zeros((3, 7))
    mujoco.mj_jacSite(m, d, jp, jr, site)
    sv = np.linalg.svd(np.vstack([jp, jr]), compute_uv=False)
    assert np.linalg.matrix_rank(np.vstack([jp, jr])) == 6
    assert sv[0] / sv[-1] < 50


def test_inertia_is_the_published_one():
    m = model()
    links = [m.body(f"panda_link{i}").id for i in range(1, 8)]
    hand = m.body("panda_hand").id
    np.testing.assert_allclose(m.body_mass[links], LINK_MASSES, rtol=1e-9)
    assert m.body_mass[hand] == pytest.approx(HAND_MASS)
    total = m.body_mass[links].sum() + m.body_mass[hand]
    published = sum(LINK_MASSES) + HAND_MASS  # 16.792132 kg
    assert abs(total - published) / published < 0.10
    assert total == pytest.approx(franka.PANDA_ARM_MASS)
    assert m.body_mass[m.body("panda_link0").id] == 0 and m.body_mass[m.body("fingertip").id] == 0
    for b, full in zip(links, LINK_INERTIA):
        ixx, ixy, ixz, iyy, iyz, izz = full
        want = np.array([[ixx, ixy, ixz], [ixy, iyy, iyz], [ixz, iyz, izz]])
        rot = np.zeros(9)
        mujoco.mju_quat2Mat(rot, m.body_iquat[b])
        rot = rot.reshape(3, 3)
        np.testing.assert_allclose(rot @ np.diag(m.body_inertia[b]) @ rot.T, want, atol=1e-9)
    for b in links + [hand]:
        i1, i2, i3 = np.sort(m.body_inertia[b])
        assert i1 > 0 and i1 + i2 >= i3


def _tip_drift(m: mujoco.MjModel) -> float:
    d = mujoco.MjData(m)
    d.qpos[:] = franka.PANDA_HOME_QPOS
    mujoco.mj_forward(m, d)
    site = m.site("fingertip_site").id
    start = d.site_xpos[site].copy()
    for _ in range(round(1.0 / m.opt.timestep)):
        mujoco.mj_step(m, d)
    return float(np.linalg.norm(d.site_xpos[site] - start))


def test_gravity_compensation_holds_the_arm():
    assert _tip_drift(model(children=PLUG)) < 1e-3
    # Control: without compensation the same arm falls.
    assert _tip_drift(model(children=PLUG, gravcomp=False)) > 1e-2


def test_collision_geoms_touch_the_scene_but_not_each_other():
    table = '<geom name="table" type="plane" size="1 1 0.01"/>'
    block = '<geom name="block" type="box" size="0.05 0.05 0.05" pos="0.5 0 0.1"/>'
    m = model(collision=True, extra=table + block)
    d = mujoco.MjData(m)
    d.qpos[:] = franka.PANDA_HOME_QPOS
    mujoco.mj_forward(m, d)
    assert d.ncon == 0
    # Folded so far that links 1, 2, 5, 6, 7 overlap: still no (self-)contact.
    d.qpos[:] = [0, 0, 0, -3.07, 0, 0, 0]
    mujoco.mj_forward(m, d)
    assert d.ncon == 0
    d.qpos[:] = franka.PANDA_HOME_QPOS
    d.qpos[1] += 0.8  # lean forward: the wrist and hand go into the block and the table
    mujoco.mj_forward(m, d)
    pairs = {frozenset((m.geom(c.geom1).name, m.geom(c.geom2).name)) for c in d.contact[: d.ncon]}
    assert frozenset(("panda_hand_palm", "table")) in pairs
    assert any("block" in p for p in pairs)
    assert all(p & {"table", "block"} for p in pairs)


def test_mjx_step():
    m = model(children=PLUG)
    mx = mjx.put_model(m)
    dx = mjx.make_data(mx).replace(qpos=jax.numpy.asarray(franka.PANDA_HOME_QPOS))
    dx = jax.jit(mjx.step)(mx, dx)
    assert np.all(np.isfinite(np.asarray(dx.qpos))) and np.all(np.isfinite(np.asarray(dx.qacc)))
    np.testing.assert_allclose(np.asarray(dx.qpos), franka.PANDA_HOME_QPOS, atol=1e-4)
