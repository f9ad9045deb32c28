"""The MJCF scene: an embodiment holding a plug above a socket.

The socket is a mocap body, so its pose is part of `mjx.Data` and can be randomised
per environment without rebuilding the model. The plug's geoms live inside the
embodiment's `fingertip` body: the plug is pre-grasped and rigidly held, as in AutoMate
and SPARR. Gravity is compensated on everything the robot carries (`gravcomp`), as the
real robot's controller and Isaac Lab (gravity disabled on robot and held part) do.

Contact filtering: plug geoms have contype 2 / conaffinity 1 and socket geoms
contype 1 / conaffinity 2, so plug-socket is the only colliding pair and the arm's
links never enter the collision pipeline.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from refinery_jax.assets.geometry import ConvexMesh, geom_xml, mesh_asset_xml
from refinery_jax.assets.parts import TwoPartAssembly, translate

# Where the socket sits when not randomised (world frame, m): in front of the arm base.
SOCKET_NOMINAL_POS = (0.5, 0.0, 0.05)
EMBODIMENTS = ("floating_hand", "franka")

PLUG_CONTACT = 'contype="2" conaffinity="1" condim="3"'
SOCKET_CONTACT = 'contype="1" conaffinity="2" condim="3"'
SOCKET_RGBA = 'rgba="0.55 0.6 0.7 1"'
PLUG_RGBA = 'rgba="0.9 0.55 0.2 1"'


@dataclasses.dataclass(frozen=True)
class PhysicsConfig:
    """Simulator settings baked into the model (static: changing them recompiles).

    `timestep` is the physics step; the control rate is set by the environment's
    decimation. 1/240 s is a measured choice (experiments/timestep_study.py, 0.1 mm
    clearance square peg, full-force pushes): at AutoMate's 1/120 s the contact time
    constant must be >= 2 dt = 16.7 ms and the plug sank 7.8 mm into the socket (it
    tunnelled in every push, scripted success 0 %); at 1/240 s penetration stayed below
    0.08 mm with no tunnelling and 100 % scripted success; 1/480 s gave 0.05 mm at about
    twice the cost.
    """

    timestep: float = 1.0 / 240.0
    solver_iterations: int = 6
    ls_iterations: int = 6
    friction: float = 0.5
    # Contact softness: MuJoCo needs timeconst >= 2 * timestep for stability.
    contact_timeconst: float = 0.01
    contact_dampratio: float = 1.0
    impratio: float = 1.0

    def __post_init__(self):
        if self.contact_timeconst < 2 * self.timestep:
            raise ValueError(f"contact_timeconst {self.contact_timeconst} < 2 * timestep {self.timestep}: unstable contacts")


@dataclasses.dataclass(frozen=True)
class EmbodimentSpec:
    """What the environment needs to know about the robot, beyond the MJCF."""

    name: str
    home_qpos: tuple[float, ...]     # IK seed and null-space target
    torque_limits: tuple[float, ...]  # per actuated dof

    @property
    def num_dofs(self) -> int:
        return len(self.home_qpos)


def _floating_hand_xml(fingertip_children: str) -> tuple[str, str]:
    """A 6-DoF actuated hand: slide x, y, z then yaw, roll, pitch hinges at the fingertip.

    Its mass and rotor inertia (armature) are chosen close to what a Franka's end
    effector presents to a task-space controller, so the same gains behave alike.
    """
    x, y, z = SOCKET_NOMINAL_POS
    joints = "".join(
        f'<joint name="hand_{n}" type="{t}" axis="{a}" armature="{arm}" damping="{damp}" limited="false"/>'
        for n, t, a, arm, damp in [
            ("x", "slide", "1 0 0", 0.5, 1.0), ("y", "slide", "0 1 0", 0.5, 1.0), ("z", "slide", "0 0 1", 0.5, 1.0),
            ("yaw", "hinge", "0 0 1", 0.02, 0.05), ("roll", "hinge", "1 0 0", 0.02, 0.05),
            ("pitch", "hinge", "0 1 0", 0.02, 0.05)])
    body = (f'<body name="hand" pos="{x} {y} {z + 0.1}" gravcomp="1">{joints}'
            '<inertial pos="0 0 0.05" mass="1.0" diaginertia="0.004 0.004 0.003"/>'
            '<geom type="box" size="0.03 0.01 0.02" pos="0 0 0.06" contype="0" conaffinity="0" group="1" mass="0"/>'
            f'<body name="fingertip" gravcomp="1"><site name="fingertip_site"/>{fingertip_children}</body></body>')
    actuators = "".join(f'<motor name="hand_motor_{n}" joint="hand_{n}" ctrlrange="-100 100" gear="1"/>'
                        for n in ("x", "y", "z", "yaw", "roll", "pitch"))
    return body, actuators


def embodiment_spec(name: str) -> EmbodimentSpec:
    if name == "floating_hand":
        return EmbodimentSpec(name, home_qpos=(0.0,) * 6, torque_limits=(100.0,) * 6)
    if name == "franka":
        from refinery_jax.assets import franka  # noqa: PLC0415  (pulls in the arm only when used)

        return EmbodimentSpec(name, home_qpos=tuple(float(q) for q in franka.PANDA_HOME_QPOS),
                              torque_limits=tuple(float(t) for t in franka.PANDA_TORQUE_LIMITS))
    raise ValueError(f"unknown embodiment {name!r}; choose one of {EMBODIMENTS}")


def plug_geoms_xml(assembly: TwoPartAssembly) -> str:
    """The plug's geoms in the fingertip frame: the fingertip holds the plug's top."""
    return "".join(
        geom_xml(translate(s, (0.0, 0.0, -assembly.plug_length)), f"plug_{i}",
                 f'{PLUG_CONTACT} density="{assembly.plug_density}" {PLUG_RGBA}')
        for i, s in enumerate(assembly.plug))


def socket_geoms_xml(assembly: TwoPartAssembly, prefix: str = "socket") -> str:
    return "".join(geom_xml(s, f"{prefix}_{i}", f"{SOCKET_CONTACT} {SOCKET_RGBA}")
                   for i, s in enumerate(assembly.socket))


def mesh_assets_xml(shapes) -> str:
    return "".join(mesh_asset_xml(s) for s in shapes if isinstance(s, ConvexMesh))


def scene_xml(assembly: TwoPartAssembly, embodiment: str, physics: PhysicsConfig) -> str:
    """The full MJCF text of a 2-part insertion scene."""
    embodiment_spec(embodiment)  # validates the name
    plug = plug_geoms_xml(assembly)
    if embodiment == "floating_hand":
        robot, actuators = _floating_hand_xml(plug)
    else:
        from refinery_jax.assets import franka  # noqa: PLC0415

        robot, actuators = franka.panda_arm_xml(plug), franka.panda_actuator_xml()
    sx, sy, sz = SOCKET_NOMINAL_POS
    p = physics
    return f"""
<mujoco model="{assembly.name}_{embodiment}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{p.timestep:.8g}" iterations="{p.solver_iterations}" ls_iterations="{p.ls_iterations}"
          solver="Newton" integrator="Euler" cone="pyramidal" impratio="{p.impratio}">
    <flag eulerdamp="disable"/>
  </option>
  <default>
    <geom friction="{p.friction} 0.005 0.0001" solref="{p.contact_timeconst} {p.contact_dampratio}"
          solimp="0.95 0.99 0.0005 0.5 2"/>
  </default>
  <asset>{mesh_assets_xml(assembly.plug)}{mesh_assets_xml(assembly.socket)}</asset>
  <worldbody>
    <light pos="0.5 0 1.5" dir="0 0 -1"/>
    <geom name="table" type="plane" size="1 1 0.01" pos="0 0 0" contype="0" conaffinity="0" rgba="0.8 0.8 0.8 1"/>
    <body name="socket" mocap="true" pos="{sx} {sy} {sz}">{socket_geoms_xml(assembly)}</body>
    {robot}
  </worldbody>
  <actuator>{actuators}</actuator>
</mujoco>"""


def robot_dof_count(model) -> int:
    """Robot dofs come first in the kinematic tree; the actuators drive exactly them."""
    return int(model.nu)


def check_actuation(model) -> None:
    """The controller maps torques to `ctrl` assuming actuator i drives dof i."""
    trn = np.asarray(model.actuator_trnid[:, 0])
    dofs = np.asarray(model.jnt_dofadr[trn])
    if not np.array_equal(dofs, np.arange(model.nu)):
        raise ValueError(f"actuators must drive dofs 0..{model.nu - 1} in order, got {dofs}")
