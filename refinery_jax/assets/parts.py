"""Parametric plug/socket pairs: the 2-part assembly families.

Frames (shared by every family and by the environment):
- socket frame: origin at the hole's centre on the socket's top face, +z up; the hole
  goes down to z = -depth and a floor closes it below.
- plug frame: origin at the plug's lowest point (its tip), +z up along the plug.
- goal: the plug frame sits at (0, 0, -depth) in the socket frame, yaw 0.

Sockets are unions of boxes (rectilinear holes are cut from a block by a grid
decomposition; round holes are rings of tangent boxes). Plugs are boxes, capsules, or
boxes with a convex chamfered tip. All dimensions are metres; `clearance` is per side.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from refinery_jax.assets.geometry import Box, Capsule, Shape, Vec3, frustum, shape_bounds, yaw_quat

Rect = tuple[float, float, float, float]  # x0, x1, y0, y1 in the socket frame

ALUMINIUM_DENSITY = 2700.0  # kg/m^3
STEEL_DENSITY = 7850.0


@dataclasses.dataclass(frozen=True)
class FreePart:
    """A loose part resting in the socket: a free body placed at its assembled pose at reset.

    Multi-part stages use these for the parts assembled in earlier stages, so the stage's
    insertion can push them out of place (see `multipart.MultiPartAssembly.stage`).
    """

    name: str
    shapes: tuple[Shape, ...]  # in the part frame (origin at the part's lowest point)
    pos: Vec3                  # part-frame origin in the socket frame when assembled (yaw 0)
    density: float = ALUMINIUM_DENSITY

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounds (lower, upper) of the part in its own frame."""
        lo, hi = zip(*(shape_bounds(s) for s in self.shapes))
        return np.min(lo, axis=0), np.max(hi, axis=0)


@dataclasses.dataclass(frozen=True)
class TwoPartAssembly:
    """A plug and its socket, in the frames described in the module docstring.

    `free_parts` (empty for the 2-part tasks) are loose parts already in the socket: the
    scene adds each as a free body, and the environment places it at its assembled pose.
    """

    name: str
    plug: tuple[Shape, ...]
    socket: tuple[Shape, ...]
    depth: float           # insertion depth (m): plug tip travel from the socket top to the goal
    plug_length: float     # tip to grasp point (m); the fingertip holds the plug's top
    clearance: float       # per side (m)
    plug_density: float = 1200.0  # kg/m^3, a stiff plastic
    free_parts: tuple[FreePart, ...] = ()
    # the loose part the plug goes into (index into free_parts), whose pose carries the goal:
    # pushed within its own clearance, it takes its hole with it. None: the fixed socket.
    mate: Optional[int] = None
    # list the colliding geom pairs explicitly, pruned to those that can touch (scene.contact_pairs);
    # always so with free parts, and multi-part stages ask for it in their first stage too
    explicit_pairs: bool = False

    def __post_init__(self):
        if self.depth <= 0 or self.plug_length <= 0:
            raise ValueError(f"{self.name}: need positive depth and plug_length, got {self.depth}, {self.plug_length}")
        if self.mate is not None and not 0 <= self.mate < len(self.free_parts):
            raise ValueError(f"{self.name}: mate {self.mate} is not one of its {len(self.free_parts)} loose parts")

    @property
    def goal_in_socket(self) -> np.ndarray:
        """Plug-frame origin at the goal, in the socket frame."""
        return np.array([0.0, 0.0, -self.depth])

    def extent(self) -> np.ndarray:
        """Size (x, y, z) of the box that holds the assembled pair."""
        shapes = list(self.socket) + [translate(s, (0.0, 0.0, -self.depth)) for s in self.plug]
        shapes += [translate(s, part.pos) for part in self.free_parts for s in part.shapes]
        lo, hi = zip(*(shape_bounds(s) for s in shapes))
        return np.max(hi, axis=0) - np.min(lo, axis=0)


# ---------------------------------------------------------------------------------------------
# Sockets


def rectilinear_socket(holes: list[Rect], depth: float, wall: float = 0.01, floor: float | None = 0.005,
                       outer: Rect | None = None) -> tuple[Box, ...]:
    """A block with axis-aligned rectangular holes, as few boxes as a grid merge gives.

    The block's footprint is `outer`, by default the holes' bounding box grown by `wall`.
    Breakpoints of all rectangles define a grid; solid cells are merged along x into runs,
    and equal runs in consecutive rows are merged along y. `floor=None` leaves the holes
    open below (a plate).
    """
    if outer is None:
        outer = (min(h[0] for h in holes) - wall, max(h[1] for h in holes) + wall,
                 min(h[2] for h in holes) - wall, max(h[3] for h in holes) + wall)
    x0, x1, y0, y1 = outer
    if not all(x0 < h[0] < h[1] < x1 and y0 < h[2] < h[3] < y1 for h in holes):
        raise ValueError(f"holes {holes} must lie strictly inside the footprint {outer}")
    xs = sorted({x0, x1, *(v for h in holes for v in h[:2])})
    ys = sorted({y0, y1, *(v for h in holes for v in h[2:])})

    def solid(cx, cy):
        return not any(h[0] < cx < h[1] and h[2] < cy < h[3] for h in holes)

    rows = []  # (y_lo, y_hi, runs)
    for ylo, yhi in zip(ys[:-1], ys[1:]):
        cy = 0.5 * (ylo + yhi)
        runs, start = [], None
        for xlo, xhi in zip(xs[:-1], xs[1:]):
            if solid(0.5 * (xlo + xhi), cy):
                start = xlo if start is None else start
                end = xhi
            elif start is not None:
                runs.append((start, end))
                start = None
        if start is not None:
            runs.append((start, end))
        if rows and rows[-1][2] == runs and math.isclose(rows[-1][1], ylo):
            rows[-1] = (rows[-1][0], yhi, runs)
        else:
            rows.append((ylo, yhi, runs))

    boxes = [
        Box(half_size=((b - a) / 2, (yhi - ylo) / 2, depth / 2), pos=((a + b) / 2, (ylo + yhi) / 2, -depth / 2))
        for ylo, yhi, runs in rows
        for a, b in runs
    ]
    if floor is not None:
        boxes.append(_floor(x0, x1, y0, y1, depth, floor))
    return tuple(boxes)


def round_socket(radius: float, depth: float, sides: int = 12, wall: float = 0.008, floor: float = 0.005) -> tuple[Box, ...]:
    """A ring of `sides` boxes whose inner faces are tangent to a circle of `radius`.

    Each box is long enough to close the ring at its outer edge, so neighbours overlap
    at the inner corners (they belong to one body, so the overlap is harmless).
    """
    half_len = (radius + wall) * math.tan(math.pi / sides)
    boxes = []
    for i in range(sides):
        angle = 2 * math.pi * i / sides
        r = radius + wall / 2
        boxes.append(Box(half_size=(wall / 2, half_len, depth / 2),
                         pos=(r * math.cos(angle), r * math.sin(angle), -depth / 2), quat=yaw_quat(angle)))
    outer = radius + wall
    boxes.append(_floor(-outer, outer, -outer, outer, depth, floor))
    return tuple(boxes)


def _floor(x0, x1, y0, y1, depth, thickness) -> Box:
    return Box(half_size=((x1 - x0) / 2, (y1 - y0) / 2, thickness / 2),
               pos=((x0 + x1) / 2, (y0 + y1) / 2, -depth - thickness / 2))


# ---------------------------------------------------------------------------------------------
# Plugs


def box_plug(name: str, half_xy: tuple[float, float], length: float, center_xy=(0.0, 0.0),
             chamfer: float = 0.0, z0: float = 0.0) -> tuple[Shape, ...]:
    """A box from z0 to z0 + length, optionally with a chamfered (frustum) tip of height `chamfer`."""
    hx, hy = half_xy
    cx, cy = center_xy
    if chamfer <= 0:
        return (Box(half_size=(hx, hy, length / 2), pos=(cx, cy, z0 + length / 2)),)
    if chamfer >= min(hx, hy) or chamfer >= length:
        raise ValueError(f"chamfer {chamfer} too large for a {2 * hx}x{2 * hy} plug")
    body = Box(half_size=(hx, hy, (length - chamfer) / 2), pos=(cx, cy, z0 + (length + chamfer) / 2))
    tip = frustum(f"{name}_tip", (hx - chamfer, hy - chamfer), (hx, hy), 0.0, chamfer)
    tip = dataclasses.replace(tip, pos=(cx, cy, z0))
    return body, tip


def translate(shape: Shape, offset) -> Shape:
    return dataclasses.replace(shape, pos=tuple(np.add(shape.pos, offset)))


# ---------------------------------------------------------------------------------------------
# Families


def square_peg(name: str, side=0.016, depth=0.015, length=0.04, clearance=0.0005, chamfer=0.0) -> TwoPartAssembly:
    return rect_peg(name, (side, side), depth, length, clearance, chamfer)


def rect_peg(name: str, size=(0.024, 0.012), depth=0.015, length=0.04, clearance=0.0005, chamfer=0.0) -> TwoPartAssembly:
    hx, hy = size[0] / 2, size[1] / 2
    c = clearance
    return TwoPartAssembly(
        name=name,
        plug=box_plug(name, (hx, hy), length, chamfer=chamfer),
        socket=rectilinear_socket([(-hx - c, hx + c, -hy - c, hy + c)], depth),
        depth=depth, plug_length=length, clearance=clearance)


def round_peg(name: str, radius=0.008, depth=0.015, length=0.04, clearance=0.0005, sides=12) -> TwoPartAssembly:
    """A capsule plug (its hemispherical tip is a natural chamfer) in a polygonal ring."""
    half_len = (length - 2 * radius) / 2
    return TwoPartAssembly(
        name=name,
        plug=(Capsule(radius=radius, half_length=half_len, pos=(0.0, 0.0, length / 2)),),
        socket=round_socket(radius + clearance, depth, sides=sides),
        depth=depth, plug_length=length, clearance=clearance)


def keyed_peg(name: str, side=0.016, key=(0.004, 0.006), depth=0.015, length=0.04, clearance=0.0005) -> TwoPartAssembly:
    """A square peg with a key tab on its +x face: only one yaw fits (no 90° symmetry)."""
    h = side / 2
    kx, ky = key[0], key[1] / 2  # tab protrusion and half width
    c = clearance
    plug = box_plug(name, (h, h), length) + (Box(half_size=(kx / 2, ky, length / 2), pos=(h + kx / 2, 0.0, length / 2)),)
    holes = [(-h - c, h + c, -h - c, h + c), (h + c, h + kx + c, -ky - c, ky + c)]
    return TwoPartAssembly(name=name, plug=plug, socket=rectilinear_socket(holes, depth),
                           depth=depth, plug_length=length, clearance=clearance)


def multi_pin(name: str, pins: tuple[tuple[float, float], ...], pin_side=0.006, depth=0.012,
              standoff=0.003, plate_height=0.01, clearance=0.0005) -> TwoPartAssembly:
    """Square pins under a plate: every pin must find its own hole at once.

    Pins are `depth + standoff` long, so the plate stays `standoff` above the socket
    at the goal and only the pins touch.
    """
    h, c = pin_side / 2, clearance
    pin_len = depth + standoff
    xs, ys = [p[0] for p in pins], [p[1] for p in pins]
    plate_half = ((max(xs) - min(xs)) / 2 + h + 0.004, (max(ys) - min(ys)) / 2 + h + 0.004, plate_height / 2)
    plate_center = ((max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2, pin_len + plate_height / 2)
    plug = tuple(s for p in pins for s in box_plug(name, (h, h), pin_len, center_xy=p))
    plug += (Box(half_size=plate_half, pos=plate_center),)
    holes = [(x - h - c, x + h + c, y - h - c, y + h + c) for x, y in pins]
    return TwoPartAssembly(name=name, plug=plug, socket=rectilinear_socket(holes, depth),
                           depth=depth, plug_length=pin_len + plate_height, clearance=clearance)
