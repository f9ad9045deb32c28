"""Multi-part assemblies: an ordered list of parts inserted one after another.

A `MultiPartAssembly` is a base (upright, its top face at z = 0 of the base frame) and
parts in insertion order. Each part is given in its own frame (origin at its lowest
point, like a plug) with its goal pose in the base frame and the depth it travels while
engaged. Stage i inserts part i into the partial assembly made of the base and parts
0..i-1 at their goal poses; `stage(i)` expresses that as a `TwoPartAssembly`, so every
stage runs in the same environment as the 2-part tasks.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from refinery_jax.assets import parts
from refinery_jax.assets.geometry import Shape, Vec3
from refinery_jax.assets.parts import TwoPartAssembly, translate


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    shapes: tuple[Shape, ...]  # in the part frame: origin at the part's lowest point, +z up
    goal_pos: Vec3             # part-frame origin in the base frame when assembled
    depth: float               # engaged travel: from first contact with its socket to the goal
    length: float              # from the part's lowest point to where the gripper holds it


@dataclasses.dataclass(frozen=True)
class MultiPartAssembly:
    name: str
    base: tuple[Shape, ...]
    parts: tuple[Part, ...]    # insertion order
    clearance: float

    @property
    def num_stages(self) -> int:
        return len(self.parts)

    def stage(self, index: int) -> TwoPartAssembly:
        """Stage `index` as a 2-part task: part `index` into base + earlier parts (fixed)."""
        if not 0 <= index < self.num_stages:
            raise ValueError(f"{self.name} has stages 0..{self.num_stages - 1}, got {index}")
        part = self.parts[index]
        # the stage's socket frame: the goal pose raised by the insertion depth
        origin = np.asarray(part.goal_pos) + np.array([0.0, 0.0, part.depth])
        socket = [translate(s, -origin) for s in self.base]
        for earlier in self.parts[:index]:
            socket += [translate(s, np.asarray(earlier.goal_pos) - origin) for s in earlier.shapes]
        return TwoPartAssembly(name=f"{self.name}/{index}", plug=part.shapes, socket=tuple(socket),
                               depth=part.depth, plug_length=part.length, clearance=self.clearance)


def two_pin_plate(name: str = "two_pin_plate", clearance: float = 0.0005) -> MultiPartAssembly:
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


MULTIPART_ASSEMBLIES = {"two_pin_plate": two_pin_plate}


def get_multipart(name: str) -> MultiPartAssembly:
    if name not in MULTIPART_ASSEMBLIES:
        raise ValueError(f"unknown multi-part assembly {name!r}; registered: {', '.join(MULTIPART_ASSEMBLIES)}")
    return MULTIPART_ASSEMBLIES[name]()
