"""Multi-part assemblies: an ordered list of parts inserted one after another.

A `MultiPartAssembly` is a base (upright, its top face at z = 0 of the base frame) and
parts in insertion order. Each part is given in its own frame (origin at its lowest
point, like a plug) with its goal pose in the base frame and the depth it travels while
engaged. Stage i inserts part i into the partial assembly made of the base and parts
0..i-1 at their goal poses; `stage(i)` expresses that as a `TwoPartAssembly` whose socket
is the base and whose `free_parts` are the earlier parts, loose, so every stage runs in
the same environment as the 2-part tasks and its insertion can disturb what is already
assembled (`AssemblyEnv.prior_part_displacement` measures by how much). A part that goes
into or over one earlier part (`Part.mate`: a block into the block below, a ring over the
ring before, a gear onto the shaft) is scored against where that part is, since a stack
may shift within its clearances (a 1 mm stack-up at peg_tower's third block) while every
part stays within the loose-part tolerance.

Conventions (the paper's dataset): everything fits a 10 cm box, the base stands upright
at the origin, 0.5 mm clearance per side by default, parts are aluminium. Only boxes,
capsules and small convex meshes, which MJX collides.

Registered assemblies (`MULTIPART_ASSEMBLIES`; parts count the base):

| name | parts | stages | what |
| --- | --- | --- | --- |
| two_pin_plate | 4 | 3 | two pins, a plate over both (a small extra) |
| peg_tower | 6 | 5 | four tapering blocks stacked peg-in-hole, a pyramid spire on top |
| nested_rings | 7 | 6 | five square rings slid over a boss and each other, a pin into the boss |
| gear_shaft | 6 | 5 | a keyed (rectangular) shaft, spacer, 10-tooth gear (convex-mesh teeth), spacer, cap |
| plate_on_pegs | 7 | 6 | two square and two round pegs, a plate over all four, a pin through plate and base |
| keyed_bridge | 6 | 5 | a keyed post and a round post, a keyed bridge over both, a pin through it, a keyed cap |
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from refinery_jax.assets import parts
from refinery_jax.assets.geometry import Box, Capsule, ConvexMesh, Shape, Vec3, frustum, shape_bounds, yaw_quat
from refinery_jax.assets.parts import ALUMINIUM_DENSITY, FreePart, Rect, TwoPartAssembly, translate

DEFAULT_CLEARANCE = 0.0005  # m per side


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    shapes: tuple[Shape, ...]  # in the part frame: origin at the part's lowest point, +z up
    goal_pos: Vec3             # part-frame origin in the base frame when assembled
    depth: float               # engaged travel: from first contact with its socket to the goal
    length: float              # from the part's lowest point to where the gripper holds it
    density: float = ALUMINIUM_DENSITY
    # the earlier part this one goes into or onto (index into the assembly's parts), when it is
    # one loose part: success is then measured against where that part is, not where it was
    # assembled (a stack shifts within its clearances). None: the base, or several parts.
    mate: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class MultiPartAssembly:
    name: str
    base: tuple[Shape, ...]
    parts: tuple[Part, ...]    # insertion order
    clearance: float

    @property
    def num_stages(self) -> int:
        return len(self.parts)

    @property
    def num_parts(self) -> int:
        """Parts including the base."""
        return len(self.parts) + 1

    def stage(self, index: int, free_prior_parts: bool = True) -> TwoPartAssembly:
        """Stage `index` as a 2-part task: part `index` into the base and the earlier parts.

        The stage's socket frame sits at the part's goal raised by its depth. The base is the
        socket (fixed, its pose randomised by the environment); the earlier parts are free
        bodies at their assembled poses, or, with `free_prior_parts=False`, merged into the
        fixed socket (a stage that cannot disturb them).
        """
        if not 0 <= index < self.num_stages:
            raise ValueError(f"{self.name} has stages 0..{self.num_stages - 1}, got {index}")
        part = self.parts[index]
        if part.mate is not None and not 0 <= part.mate < index:
            raise ValueError(f"{self.name}: part {part.name} mates with part {part.mate}, not an earlier one")
        origin = np.asarray(part.goal_pos) + np.array([0.0, 0.0, part.depth])
        socket = [translate(s, -origin) for s in self.base]
        free = []
        for earlier in self.parts[:index]:
            offset = np.asarray(earlier.goal_pos) - origin
            if free_prior_parts:
                free.append(FreePart(name=earlier.name, shapes=earlier.shapes, pos=tuple(float(v) for v in offset),
                                     density=earlier.density))
            else:
                socket += [translate(s, offset) for s in earlier.shapes]
        return TwoPartAssembly(name=f"{self.name}/{index}", plug=part.shapes, socket=tuple(socket),
                               depth=part.depth, plug_length=part.length, clearance=self.clearance,
                               plug_density=part.density, free_parts=tuple(free), explicit_pairs=True,
                               mate=part.mate if free_prior_parts else None)

    def assembled_shapes(self) -> list[Shape]:
        """Every shape of the finished assembly, in the base frame."""
        return list(self.base) + [translate(s, p.goal_pos) for p in self.parts for s in p.shapes]

    def extent(self) -> np.ndarray:
        """Size (x, y, z) of the box that holds the finished assembly."""
        lo, hi = zip(*(shape_bounds(s) for s in self.assembled_shapes()))
        return np.max(hi, axis=0) - np.min(lo, axis=0)


# ---------------------------------------------------------------------------------------------
# Building blocks (part frames: z up from the part's lowest point)


def slab(half_xy: tuple[float, float], z0: float, z1: float, center=(0.0, 0.0)) -> Box:
    """A box spanning heights z0..z1."""
    return Box(half_size=(half_xy[0], half_xy[1], (z1 - z0) / 2), pos=(center[0], center[1], (z0 + z1) / 2))


def ring(outer: tuple[float, float], inner: tuple[float, float], z0: float, z1: float, center=(0.0, 0.0)) -> tuple[Box, ...]:
    """A rectangular ring of four boxes (outer and inner half-sizes) spanning heights z0..z1."""
    (ox, oy), (ix, iy), (cx, cy) = outer, inner, center
    if not (0 < ix < ox and 0 < iy < oy):
        raise ValueError(f"ring needs 0 < inner < outer, got outer={outer}, inner={inner}")
    hz, zc = (z1 - z0) / 2, (z0 + z1) / 2
    wy, wx = (oy - iy) / 2, (ox - ix) / 2
    return (Box((ox, wy, hz), (cx, cy + iy + wy, zc)), Box((ox, wy, hz), (cx, cy - iy - wy, zc)),
            Box((wx, iy, hz), (cx + ix + wx, cy, zc)), Box((wx, iy, hz), (cx - ix - wx, cy, zc)))


def holed_plate(outer: Rect, holes: list[Rect], z0: float, z1: float) -> tuple[Box, ...]:
    """A plate (or block) with through holes, spanning heights z0..z1, in as few boxes as we find.

    `parts.rectilinear_socket` merges grid cells row by row; holes spread along x merge
    better column by column, so both are tried (the second on the mirrored layout) and the
    shorter kept. Fewer boxes means fewer contact pairs for MJX.
    """
    rows = parts.rectilinear_socket(holes, z1 - z0, floor=None, outer=outer)
    swap = lambda r: (r[2], r[3], r[0], r[1])  # noqa: E731  (x <-> y)
    cols = parts.rectilinear_socket([swap(h) for h in holes], z1 - z0, floor=None, outer=swap(outer))
    cols = tuple(Box(half_size=(b.half_size[1], b.half_size[0], b.half_size[2]), pos=(b.pos[1], b.pos[0], b.pos[2]))
                 for b in cols)
    return tuple(translate(b, (0.0, 0.0, z1)) for b in min(rows, cols, key=len))


def holed_block(outer: Rect, holes: list[Rect], depth: float, floor: float = 0.005) -> tuple[Box, ...]:
    """A base: a block with blind holes `depth` deep, its top face at z = 0, a floor below."""
    x0, x1, y0, y1 = outer
    return holed_plate(outer, holes, -depth, 0.0) + (slab(((x1 - x0) / 2, (y1 - y0) / 2), -depth - floor, -depth,
                                                           center=((x0 + x1) / 2, (y0 + y1) / 2)),)


def rect(center: tuple[float, float], half: tuple[float, float], grow: float = 0.0) -> Rect:
    """(x0, x1, y0, y1) of a rectangle, each side pushed out by `grow`."""
    return (center[0] - half[0] - grow, center[0] + half[0] + grow, center[1] - half[1] - grow, center[1] + half[1] + grow)


def pin(half_xy: tuple[float, float], length: float) -> Box:
    return slab(half_xy, 0.0, length)


def round_pin(radius: float, length: float, foot: float = 0.001) -> tuple[Shape, ...]:
    """A round pin: a capsule (its hemispherical top is a natural chamfer) on a square foot.

    A capsule standing on its hemispherical end is balanced on a point and topples in a
    loose hole at the slightest push; the flat foot (`foot` tall, its sides 0.6 of the
    radius from the axis, inside the capsule's outline from above) makes it stand.
    """
    half = 0.6 * radius
    return (Capsule(radius=radius, half_length=(length - foot) / 2 - radius, pos=(0.0, 0.0, (length + foot) / 2)),
            slab((half, half), 0.0, foot + radius))


def gear_teeth(name: str, count: int, root_radius: float, tip_radius: float, root_half_width: float,
               tip_half_width: float, z0: float, z1: float) -> tuple[ConvexMesh, ...]:
    """`count` trapezoidal teeth around the z axis: one 8-vertex convex mesh, yawed copies."""
    tooth = tuple((r, s * w, z) for r, w in ((root_radius, root_half_width), (tip_radius, tip_half_width))
                  for s in (-1, 1) for z in (z0, z1))
    return tuple(ConvexMesh(name=name, vertices=tooth, quat=yaw_quat(2 * math.pi * k / count)) for k in range(count))


# ---------------------------------------------------------------------------------------------
# Assemblies


def two_pin_plate(name: str = "two_pin_plate", clearance: float = DEFAULT_CLEARANCE) -> MultiPartAssembly:
    """Two square pins into a base block, then a plate with two holes slid over both pins."""
    side, depth, exposed, plate = 0.006, 0.012, 0.012, 0.006
    xs = (-0.015, 0.015)
    h, c = side / 2, clearance
    base = parts.rectilinear_socket([(x - h - c, x + h + c, -h - c, h + c) for x in xs], depth)
    pin_len = depth + exposed
    pins = tuple(Part(name=f"pin_{i}", shapes=parts.box_plug(f"pin_{i}", (h, h), pin_len),
                      goal_pos=(x, 0.0, -depth), depth=depth, length=pin_len) for i, x in enumerate(xs))
    # the plate's holes fit the pins with the same clearance; its frame origin is its bottom face
    plate_boxes = parts.rectilinear_socket([(x - h - c, x + h + c, -h - c, h + c) for x in xs], plate,
                                           wall=0.008, floor=None)
    plate_part = Part(name="plate", shapes=tuple(translate(b, (0.0, 0.0, plate)) for b in plate_boxes),
                      goal_pos=(0.0, 0.0, 0.0), depth=exposed, length=plate)
    return MultiPartAssembly(name=name, base=base, parts=pins + (plate_part,), clearance=clearance)


def peg_tower(name: str = "peg_tower", clearance: float = DEFAULT_CLEARANCE) -> MultiPartAssembly:
    """A tower: four tapering blocks, each with a peg below and a hole on top, then a spire.

    Block k (26, 22, 18, 14 mm wide) has a square peg (10, 9, 8, 7 mm) that goes into the
    hole below it, a 5 mm solid body and a 6 mm deep hole for the next peg. Pegs are 0.5 mm
    shorter than their holes are deep, so each block rests on the block below, not on its
    peg tip. The spire is a 6 mm peg under a square pyramid frustum (a convex mesh).
    """
    c = clearance
    pegs = (0.010, 0.009, 0.008, 0.007, 0.006)
    widths = (0.026, 0.022, 0.018, 0.014)
    body, hole_depth, base_depth = 0.005, 0.006, 0.008
    base = parts.rectilinear_socket([rect((0, 0), (pegs[0] / 2, pegs[0] / 2), c)], base_depth,
                                    outer=rect((0, 0), (0.016, 0.016)))
    blocks, top = [], 0.0
    for k, width in enumerate(widths):
        peg_len = (base_depth if k == 0 else hole_depth) - 0.0005
        h, hole = width / 2, pegs[k + 1] / 2 + c
        shapes = (pin((pegs[k] / 2, pegs[k] / 2), peg_len), slab((h, h), peg_len, peg_len + body),
                  *ring((h, h), (hole, hole), peg_len + body, peg_len + body + hole_depth))
        blocks.append(Part(f"block_{k}", shapes, goal_pos=(0.0, 0.0, top - peg_len), depth=peg_len,
                           length=peg_len + body + hole_depth, mate=k - 1 if k else None))
        top += body + hole_depth
    peg_len, head, collar = hole_depth - 0.0005, 0.012, 0.002
    spire_shapes = (pin((pegs[4] / 2, pegs[4] / 2), peg_len), slab((0.005, 0.005), peg_len, peg_len + collar),
                    dataclasses.replace(frustum("spire_head", (0.005, 0.005), (0.001, 0.001), 0.0, head),
                                        pos=(0.0, 0.0, peg_len + collar)))
    spire = Part("spire", spire_shapes, goal_pos=(0.0, 0.0, top - peg_len), depth=peg_len,
                 length=peg_len + collar + head, mate=len(blocks) - 1)
    return MultiPartAssembly(name=name, base=base, parts=(*blocks, spire), clearance=clearance)


def nested_rings(name: str = "nested_rings", clearance: float = DEFAULT_CLEARANCE) -> MultiPartAssembly:
    """Five square rings slid down over a central boss and over each other, then a centre pin.

    The base is a 56 mm plate with a 12 mm boss, 14 mm tall, that has a 7 mm hole in its top.
    Ring k (3 mm walls) fits over the boss or the ring before it with `clearance` per side
    and is 2 mm lower than it (12, 10, 8, 6, 4 mm): a stepped pyramid. Each ring travels the
    height of what it slides over; the pin (6 mm square) goes 8 mm into the boss.
    """
    c, wall = clearance, 0.003
    boss_half, boss_height, pin_half, hole_depth = 0.006, 0.014, 0.003, 0.008
    base = (slab((0.028, 0.028), -0.005, 0.0), slab((boss_half, boss_half), 0.0, boss_height - hole_depth),
            *ring((boss_half, boss_half), (pin_half + c, pin_half + c), boss_height - hole_depth, boss_height))
    rings, inner_of, height_of = [], boss_half, boss_height
    for k, height in enumerate((0.012, 0.010, 0.008, 0.006, 0.004)):
        inner = inner_of + c
        outer = inner + wall
        rings.append(Part(f"ring_{k}", ring((outer, outer), (inner, inner), 0.0, height), goal_pos=(0.0, 0.0, 0.0),
                          depth=height_of, length=height, mate=k - 1 if k else None))
        inner_of, height_of = outer, height
    pin_len = hole_depth + 0.008
    centre = Part("pin", (pin((pin_half, pin_half), pin_len),), goal_pos=(0.0, 0.0, boss_height - hole_depth),
                  depth=hole_depth, length=pin_len)
    return MultiPartAssembly(name=name, base=base, parts=(*rings, centre), clearance=clearance)


def gear_shaft(name: str = "gear_shaft", clearance: float = DEFAULT_CLEARANCE) -> MultiPartAssembly:
    """A gear on a keyed shaft: shaft, spacer, gear, spacer, cap.

    The shaft is rectangular (10 x 7 mm, so only two yaws fit), 10 mm deep in the base and
    30 mm above it. Spacers (16 mm square, 6 mm) and the gear's square hub (22 mm, 8 mm) slide
    down it; the gear has ten trapezoidal teeth to a 36 mm tip diameter, one convex mesh
    yawed ten times, 3 mm thick on the hub's mid-plane (a web gear: only the hub touches
    the spacers). The cap has a blind hole 0.5 mm deeper than the shaft end it covers, so
    it rests on the upper spacer.
    """
    c = clearance
    shaft_half, base_depth, exposed = (0.005, 0.0035), 0.010, 0.030
    hole = (shaft_half[0] + c, shaft_half[1] + c)
    base = parts.rectilinear_socket([rect((0, 0), shaft_half, c)], base_depth, outer=rect((0, 0), (0.018, 0.018)))
    shaft_len = base_depth + exposed
    shaft = Part("shaft", (pin(shaft_half, shaft_len),), goal_pos=(0.0, 0.0, -base_depth), depth=base_depth,
                 length=shaft_len)
    spacer_h, gear_h, cap_hole, cap_top = 0.006, 0.008, 0.0105, 0.003

    def slider(name, shapes, bottom, length):
        return Part(name, shapes, goal_pos=(0.0, 0.0, bottom), depth=exposed - bottom, length=length, mate=0)

    spacer = ring((0.008, 0.008), hole, 0.0, spacer_h)
    gear = ring((0.011, 0.011), hole, 0.0, gear_h) + gear_teeth("gear_tooth", 10, 0.009, 0.018, 0.0022, 0.0012,
                                                                0.0025, gear_h - 0.0025)
    cap = ring((0.008, 0.008), hole, 0.0, cap_hole) + (slab((0.008, 0.008), cap_hole, cap_hole + cap_top),)
    sliders = (slider("spacer_0", spacer, 0.0, spacer_h), slider("gear", gear, spacer_h, gear_h),
               slider("spacer_1", spacer, spacer_h + gear_h, spacer_h),
               slider("cap", cap, 2 * spacer_h + gear_h, cap_hole + cap_top))
    return MultiPartAssembly(name=name, base=base, parts=(shaft, *sliders), clearance=clearance)


def plate_on_pegs(name: str = "plate_on_pegs", clearance: float = DEFAULT_CLEARANCE) -> MultiPartAssembly:
    """Four pegs (two square, two round) in a 2 x 2 grid, a plate over all four, a centre pin.

    Pegs stand on the floor of 10 mm deep holes, 14 mm proud; round pegs are capsules on a
    small square foot (`round_pin`), in square holes. The 5 mm plate has a hole over each peg and rests on four 3 mm standoff
    pads of the base (so it touches the base only there); the centre pin passes through the
    plate's centre hole and the 3 mm gap into the base, so a disturbed plate blocks it.
    """
    c = clearance
    peg_half, pin_half, depth, exposed, pad, plate_t = 0.004, 0.003, 0.010, 0.014, 0.003, 0.005
    spots = ((-0.014, -0.014), (0.014, 0.014), (0.014, -0.014), (-0.014, 0.014))
    holes = [rect(p, (peg_half, peg_half), c) for p in spots] + [rect((0, 0), (pin_half, pin_half), c)]
    pads = tuple(slab(half, 0.0, pad, center=at) for at, half in (
        ((0.019, 0.0), (0.003, 0.004)), ((-0.019, 0.0), (0.003, 0.004)),
        ((0.0, 0.019), (0.004, 0.003)), ((0.0, -0.019), (0.004, 0.003))))
    base = holed_block(rect((0, 0), (0.024, 0.024)), holes, depth) + pads
    peg_len = depth + exposed
    pegs = tuple(Part(f"peg_{k}", (pin((peg_half, peg_half), peg_len),) if k < 2 else round_pin(peg_half, peg_len),
                      goal_pos=(x, y, -depth), depth=depth, length=peg_len) for k, (x, y) in enumerate(spots))
    plate = Part("plate", holed_plate(rect((0, 0), (0.022, 0.022)), holes, 0.0, plate_t), goal_pos=(0.0, 0.0, pad),
                 depth=exposed - pad, length=plate_t)
    pin_len = depth + pad + plate_t + 0.008
    centre = Part("pin", (pin((pin_half, pin_half), pin_len),), goal_pos=(0.0, 0.0, -depth),
                  depth=depth + pad + plate_t, length=pin_len)
    return MultiPartAssembly(name=name, base=base, parts=(*pegs, plate, centre), clearance=clearance)


def keyed_bridge(name: str = "keyed_bridge", clearance: float = DEFAULT_CLEARANCE) -> MultiPartAssembly:
    """A keyed post and a round post, a bridge over both, a pin through the bridge, a keyed cap.

    The keyed post is 10 mm square with a 4 x 3 mm tab on its +y face, so it, the bridge
    and the cap each fit at one yaw only. Posts stand 10 mm deep in the base, 14 mm proud;
    the 5 mm bridge rests on two 3 mm pads at the base's ends; the pin passes through the
    bridge into the base; the cap's keyed blind hole covers the 6 mm of the keyed post above
    the bridge.
    """
    c = clearance
    post_x, post_half, tab_half, tab_depth = 0.017, 0.005, 0.002, 0.003
    round_r, pin_half, depth, exposed, pad, bridge_t = 0.004, 0.003, 0.010, 0.014, 0.003, 0.005

    def keyed_holes(center):
        x, y = center
        return [rect((x, y), (post_half, post_half), c),
                (x - tab_half - c, x + tab_half + c, y + post_half + c, y + post_half + tab_depth + c)]

    round_hole = rect((post_x, 0.0), (round_r, round_r), c)
    pin_hole = rect((0.0, 0.0), (pin_half, pin_half), c)
    pads = tuple(slab((0.0025, 0.006), 0.0, pad, center=(x, 0.0)) for x in (-0.0255, 0.0255))
    base = holed_block(rect((0, 0), (0.030, 0.012)), keyed_holes((-post_x, 0.0)) + [round_hole, pin_hole],
                       depth) + pads
    post_len = depth + exposed
    keyed_post = (pin((post_half, post_half), post_len),
                  slab((tab_half, tab_depth / 2), 0.0, post_len, center=(0.0, post_half + tab_depth / 2)))
    bridge = holed_plate(rect((0, 0), (0.028, 0.010)), keyed_holes((-post_x, 0.0)) + [round_hole, pin_hole], 0.0,
                         bridge_t)
    pin_len = depth + pad + bridge_t + 0.008
    above = exposed - pad - bridge_t  # keyed post above the bridge
    cap_hole, cap_top = above + 0.0005, 0.003
    cap = holed_plate(rect((0, 0.0015), (0.008, 0.0095)), keyed_holes((0.0, 0.0)), 0.0, cap_hole)
    cap += (slab((0.008, 0.0095), cap_hole, cap_hole + cap_top, center=(0.0, 0.0015)),)
    return MultiPartAssembly(name=name, base=base, clearance=clearance, parts=(
        Part("keyed_post", keyed_post, goal_pos=(-post_x, 0.0, -depth), depth=depth, length=post_len),
        Part("round_post", round_pin(round_r, post_len), goal_pos=(post_x, 0.0, -depth), depth=depth,
             length=post_len),
        Part("bridge", bridge, goal_pos=(0.0, 0.0, pad), depth=exposed - pad, length=bridge_t),
        Part("pin", (pin((pin_half, pin_half), pin_len),), goal_pos=(0.0, 0.0, -depth), depth=depth + pad + bridge_t,
             length=pin_len),
        Part("keyed_cap", cap, goal_pos=(-post_x, 0.0, pad + bridge_t), depth=above, length=cap_hole + cap_top,
             mate=0)))


MULTIPART_ASSEMBLIES = {
    "two_pin_plate": two_pin_plate,
    "peg_tower": peg_tower,
    "nested_rings": nested_rings,
    "gear_shaft": gear_shaft,
    "plate_on_pegs": plate_on_pegs,
    "keyed_bridge": keyed_bridge,
}


def multipart_names() -> tuple[str, ...]:
    return tuple(MULTIPART_ASSEMBLIES)


def get_multipart(name: str) -> MultiPartAssembly:
    if name not in MULTIPART_ASSEMBLIES:
        raise ValueError(f"unknown multi-part assembly {name!r}; registered: {', '.join(MULTIPART_ASSEMBLIES)}")
    return MULTIPART_ASSEMBLIES[name]()


def stage_names(name: str) -> tuple[str, ...]:
    """Task names of an assembly's stages, "NAME/0" .. "NAME/{n-1}", for `registry.get_assembly`."""
    return tuple(f"{name}/{i}" for i in range(get_multipart(name).num_stages))
