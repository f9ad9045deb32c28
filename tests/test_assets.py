"""Parts, sockets and scenes: geometry is what it claims, and every task compiles in MuJoCo."""

import mujoco
import numpy as np
import pytest

from refinery_jax.assets import parts, registry
from refinery_jax.assets.geometry import Box, Capsule, ConvexMesh
from refinery_jax.assets.scene import EMBODIMENTS, PhysicsConfig, check_actuation, scene_xml

TASKS = registry.task_names()


def _inside_box(point, box: Box) -> bool:
    """Is a point inside a (possibly yawed) box? Boxes here only ever rotate about z."""
    w, _, _, z = box.quat
    yaw = 2 * np.arctan2(z, w)
    c, s = np.cos(-yaw), np.sin(-yaw)
    p = np.asarray(point) - np.asarray(box.pos)
    local = np.array([c * p[0] - s * p[1], s * p[0] + c * p[1], p[2]])
    return bool(np.all(np.abs(local) <= np.asarray(box.half_size) + 1e-12))


def test_registry_has_at_least_ten_tasks_and_rejects_unknown_or_duplicate():
    assert len(TASKS) >= 10
    with pytest.raises(ValueError, match="unknown task"):
        registry.get_assembly("no_such_task")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_task(registry.DEFAULT_TASK, lambda n: parts.square_peg(n))


@pytest.mark.parametrize("task", TASKS)
def test_task_geometry_is_mjx_collidable_and_fits_a_10cm_box(task):
    a = registry.get_assembly(task)
    assert all(isinstance(s, Box) for s in a.socket), "sockets are unions of boxes"
    assert all(isinstance(s, (Box, Capsule, ConvexMesh)) for s in a.plug)
    assert np.all(a.extent() <= 0.1 + 1e-9), a.extent()
    assert 0.0001 - 1e-12 <= a.clearance <= 0.002


def test_rectilinear_socket_leaves_exactly_the_holes_open():
    depth = 0.01
    holes = [(-0.005, 0.005, -0.004, 0.004), (0.005, 0.008, -0.001, 0.001)]
    boxes = parts.rectilinear_socket(holes, depth, wall=0.01)
    walls, floor = boxes[:-1], boxes[-1]
    rng = np.random.default_rng(0)
    for _ in range(3000):
        p = rng.uniform([-0.015, -0.014, -depth + 1e-4], [0.018, 0.014, -1e-4])
        in_hole = any(h[0] < p[0] < h[1] and h[2] < p[1] < h[3] for h in holes)
        covered = any(_inside_box(p, b) for b in walls)
        assert covered != in_hole, f"point {p} in_hole={in_hole} covered={covered}"
    assert floor.pos[2] + floor.half_size[2] == pytest.approx(-depth)


def test_round_socket_ring_touches_the_circle_and_blocks_outside():
    radius, depth = 0.008, 0.01
    boxes = parts.round_socket(radius, depth, sides=12)[:-1]
    for angle in np.linspace(0, 2 * np.pi, 97):
        direction = np.array([np.cos(angle), np.sin(angle)])
        inside = np.append(0.999 * radius * direction, -depth / 2)
        wall = np.append((radius + 0.004) * direction, -depth / 2)
        assert not any(_inside_box(inside, b) for b in boxes)
        assert any(_inside_box(wall, b) for b in boxes)


def test_square_peg_clearance_is_per_side():
    a = parts.square_peg("s", side=0.016, clearance=0.0005)
    walls = a.socket[:-1]
    # each wall's face nearest the centre, whichever axis it faces along
    inner = min(max(abs(b.pos[0]) - b.half_size[0], abs(b.pos[1]) - b.half_size[1]) for b in walls)
    assert inner == pytest.approx(0.008 + 0.0005)


def test_bad_part_parameters_are_rejected():
    with pytest.raises(ValueError, match="chamfer"):
        parts.square_peg("x", side=0.004, chamfer=0.003)
    with pytest.raises(ValueError, match="depth"):
        parts.square_peg("x", depth=-0.01)
    with pytest.raises(ValueError, match="timeconst"):
        PhysicsConfig(timestep=0.01, contact_timeconst=0.01)


@pytest.mark.parametrize("embodiment", EMBODIMENTS)
@pytest.mark.parametrize("task", TASKS)
def test_scene_compiles_with_only_plug_socket_contacts(task, embodiment):
    m = mujoco.MjModel.from_xml_string(scene_xml(registry.get_assembly(task), embodiment, PhysicsConfig()))
    check_actuation(m)
    names = [m.geom(i).name for i in range(m.ngeom)]
    colliders = [n for i, n in enumerate(names) if m.geom_contype[i] or m.geom_conaffinity[i]]
    assert all(n.startswith(("plug_", "socket_")) for n in colliders), colliders
    # the plug collides with the socket and never with itself
    plug = [i for i, n in enumerate(names) if n.startswith("plug_")]
    socket = [i for i, n in enumerate(names) if n.startswith("socket_")]
    assert all(m.geom_contype[p] & m.geom_conaffinity[s] or m.geom_contype[s] & m.geom_conaffinity[p]
               for p in plug for s in socket)
    assert not any(m.geom_contype[p] & m.geom_conaffinity[q] for p in plug for q in plug)


def test_multipart_stages_stack_earlier_parts_into_the_socket():
    from refinery_jax.assets.multipart import get_multipart

    mp = get_multipart("two_pin_plate")
    assert mp.num_stages == 3
    base_boxes = len(mp.base)
    # merged: earlier parts become fixed socket geometry
    merged = [mp.stage(i, free_prior_parts=False) for i in range(3)]
    assert [len(s.socket) for s in merged] == [base_boxes, base_boxes + 1, base_boxes + 2]
    # stage 2's socket frame sits on the pin tops: pins reach z = 0 there, and the plate's goal is the base top
    pin_tops = max(b.pos[2] + b.half_size[2] for b in merged[2].socket[base_boxes:])
    assert pin_tops == pytest.approx(0.0, abs=1e-9)
    assert merged[2].goal_in_socket[2] == pytest.approx(-mp.parts[2].depth)
    # the default (and the registry's "NAME/i"): earlier parts are loose, at the same poses
    stages = [registry.get_assembly(f"two_pin_plate/{i}") for i in range(3)]
    assert [len(s.socket) for s in stages] == [base_boxes] * 3
    assert [len(s.free_parts) for s in stages] == [0, 1, 2]
    pin = stages[2].free_parts[1]
    assert pin.pos[2] + max(b.pos[2] + b.half_size[2] for b in pin.shapes) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="stages"):
        mp.stage(3)
    for stage in range(3):
        mujoco.MjModel.from_xml_string(scene_xml(stages[stage], "floating_hand", PhysicsConfig()))
