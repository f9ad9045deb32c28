"""Franka Emika Panda (FER) arm as an MJCF fragment, built from published parameters.

No meshes: links are capsules, the hand is boxes. Every number below comes from one of
these sources (or is a stated modelling choice):

[K] Franka Control Interface documentation, "Robot and interface specifications":
    Denavit-Hartenberg parameters in Craig's (modified) convention, flange d = 0.107 m;
    joint position limits, joint velocity limits and joint torque limits of the Panda
    (https://frankaemika.github.io/docs/control_parameters.html). The same DH table is in
    the identification code of [G] (matlab/utils/Load_Franka_DH.m).
[G] C. Gaz, M. Cognetti, A. Oliva, P. Robuffo Giordano, A. De Luca, "Dynamic
    Identification of the Franka Emika Panda Robot With Retrieval of Feasible Parameters
    Using Penalty-Based Optimization", IEEE RA-L 4(4):4147-4154, 2019; Tables VIII-IX of
    its supplementary material, reproduced in github.com/marcocognetti/FrankaEmikaPandaDynModel
    (matlab/ConvertDynPars2VREP/DynPars2VREP.m): mass, centre of mass in the DH link frame,
    and inertia about the centre of mass with axes parallel to the link frame, links 1-7.
    Link 1's centre of mass along its own axis is not identifiable (link 1 only turns about
    that axis) and is 0 in [G]; we use 0 too. Its large Ixx/Iyy (0.70 kg m^2) are [G]'s
    values; they never enter the joint-space dynamics for the same reason.
    Sum of link 1-7 masses: 16.062132 kg.
[H] Franka Hand: mass 0.73 kg, centre of mass (-0.01, 0, 0.03) m and principal inertia
    (0.001, 0.0025, 0.0017) kg m^2 in the hand frame, as in franka_description
    (frankaemika/franka_ros, the panda_hand inertial; Franka's hand data sheet: ~0.7 kg).
    The fingers are fixed; their ~2 x 0.015 kg are taken as included in the 0.73 kg.
    TCP: 0.1034 m along the flange z axis, Franka's default flange-to-end-effector
    transform for the Franka Hand [K].
    Total arm mass used here, links 1-7 + hand: 16.792132 kg (link 0 is fixed to the
    world and has no inertial).

Modelling choices (not from a published identification):
- armature (reflected rotor inertia about each joint): 0.1 kg m^2 for joints 1-4 and
  0.05 kg m^2 for joints 5-7. [G] identified the dynamics from the torques measured by
  the link-side joint torque sensors, so its parameters exclude rotor inertia; and the
  robot's internal torque loop, closed on those sensors, hides much of the rotor inertia
  from torque commands.
  Franka's raw reflected inertias for the FR3 (0.61/0.61/0.46/0.46/0.21/0.21/0.21 kg m^2,
  quoted in Drake's franka_description README) are an upper bound; 0.1/0.05 is the order
  of magnitude MuJoCo Menagerie's Panda uses (0.1) and keeps explicit integration stable
  for the light wrist links.
- damping: 0.1 N m s/rad per joint, a small viscous term. Joint friction, which [G]
  identifies separately (a Coulomb-like sigmoid model), is left out; the task's
  controller supplies the real damping.
- geometry: capsule radii and extents approximate the Panda's outer shape; only the
  joint frames are exact.
- hand mounting: the real hand sits on the flange yawed by -pi/4 [K], and Franka's TCP
  frame includes that yaw. This module's contract fixes the `fingertip` frame as the
  flange frame turned by pi about its x axis, with no yaw; the hand is mounted at yaw 0
  so that its fingers line up with that frame (the held part's frame). The only dynamic
  effect is the hand's small inertia turned by 45 deg about the joint-7 axis.

Conventions: the fragment expects `<compiler angle="radian"/>` in the surrounding scene
(it emits no angles, only quaternions, but joint `range` values are in radians).
Quaternions are (w, x, y, z). Inertias come only from the explicit `<inertial>` elements:
every arm geom has mass="0" (keep the compiler's default inertiafromgeom="auto"). Every
moving body, including `fingertip` (and so the held part), has gravcomp="1": the arm is gravity-compensated as on the
real robot (and as in Isaac Lab with gravity disabled on the robot).

Collision: with collision=False (default) arm geoms have contype=conaffinity=0 and never
enter the collision pipeline. With collision=True they get contype=2, conaffinity=1: they
collide with any geom whose contype has bit 1 or whose conaffinity has bit 2 (default
contype=conaffinity=1 geoms, and the sockets of refinery_jax.assets.scene, 1/2), but not
with each other nor with the plug (2/1), so MJX generates no arm self-collision pairs.
"""

from __future__ import annotations

import math

import numpy as np

PANDA_JOINT_NAMES: tuple[str, ...] = tuple(f"panda_joint{i}" for i in range(1, 8))

# [K] modified (Craig) DH: (a_{i-1}, d_i, alpha_{i-1}) per joint, theta_i = q_i.
# T_{i-1,i} = Rx(alpha) Tx(a) Rz(theta) Tz(d).
PANDA_DH: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.333, 0.0),
    (0.0, 0.0, -math.pi / 2),
    (0.0, 0.316, math.pi / 2),
    (0.0825, 0.0, math.pi / 2),
    (-0.0825, 0.384, -math.pi / 2),
    (0.0, 0.0, math.pi / 2),
    (0.088, 0.0, math.pi / 2),
)
FLANGE_D = 0.107  # [K] flange: a = 0, d = 0.107, alpha = 0, theta = 0 after frame 7

# [K] joint position limits (rad), velocity limits (rad/s), torque limits (N m).
PANDA_JOINT_LIMITS = np.array([
    [-2.8973, 2.8973],
    [-1.7628, 1.7628],
    [-2.8973, 2.8973],
    [-3.0718, -0.0698],
    [-2.8973, 2.8973],
    [-0.0175, 3.7525],
    [-2.8973, 2.8973],
])
PANDA_VELOCITY_LIMITS = np.array([2.1750, 2.1750, 2.1750, 2.1750, 2.6100, 2.6100, 2.6100])
PANDA_TORQUE_LIMITS = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])

# Modelling choices, see the module docstring.
PANDA_ARMATURE = np.array([0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05])
PANDA_DAMPING = np.full(7, 0.1)

# [K] Franka Hand TCP along the flange z axis (m).
FLANGE_TO_FINGERTIP = 0.1034
# The real hand is mounted yawed by -pi/4 about the flange z axis [K]. Here it is mounted at
# 0 so that the fingers line up with the `fingertip` frame, which the contract of this
# module fixes as the flange frame turned by pi about x (no yaw). See the module docstring.
HAND_YAW = 0.0

# [G] per link: mass (kg), centre of mass in the DH link frame (m), inertia about the
# centre of mass (kg m^2) in [G]'s order Ixx, Ixy, Ixz, Iyy, Iyz, Izz.
PANDA_LINK_INERTIALS: tuple[tuple[float, tuple[float, float, float], tuple[float, ...]], ...] = (
    (4.970684, (3.875e-03, 2.081e-03, 0.0),
     (7.0337e-01, -1.3900e-04, 6.7720e-03, 7.0661e-01, 1.9169e-02, 9.1170e-03)),
    (0.646926, (-3.141e-03, -2.872e-02, 3.495e-03),
     (7.9620e-03, -3.9250e-03, 1.0254e-02, 2.8110e-02, 7.0400e-04, 2.5995e-02)),
    (3.228604, (2.7518e-02, 3.9252e-02, -6.6502e-02),
     (3.7242e-02, -4.7610e-03, -1.1396e-02, 3.6155e-02, -1.2805e-02, 1.0830e-02)),
    (3.587895, (-5.317e-02, 1.04419e-01, 2.7454e-02),
     (2.5853e-02, 7.7960e-03, -1.3320e-03, 1.9552e-02, 8.6410e-03, 2.8323e-02)),
    (1.225946, (-1.1953e-02, 4.1065e-02, -3.8437e-02),
     (3.5549e-02, -2.1170e-03, -4.0370e-03, 2.9474e-02, 2.2900e-04, 8.6270e-03)),
    (1.666555, (6.0149e-02, -1.4117e-02, -1.0517e-02),
     (1.9640e-03, 1.0900e-04, -1.1580e-03, 4.3540e-03, 3.4100e-04, 5.4330e-03)),
    (0.735522, (1.0517e-02, -4.252e-03, 6.1597e-02),
     (1.2516e-02, -4.2800e-04, -1.1960e-03, 1.0027e-02, -7.4100e-04, 4.8150e-03)),
)
# [H] hand: mass (kg), centre of mass in the hand frame (m), principal inertia (kg m^2).
HAND_MASS = 0.73
HAND_COM = (-0.01, 0.0, 0.03)
HAND_DIAG_INERTIA = (0.001, 0.0025, 0.0017)
PANDA_ARM_MASS = sum(m for m, _, _ in PANDA_LINK_INERTIALS) + HAND_MASS  # 16.792132 kg

# Gripper straight down with the fingertip frame world-aligned (yaw 0), fingertip at
# (0.500, 0.000, 0.250) m from the base (numerical IK, rounded to 1e-4 rad with
# q6 = q2 - q4 kept exact so the tool axis stays vertical). Joints 1, 3, 5, 7 centred;
# q4 is 0.74 rad from its lower limit, every other joint >= 1.4 rad from its limits; the
# 6x7 fingertip Jacobian has condition number ~8.9. Checked in tests/test_franka.py.
PANDA_HOME_QPOS = np.array([0.0, -0.0418, 0.0, -2.3343, 0.0, 2.2925, 0.0])

_HAND_HALF_HEIGHT = 0.0292      # palm: flange to finger base 0.0584 m
_FINGER_GAP = 0.012             # half opening between the finger pads (m)
_WHITE = 'rgba="0.92 0.92 0.92 1"'
_DARK = 'rgba="0.2 0.2 0.22 1"'


def _f(x: float) -> str:
    v = float(x)
    return "0" if abs(v) < 1e-12 else f"{v:.12g}"


def _vec(v) -> str:
    return " ".join(_f(x) for x in v)


def _rx(alpha: float) -> np.ndarray:
    c, s = math.cos(alpha), math.sin(alpha)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rz(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _quat(r: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (w, x, y, z), w >= 0."""
    w = math.sqrt(max(0.0, 1.0 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
    x = math.sqrt(max(0.0, 1.0 + r[0, 0] - r[1, 1] - r[2, 2])) / 2
    y = math.sqrt(max(0.0, 1.0 - r[0, 0] + r[1, 1] - r[2, 2])) / 2
    z = math.sqrt(max(0.0, 1.0 - r[0, 0] - r[1, 1] + r[2, 2])) / 2
    x = math.copysign(x, r[2, 1] - r[1, 2])
    y = math.copysign(y, r[0, 2] - r[2, 0])
    z = math.copysign(z, r[1, 0] - r[0, 1])
    q = np.array([w, x, y, z])
    return q / np.linalg.norm(q)


def _dh_local(a: float, d: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Pose of frame i in frame i-1 at theta_i = 0: Rx(alpha) Tx(a) Tz(d)."""
    r = _rx(alpha)
    return np.array([a, 0.0, 0.0]) + r @ np.array([0.0, 0.0, d]), r


def _zero_config_frames() -> list[tuple[np.ndarray, np.ndarray]]:
    """World poses of DH frames 0..7 at q = 0 (base at the origin)."""
    frames = [(np.zeros(3), np.eye(3))]
    for a, d, alpha in PANDA_DH:
        p, r = frames[-1]
        lp, lr = _dh_local(a, d, alpha)
        frames.append((p + r @ lp, r @ lr))
    return frames


# Link shapes as capsules (world coordinates at q = 0, arm straight up), radius (m):
# approximations of the Panda's outer shape. Converted to link frames below.
_LINK_CAPSULES: tuple[tuple[tuple[tuple[float, float, float], tuple[float, float, float], float, str], ...], ...] = (
    (((0.0, 0.0, 0.07), (0.0, 0.0, 0.14), 0.07, _WHITE),                # link0: base
     ((-0.09, 0.0, 0.06), (-0.03, 0.0, 0.06), 0.06, _WHITE)),
    (((0.0, 0.0, 0.17), (0.0, 0.0, 0.29), 0.06, _WHITE),),              # link1: column
    (((0.0, -0.055, 0.333), (0.0, 0.055, 0.333), 0.06, _DARK),          # link2: joint 2
     ((0.0, 0.0, 0.333), (0.0, 0.0, 0.44), 0.06, _WHITE)),
    (((0.0, 0.0, 0.45), (0.0, 0.0, 0.59), 0.06, _WHITE),                # link3: upper arm
     ((0.0, 0.0, 0.59), (0.0825, 0.0, 0.62), 0.055, _WHITE)),
    (((0.0825, -0.05, 0.649), (0.0825, 0.05, 0.649), 0.06, _DARK),      # link4: elbow
     ((0.0825, 0.0, 0.67), (0.0, 0.0, 0.75), 0.055, _WHITE)),
    (((0.0, 0.0, 0.77), (0.0, 0.0, 0.97), 0.055, _WHITE),),             # link5: forearm
    (((0.0, -0.05, 1.033), (0.0, 0.05, 1.033), 0.055, _DARK),           # link6: wrist
     ((0.0, 0.0, 1.033), (0.088, 0.0, 1.033), 0.05, _WHITE)),
    (((0.088, 0.0, 1.0), (0.088, 0.0, 0.95), 0.05, _WHITE),),           # link7: to flange
)


def _geom_contact(collision: bool) -> str:
    flags = 'contype="2" conaffinity="1"' if collision else 'contype="0" conaffinity="0"'
    return f'{flags} group="1" mass="0"'


def _link_geoms(link: int, collision: bool) -> str:
    p, r = _zero_config_frames()[link]
    out = []
    for a, b, radius, rgba in _LINK_CAPSULES[link]:
        la = r.T @ (np.asarray(a) - p)
        lb = r.T @ (np.asarray(b) - p)
        out.append(f'<geom name="panda_link{link}_c{len(out)}" type="capsule" '
                   f'fromto="{_vec(la)} {_vec(lb)}" size="{_f(radius)}" {rgba} {_geom_contact(collision)}/>')
    return "".join(out)


def _inertial_xml(mass, com, inertia) -> str:
    ixx, ixy, ixz, iyy, iyz, izz = inertia
    return (f'<inertial pos="{_vec(com)}" mass="{_f(mass)}" '
            f'fullinertia="{_vec((ixx, iyy, izz, ixy, ixz, iyz))}"/>')


def _hand_xml(fingertip_children: str, collision: bool) -> str:
    """Hand at the flange (yawed by HAND_YAW), fixed fingers, and the fingertip body."""
    g = _geom_contact(collision)
    hand_quat = _quat(_rz(HAND_YAW))
    # fingertip orientation in the flange frame: Rx(pi); expressed in the hand frame.
    tip_rot = _rz(HAND_YAW).T @ _rx(math.pi)
    finger_half = (0.009, 0.011, 0.027)   # thickness (opening axis y), width, length
    finger_z = 2 * _HAND_HALF_HEIGHT + finger_half[2]
    finger_y = _FINGER_GAP + finger_half[0]
    return (
        f'<body name="panda_hand" pos="0 0 {_f(FLANGE_D)}" quat="{_vec(hand_quat)}" gravcomp="1">'
        f'<inertial pos="{_vec(HAND_COM)}" mass="{_f(HAND_MASS)}" diaginertia="{_vec(HAND_DIAG_INERTIA)}"/>'
        f'<geom name="panda_hand_palm" type="box" size="0.022 0.1 {_f(_HAND_HALF_HEIGHT)}" '
        f'pos="0 0 {_f(_HAND_HALF_HEIGHT)}" {_WHITE} {g}/>'
        f'<geom name="panda_finger_left" type="box" size="{_f(finger_half[1])} {_f(finger_half[0])} '
        f'{_f(finger_half[2])}" pos="0 {_f(finger_y)} {_f(finger_z)}" {_DARK} {g}/>'
        f'<geom name="panda_finger_right" type="box" size="{_f(finger_half[1])} {_f(finger_half[0])} '
        f'{_f(finger_half[2])}" pos="0 {_f(-finger_y)} {_f(finger_z)}" {_DARK} {g}/>'
        f'<body name="fingertip" pos="0 0 {_f(FLANGE_TO_FINGERTIP)}" quat="{_vec(_quat(tip_rot))}" gravcomp="1">'
        f'<site name="fingertip_site" size="0.004" rgba="1 0 0 1"/>'
        f'{fingertip_children}'
        f'</body></body>'
    )


def panda_arm_xml(fingertip_children: str, base_pos=(0.0, 0.0, 0.0), collision: bool = False) -> str:
    """MJCF `<body name="panda_link0">...</body>` for `<worldbody>`; see the module docstring.

    `fingertip_children` is pasted verbatim inside the `fingertip` body (TCP frame: the
    flange frame turned by pi about its x axis, FLANGE_TO_FINGERTIP along the flange z).
    """
    inner = _hand_xml(fingertip_children, collision)
    for i in range(7, 0, -1):
        a, d, alpha = PANDA_DH[i - 1]
        pos, rot = _dh_local(a, d, alpha)
        mass, com, inertia = PANDA_LINK_INERTIALS[i - 1]
        lo, hi = PANDA_JOINT_LIMITS[i - 1]
        inner = (
            f'<body name="panda_link{i}" pos="{_vec(pos)}" quat="{_vec(_quat(rot))}" gravcomp="1">'
            f'{_inertial_xml(mass, com, inertia)}'
            f'<joint name="panda_joint{i}" type="hinge" axis="0 0 1" limited="true" range="{_f(lo)} {_f(hi)}" '
            f'armature="{_f(PANDA_ARMATURE[i - 1])}" damping="{_f(PANDA_DAMPING[i - 1])}"/>'
            f'{_link_geoms(i, collision)}{inner}</body>'
        )
    return (f'<body name="panda_link0" pos="{_vec(base_pos)}">'
            f'{_link_geoms(0, collision)}{inner}</body>')


def panda_actuator_xml() -> str:
    """Direct joint-torque motors, one per joint, limited to the Panda's torque limits [K]."""
    return "".join(
        f'<motor name="panda_motor{i}" joint="panda_joint{i}" ctrlrange="{_f(-t)} {_f(t)}" '
        f'ctrllimited="true" gear="1"/>'
        for i, t in enumerate(PANDA_TORQUE_LIMITS, start=1))
