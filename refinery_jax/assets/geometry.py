"""Collision primitives MJX supports, and their MJCF text.

Every part in this repository is a union of these shapes. MJX's JAX backend collides
boxes, capsules, spheres and small convex meshes with each other, but not cylinders
with boxes or meshes, so round plugs are capsules or convex prisms and sockets are
unions of boxes.

Units are metres; quaternions are (w, x, y, z) as in MuJoCo.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

Vec3 = tuple[float, float, float]
IDENTITY_QUAT = (1.0, 0.0, 0.0, 0.0)


@dataclasses.dataclass(frozen=True)
class Box:
    half_size: Vec3
    pos: Vec3 = (0.0, 0.0, 0.0)
    quat: tuple[float, float, float, float] = IDENTITY_QUAT


@dataclasses.dataclass(frozen=True)
class Capsule:
    """A capsule along its local z axis: `half_length` is the cylinder part only."""

    radius: float
    half_length: float
    pos: Vec3 = (0.0, 0.0, 0.0)
    quat: tuple[float, float, float, float] = IDENTITY_QUAT


@dataclasses.dataclass(frozen=True)
class ConvexMesh:
    """A convex polytope given by its vertices (MJCF computes the hull).

    Geoms that share a `name` share one mesh asset (and one MJX collision function), so
    repeated features such as gear teeth are one mesh placed at several `pos`/`quat`.
    """

    name: str
    vertices: tuple[Vec3, ...]
    pos: Vec3 = (0.0, 0.0, 0.0)
    quat: tuple[float, float, float, float] = IDENTITY_QUAT

    def __post_init__(self):
        if not 4 <= len(self.vertices) <= 64:
            raise ValueError(f"convex mesh {self.name!r} needs 4..64 vertices (MJX), got {len(self.vertices)}")


Shape = Box | Capsule | ConvexMesh


def rotate(quat, points: np.ndarray) -> np.ndarray:
    """Rotate points [..., 3] by a unit quaternion (w, x, y, z)."""
    w, x, y, z = quat
    r = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                  [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                  [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    return np.asarray(points, dtype=float) @ r.T


def yaw_quat(angle: float) -> tuple[float, float, float, float]:
    return (math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2))


def _fmt(values) -> str:
    return " ".join(f"{float(v):.7g}" for v in values)


def geom_xml(shape: Shape, name: str, attrs: str) -> str:
    """One `<geom>` element; `attrs` carries contact/material attributes."""
    if isinstance(shape, Box):
        body = f'type="box" size="{_fmt(shape.half_size)}" quat="{_fmt(shape.quat)}"'
    elif isinstance(shape, Capsule):
        body = f'type="capsule" size="{shape.radius:.7g} {shape.half_length:.7g}" quat="{_fmt(shape.quat)}"'
    elif isinstance(shape, ConvexMesh):
        body = f'type="mesh" mesh="{shape.name}"'
        if shape.quat != IDENTITY_QUAT:
            body += f' quat="{_fmt(shape.quat)}"'
    else:  # pragma: no cover - the Shape union is closed
        raise TypeError(f"unknown shape {shape!r}")
    return f'<geom name="{name}" {body} pos="{_fmt(shape.pos)}" {attrs}/>'


def mesh_asset_xml(shape: ConvexMesh) -> str:
    verts = _fmt(np.asarray(shape.vertices).ravel())
    return f'<mesh name="{shape.name}" vertex="{verts}"/>'


def shape_bounds(shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounds (lower, upper) of a shape in its parent frame.

    Rotated boxes and capsules are bounded by their circumscribed sphere, which is
    what placement and "fits in a 10 cm box" checks need (conservative).
    """
    pos = np.asarray(shape.pos, dtype=float)
    if isinstance(shape, ConvexMesh):
        v = rotate(shape.quat, np.asarray(shape.vertices, dtype=float)) + pos
        return v.min(0), v.max(0)
    if isinstance(shape, Box):
        if shape.quat == IDENTITY_QUAT:
            half = np.asarray(shape.half_size, dtype=float)
        else:
            half = np.full(3, np.linalg.norm(shape.half_size))
        return pos - half, pos + half
    if shape.quat == IDENTITY_QUAT:
        half = np.array([shape.radius, shape.radius, shape.radius + shape.half_length])
    else:
        half = np.full(3, shape.radius + shape.half_length)
    return pos - half, pos + half


def frustum(name: str, bottom_half: tuple[float, float], top_half: tuple[float, float],
            z0: float, z1: float) -> ConvexMesh:
    """A rectangular frustum between heights z0 (bottom) and z1 (top): a chamfered tip."""
    (bx, by), (tx, ty) = bottom_half, top_half
    verts = [(sx * bx, sy * by, z0) for sx in (-1, 1) for sy in (-1, 1)]
    verts += [(sx * tx, sy * ty, z1) for sx in (-1, 1) for sy in (-1, 1)]
    return ConvexMesh(name=name, vertices=tuple(verts))
