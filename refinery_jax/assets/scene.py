"""The MJCF scene: an embodiment holding a plug above a socket.

The socket is a mocap body, so its pose is part of `mjx.Data` and can be randomised
per environment without rebuilding the model. The plug's geoms live inside the
embodiment's `fingertip` body: the plug is pre-grasped and rigidly held, as in AutoMate
and SPARR. Gravity is compensated on everything the robot carries (`gravcomp`), as the
real robot's controller and Isaac Lab (gravity disabled on robot and held part) do.

Contact filtering: plug geoms have contype 2 / conaffinity 1 and socket geoms
contype 1 / conaffinity 2, so plug-socket is the only colliding pair and the arm's
links never enter the collision pipeline.

Scenes with loose parts (`TwoPartAssembly.free_parts`, the earlier parts of a
multi-part stage) add each as a free body after the robot, so the robot's dofs stay
first. MJX checks every candidate geom pair at every step whether or not it is near, and
a stage can hold dozens of boxes, so these scenes (and every multi-part stage, via
`TwoPartAssembly.explicit_pairs`) list their colliding pairs explicitly
(`contact_pairs`) instead of using contype/conaffinity:
- a loose part collides with the socket's and the other loose parts' geoms that lie
  within `PAIR_MARGIN` of it when assembled (a part moved further than that is already
  badly disturbed; past it, the physics of that part is no longer faithful);
- the plug collides with every geom it can reach on its way in: while its tip is above
  the socket's top face, anywhere within `APPROACH_XY` of the goal in x and y; below it,
  only within `PAIR_MARGIN` of the goal axis (it is in the hole, or resting on what it
  fits over). Geoms outside both regions (a base buried under parts stacked on it, the
  far side of a plate's underside) are skipped; a plug driven down beside the assembly,
  more than `APPROACH_XY` off its goal, could pass through them, a region no path to
  the goal crosses.
The pairs carry the geoms' default friction, solref and solimp, except that a loose
part's supports (its pairs with the socket and other loose parts) use the softer
`LOOSE_PART_SOLIMP`: MJX's box-box collision drops contacts that penetrate less than
1 um, and a light part resting on many contact points (a plate on 40) settles with less
penetration than that under the default impedance, so its contacts flicker off and it
hops 0.17 mm (one timestep of free fall) every few steps. The softer impedance at small
penetration makes it settle 5-60 um deep instead, where it stays still (measured in
tests/test_multipart.py). For the same reason the environment starts loose parts a few
micrometres sunk into their supports (`assembly_env.LOOSE_PART_SINK`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from refinery_jax.assets.geometry import ConvexMesh, geom_xml, mesh_asset_xml, shape_bounds
from refinery_jax.assets.parts import TwoPartAssembly, translate

# Where the socket sits when not randomised (world frame, m): in front of the arm base.
SOCKET_NOMINAL_POS = (0.5, 0.0, 0.05)
EMBODIMENTS = ("floating_hand", "franka")

PLUG_CONTACT = 'contype="2" conaffinity="1" condim="3"'
SOCKET_CONTACT = 'contype="1" conaffinity="2" condim="3"'
SOCKET_RGBA = 'rgba="0.55 0.6 0.7 1"'
PLUG_RGBA = 'rgba="0.9 0.55 0.2 1"'
FREE_RGBA = 'rgba="0.4 0.65 0.45 1"'
NO_CONTACT = 'contype="0" conaffinity="0" condim="3"'  # explicit-pair scenes: pairs only

LOOSE_PART_SOLIMP = (0.7, 0.95, 0.0002, 0.5, 2.0)  # d0, dmax, width (m), midpoint, power
PAIR_MARGIN = 0.002  # m: loose parts collide with geoms within this gap of their assembled pose
# A loose part knocked further than PAIR_MARGIN has no contacts left but this floor, under
# everything an assembly can occupy (socket at z = 0.05 ± 0.05 m, parts above its origin).
# Without it such a part fell for the rest of the sequence: the 5.5 m and 127 m
# "launches" of the keyed_bridge chained table were free falls (1/2 g t² over 1.06 s and
# then 5 s more; velocities are not carried between stages).
CATCH_FLOOR_Z = -0.15
APPROACH_XY = 0.012  # m: the plug collides with what it can reach within this xy offset of its goal


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
    contact = NO_CONTACT if _explicit(assembly) else PLUG_CONTACT
    return "".join(
        geom_xml(translate(s, (0.0, 0.0, -assembly.plug_length)), f"plug_{i}",
                 f'{contact} density="{assembly.plug_density}" {PLUG_RGBA}')
        for i, s in enumerate(assembly.plug))


def socket_geoms_xml(assembly: TwoPartAssembly, prefix: str = "socket") -> str:
    contact = NO_CONTACT if _explicit(assembly) else SOCKET_CONTACT
    return "".join(geom_xml(s, f"{prefix}_{i}", f"{contact} {SOCKET_RGBA}")
                   for i, s in enumerate(assembly.socket))


def _explicit(assembly: TwoPartAssembly) -> bool:
    """Does the scene list its contact pairs (free parts, or asked for) rather than filter by contype?"""
    return bool(assembly.free_parts) or assembly.explicit_pairs


def free_part_body_name(index: int) -> str:
    return f"prior{index}"


def free_parts_xml(assembly: TwoPartAssembly) -> str:
    """One free body per loose part, at its assembled pose for the nominal socket pose.

    Mass and inertia follow from the part's volume and density (MuJoCo sums its geoms;
    the small overlaps of ring boxes at their corners count twice).
    """
    bodies = []
    for j, part in enumerate(assembly.free_parts):
        pos = np.add(SOCKET_NOMINAL_POS, part.pos)
        geoms = "".join(geom_xml(s, f"{free_part_body_name(j)}_{k}", f'{NO_CONTACT} density="{part.density}" {FREE_RGBA}')
                        for k, s in enumerate(part.shapes))
        name = free_part_body_name(j)
        bodies.append(f'<body name="{name}" pos="{pos[0]:.7g} {pos[1]:.7g} {pos[2]:.7g}">'
                      f'<freejoint name="{name}_free"/>{geoms}</body>')
    return "".join(bodies)


def _bounds(shapes, offset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [shape_bounds(translate(s, offset)) for s in shapes]


def _overlap(a, b) -> bool:
    return bool(np.all(a[0] <= b[1]) and np.all(b[0] <= a[1]))


def contact_pairs(assembly: TwoPartAssembly, margin: float = PAIR_MARGIN,
                  approach_xy: float = APPROACH_XY) -> list[tuple[str, str]]:
    """The geom pairs a scene with loose parts collides (module docstring), by geom name.

    Bounds are axis-aligned in the socket frame with the plug at its goal and every loose
    part at its assembled pose; yawed boxes count with their circumscribed sphere.
    """
    plug = _bounds(assembly.plug, assembly.goal_in_socket)
    others = [(f"socket_{i}", b) for i, b in enumerate(_bounds(assembly.socket, (0.0, 0.0, 0.0)))]
    owner = [-1] * len(others)
    for j, part in enumerate(assembly.free_parts):
        for k, b in enumerate(_bounds(part.shapes, part.pos)):
            others.append((f"{free_part_body_name(j)}_{k}", b))
            owner.append(j)
    pairs = []
    approach = np.array([approach_xy, approach_xy, margin])
    lift = np.array([0.0, 0.0, assembly.depth])
    for i, (lo, hi) in enumerate(plug):
        # above the socket top: tip offset (dx, dy, dz), |dx|, |dy| <= approach_xy, dz >= depth
        above = (lo + lift - approach, np.array([hi[0] + approach_xy, hi[1] + approach_xy, np.inf]))
        # engaged: within the margin of the goal axis, from the goal up to the socket top
        engaged = (lo - margin, hi + lift + margin)
        pairs += [(f"plug_{i}", name) for name, b in others if _overlap(above, b) or _overlap(engaged, b)]
    for a, (name_a, b_a) in enumerate(others):
        if owner[a] < 0:
            continue
        grown = (b_a[0] - margin, b_a[1] + margin)
        # each loose geom against the socket and the loose parts listed before it
        pairs += [(name_a, name_b) for b, (name_b, b_b) in enumerate(others[:a])
                  if owner[b] != owner[a] and _overlap(grown, b_b)]
    return pairs


def contact_pairs_xml(assembly: TwoPartAssembly) -> str:
    soft = " ".join(f"{v:.7g}" for v in LOOSE_PART_SOLIMP)
    pairs = "".join(f'<pair geom1="{a}" geom2="{b}"/>' if a.startswith("plug_")
                    else f'<pair geom1="{a}" geom2="{b}" solimp="{soft}"/>' for a, b in contact_pairs(assembly))
    caught = "".join(f'<pair geom1="catch_floor" geom2="{free_part_body_name(j)}_{k}"/>'
                     for j, part in enumerate(assembly.free_parts) for k in range(len(part.shapes)))
    return pairs + caught


def mesh_assets_xml(shapes) -> str:
    """One asset per mesh name (geoms may share a mesh); a name reused with other vertices is an error."""
    meshes = {}
    for s in shapes:
        if isinstance(s, ConvexMesh):
            if meshes.setdefault(s.name, s.vertices) != s.vertices:
                raise ValueError(f"mesh name {s.name!r} is used for two different meshes")
    return "".join(mesh_asset_xml(ConvexMesh(name, vertices)) for name, vertices in meshes.items())


def scene_xml(assembly: TwoPartAssembly, embodiment: str, physics: PhysicsConfig) -> str:
    """The full MJCF text of a 2-part insertion scene (with loose parts, if the assembly has any)."""
    embodiment_spec(embodiment)  # validates the name
    plug = plug_geoms_xml(assembly)
    if embodiment == "floating_hand":
        robot, actuators = _floating_hand_xml(plug)
    else:
        from refinery_jax.assets import franka  # noqa: PLC0415

        robot, actuators = franka.panda_arm_xml(plug), franka.panda_actuator_xml()
    sx, sy, sz = SOCKET_NOMINAL_POS
    p = physics
    solimp = "0.95 0.99 0.0005 0.5 2"
    # 2-part tasks: contype/conaffinity filtering, nothing else (their MJCF is unchanged by loose parts)
    pair_default = free_bodies = contact = ""
    assets = mesh_assets_xml(assembly.plug) + mesh_assets_xml(assembly.socket)
    if _explicit(assembly):
        pair_default = (f'\n    <pair condim="3" friction="{p.friction} {p.friction} 0.005 0.0001 0.0001" '
                        f'solref="{p.contact_timeconst} {p.contact_dampratio}" solimp="{solimp}"/>')
        free_bodies = (f'\n    <geom name="catch_floor" type="plane" size="2 2 0.01" pos="0 0 {CATCH_FLOOR_Z}" '
                       f'{NO_CONTACT} group="3"/>\n    {free_parts_xml(assembly)}')
        contact = f"\n  <contact>{contact_pairs_xml(assembly)}</contact>"
        assets = mesh_assets_xml(list(assembly.plug) + list(assembly.socket)
                                 + [s for part in assembly.free_parts for s in part.shapes])
    return f"""
<mujoco model="{assembly.name}_{embodiment}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{p.timestep:.8g}" iterations="{p.solver_iterations}" ls_iterations="{p.ls_iterations}"
          solver="Newton" integrator="Euler" cone="pyramidal" impratio="{p.impratio}">
    <flag eulerdamp="disable"/>
  </option>
  <default>
    <geom friction="{p.friction} 0.005 0.0001" solref="{p.contact_timeconst} {p.contact_dampratio}"
          solimp="{solimp}"/>{pair_default}
  </default>
  <asset>{assets}</asset>
  <worldbody>
    <light pos="0.5 0 1.5" dir="0 0 -1"/>
    <geom name="table" type="plane" size="1 1 0.01" pos="0 0 0" contype="0" conaffinity="0" rgba="0.8 0.8 0.8 1"/>
    <body name="socket" mocap="true" pos="{sx} {sy} {sz}">{socket_geoms_xml(assembly)}</body>
    {robot}{free_bodies}
  </worldbody>{contact}
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
