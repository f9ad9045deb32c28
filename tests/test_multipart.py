"""Multi-part assemblies: geometry within spec, stages as environments with loose earlier parts.

Geometry checks are plain numpy and MuJoCo compiles (fast). One stage (a plate slid over
four loose pegs) runs in MJX in CI, with its compiled functions shared by the module; the
scripted insertion of every stage of every assembly runs with -m slow.
"""

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from refinery_jax.assets import registry
from refinery_jax.assets.geometry import IDENTITY_QUAT, Box, Capsule, ConvexMesh, shape_bounds
from refinery_jax.assets.multipart import MULTIPART_ASSEMBLIES, get_multipart, multipart_names, stage_names
from refinery_jax.assets.parts import translate
from refinery_jax.assets.scene import EMBODIMENTS, PhysicsConfig, scene_xml
from refinery_jax.envs.assembly_env import LOOSE_PART_SINK, AssemblyEnv, EnvConfig
from refinery_jax.envs.rotations import quat_mul
from refinery_jax.envs.scripted import run_scripted_episode_metrics

EXTRA = ("two_pin_plate",)  # the small example that predates the spec (4 parts)
SPEC = tuple(n for n in multipart_names() if n not in EXTRA)
ALL_STAGES = [t for n in multipart_names() for t in stage_names(n)]
CI_STAGE = "plate_on_pegs/4"  # a plate slid over four loose pegs, two square and two round

PENETRATION_BOUND = 0.5e-3  # m, as for the 2-part tasks
DISTURBANCE_BOUND = 1.0e-3  # m: earlier parts move less than this while the next plug goes in gently
STILL_BOUND = 0.1e-3        # m: loose parts move less than this in 10 s with nothing touching them


def _box_volume_overlap(a: Box, b: Box) -> float:
    lo = np.maximum(np.subtract(a.pos, a.half_size), np.subtract(b.pos, b.half_size))
    hi = np.minimum(np.add(a.pos, a.half_size), np.add(b.pos, b.half_size))
    return float(np.prod(np.clip(hi - lo, 0.0, None)))


# ------------------------------------------------------------------ geometry (no JAX)


def test_at_least_five_assemblies_with_five_to_nine_parts_and_four_to_eight_stages():
    assert len(SPEC) >= 5
    for name in SPEC:
        mp = get_multipart(name)
        assert 5 <= mp.num_parts <= 9 and 4 <= mp.num_stages <= 8, (name, mp.num_parts, mp.num_stages)
        assert mp.num_parts == mp.num_stages + 1
    with pytest.raises(ValueError, match="unknown multi-part"):
        get_multipart("no_such_assembly")


@pytest.mark.parametrize("name", multipart_names())
def test_assembly_fits_a_10cm_box_upright_with_mjx_shapes_and_default_clearance(name):
    mp = get_multipart(name)
    assert np.all(mp.extent() <= 0.1 + 1e-9), mp.extent()
    assert mp.clearance == pytest.approx(0.0005)
    shapes = mp.assembled_shapes()
    assert all(isinstance(s, (Box, Capsule, ConvexMesh)) for s in shapes)
    assert all(len(s.vertices) <= 64 for s in shapes if isinstance(s, ConvexMesh))
    # the base stands at the origin: centred footprint, lowest of everything, top face at z = 0
    lo, hi = zip(*(shape_bounds(s) for s in mp.base))
    lo, hi = np.min(lo, axis=0), np.max(hi, axis=0)
    assert np.allclose((lo[:2] + hi[:2]) / 2, 0.0, atol=1e-9)
    assert lo[2] == pytest.approx(min(shape_bounds(s)[0][2] for s in shapes))
    assert any(abs(shape_bounds(s)[1][2]) < 1e-9 for s in mp.base)


@pytest.mark.parametrize("name", multipart_names())
def test_parts_rest_on_what_is_below_them_without_overlapping(name):
    """At its goal every part touches the base or an earlier part from above, and no two axis-aligned
    boxes of different parts overlap (yawed boxes, meshes and capsules are covered by the MJX runs)."""
    mp = get_multipart(name)
    placed = [("base", list(mp.base))] + [(p.name, [translate(s, p.goal_pos) for s in p.shapes]) for p in mp.parts]
    for k, (part_name, part_shapes) in enumerate(placed[1:], start=1):
        below = [s for _, shapes in placed[:k] for s in shapes]
        rests = False
        for s in part_shapes:
            s_lo, s_hi = shape_bounds(s)
            for t in below:
                t_lo, t_hi = shape_bounds(t)
                xy_overlap = np.all(np.minimum(s_hi[:2], t_hi[:2]) - np.maximum(s_lo[:2], t_lo[:2]) > 1e-6)
                rests |= bool(xy_overlap and abs(s_lo[2] - t_hi[2]) < 1e-9)
        assert rests, f"{name}: {part_name} does not rest on anything at its goal"
    boxes = [(owner, s) for owner, shapes in placed for s in shapes if isinstance(s, Box) and s.quat == IDENTITY_QUAT]
    for i, (owner_a, a) in enumerate(boxes):
        for owner_b, b in boxes[i + 1:]:
            if owner_a != owner_b:
                assert _box_volume_overlap(a, b) < 1e-12, f"{name}: {owner_a} overlaps {owner_b}"


@pytest.mark.parametrize("name", multipart_names())
def test_every_stage_is_a_registry_task_that_compiles_with_loose_earlier_parts(name):
    mp = get_multipart(name)
    for i, task in enumerate(stage_names(name)):
        stage = registry.get_assembly(task)
        assert stage.name == task and len(stage.free_parts) == i and stage.explicit_pairs
        assert [p.name for p in stage.free_parts] == [p.name for p in mp.parts[:i]]
        assert np.all(stage.extent() <= 0.1 + 1e-9)
        for embodiment in EMBODIMENTS:
            m = mujoco.MjModel.from_xml_string(scene_xml(stage, embodiment, PhysicsConfig()))
            free = [j for j in range(m.njnt) if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE]
            assert len(free) == i
            # loose parts come after the robot (whose dofs the actuators drive, in order)
            assert all(m.jnt_dofadr[j] >= m.nu for j in free)
            # only listed pairs collide, and they stay few (MJX checks every one at every step)
            assert not np.any(m.geom_contype | m.geom_conaffinity)
            floor = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "catch_floor")
            caught = int(np.sum(m.pair_geom1 == floor))  # one per loose-part geom (test below)
            assert caught == sum(len(p.shapes) for p in stage.free_parts)
            assert 0 < m.npair - caught <= 100, m.npair
            # aluminium parts of a few grams up to a few tens of grams
            for j in range(i):
                assert 1e-3 < m.body(f"prior{j}").mass[0] < 0.05
    with pytest.raises(ValueError, match="stages"):
        mp.stage(mp.num_stages)


def test_two_part_tasks_have_no_loose_parts_or_explicit_pairs():
    for task in registry.task_names():
        a = registry.get_assembly(task)
        assert a.free_parts == () and not a.explicit_pairs
        m = mujoco.MjModel.from_xml_string(scene_xml(a, "floating_hand", PhysicsConfig()))
        assert m.npair == 0 and m.nq == 6


def test_contact_pairs_keep_what_touches_and_drop_what_cannot():
    """plate_on_pegs/5 (the centre pin): the pin meets the plate and the base's centre hole; the
    pegs stand in the base; the plate rests on the pads, not on the base top 3 mm below it."""
    from refinery_jax.assets.scene import contact_pairs

    stage = registry.get_assembly("plate_on_pegs/5")
    pairs = {frozenset(p) for p in contact_pairs(stage)}
    names = lambda prefix, n: [f"{prefix}_{i}" for i in range(n)]  # noqa: E731
    plate = len(stage.free_parts) - 1
    plate_geoms = names(f"prior{plate}", len(stage.free_parts[plate].shapes))
    socket_geoms = names("socket", len(stage.socket))
    pads = socket_geoms[-4:]
    assert any(frozenset(("plug_0", g)) in pairs for g in plate_geoms)
    assert any(frozenset(("plug_0", g)) in pairs for g in socket_geoms[:-5])  # the centre hole's walls
    for j in range(plate):  # each peg against the base
        assert any(frozenset((f"prior{j}_0", g)) in pairs for g in socket_geoms)
    plate_on = {g for pair in pairs for g in pair if pair & set(plate_geoms)} & set(socket_geoms)
    assert plate_on and plate_on <= set(pads), plate_on


# ------------------------------------------------------------------ one stage on each backend (CI)


@pytest.fixture(scope="module")
def stage_env():
    env = AssemblyEnv(EnvConfig(task=CI_STAGE))
    return env, jax.jit(env.reset)


# MJX's compile of this stage takes about a minute on CPU: its case runs in the slow suite (as does
# every stage's MJX insertion below); the default suite checks the same on the C backend
@pytest.fixture(scope="module", params=["c", pytest.param("mjx", marks=pytest.mark.slow)])
def scripted(request):
    """Two scripted insertions from nominal and two hold episodes (hand still above), one batch."""
    env = AssemblyEnv(EnvConfig(task=CI_STAGE, backend=request.param))
    nominal = jnp.array([0.0, 0.0, env.assembly.depth + 0.015])
    inits = jnp.stack([nominal, nominal, jnp.asarray(env.init_high), jnp.asarray(env.init_high)])
    hold = jnp.array([False, False, True, True])
    keys = jax.random.split(jax.random.key(0), 4)
    run = jax.jit(jax.vmap(lambda k, i, h: run_scripted_episode_metrics(env, k, i, hold=h)))
    return {**jax.device_get(run(keys, inits, hold)), "backend": request.param}


def test_reset_places_loose_parts_at_their_assembled_poses_in_the_random_socket_frame(stage_env):
    env, reset = stage_env
    for seed in range(2):
        state = reset(jax.random.key(seed), jnp.asarray(env.init_high))
        moved = np.asarray(env.prior_part_displacements(state.physics))
        assert moved.shape == (len(env.assembly.free_parts),)
        # only the starting sink, (j + 1) x LOOSE_PART_SINK
        assert np.all(moved <= LOOSE_PART_SINK * np.arange(1, len(moved) + 1) + 1e-6), moved
        # and they turn with the socket: each part's yaw is the socket's
        socket_quat = np.asarray(state.physics.socket_quat)
        for j, adr in enumerate(env._free_qposadr):  # noqa: SLF001
            assert np.allclose(np.asarray(state.physics.qpos[adr + 3: adr + 7]), socket_quat, atol=1e-6)


def test_displacement_measures_sliding_and_tilting(stage_env):
    env, reset = stage_env
    state = reset(jax.random.key(0), jnp.asarray(env.init_high))
    adr = int(env._free_qposadr[0])  # noqa: SLF001
    slid = state.physics.replace(qpos=state.physics.qpos.at[adr].add(0.002))
    assert float(env.prior_part_displacements(slid)[0]) == pytest.approx(0.002, abs=2e-5)
    # a 0.1 rad tilt about x moves the top corners of a 24 mm tall peg by about 2.4 mm
    tilted = quat_mul(state.physics.qpos[adr + 3: adr + 7], jnp.array([np.cos(0.05), np.sin(0.05), 0.0, 0.0]))
    tipped = state.physics.replace(qpos=state.physics.qpos.at[adr + 3: adr + 7].set(tilted))
    assert 0.002 < float(env.prior_part_displacements(tipped)[0]) < 0.003
    assert float(env.prior_part_displacement(slid)) >= 0.002 - 2e-5


def test_success_needs_every_loose_part_within_the_tolerance(stage_env):
    """The plug at its goal is a success only while every loose part is within
    `loose_part_tolerance` (5 mm) of its assembled pose: a knocked-out part fails the stage."""
    env, reset = stage_env
    state = reset(jax.random.key(0), jnp.zeros(3))  # the tip at its goal
    assert bool(state.success) and env.config.loose_part_tolerance == 0.005
    adr = int(env._free_qposadr[0])  # noqa: SLF001
    for shift, expected in ((0.003, True), (0.006, False)):
        moved = state.physics.replace(qpos=state.physics.qpos.at[adr].add(shift))
        again = jax.jit(env.advance_clock)(state.replace(physics=moved), 0)
        assert bool(again.success) == expected, shift


def test_a_knocked_out_part_lands_instead_of_falling_forever(stage_env):
    """A loose part pushed off the assembly (15 cm sideways: nothing it has a contact pair with
    is below it) lands on the catch floor. Before the floor it fell freely for the rest of the
    episode (measured: 8.75 m after 20 control steps, 1/2 g t²): the "launched > 1 m" parts of
    the keyed_bridge chained table."""
    from refinery_jax.assets.scene import CATCH_FLOOR_Z

    env, reset = stage_env
    state = reset(jax.random.key(0), jnp.asarray(env.init_high))
    adr = int(env._free_qposadr[0])  # noqa: SLF001
    state = state.replace(physics=env.physics.at_rest(state.physics.replace(qpos=state.physics.qpos.at[adr].add(0.15))))
    step = jax.jit(env.step)
    for _ in range(20):  # 1.33 s, the hand holding still above the socket
        state = step(state, jnp.zeros(env.action_size))
    z = float(state.physics.qpos[adr + 2])
    assert not bool(state.terminated)
    assert CATCH_FLOOR_Z - 0.005 < z < CATCH_FLOOR_Z + 0.02, z  # resting on the floor
    assert float(env.prior_part_displacements(state.physics)[0]) < 0.5


def test_scripted_insertion_succeeds_over_loose_parts_without_disturbing_them(scripted):
    assert np.all(scripted["success"][:2]), scripted["success"]
    if scripted["backend"] == "mjx":  # penetration is read from MJX's contacts
        assert np.max(scripted["penetration"][:2]) < PENETRATION_BOUND
    assert np.max(scripted["prior_displacement"][:2]) < DISTURBANCE_BOUND, scripted["prior_displacement"]


def test_loose_parts_stay_still_with_nothing_touching_them(scripted):
    assert not np.any(scripted["success"][2:])  # the hand did hold still, above the socket
    assert np.max(scripted["prior_displacement"][2:]) < STILL_BOUND, scripted["prior_displacement"]


def test_two_part_env_reports_no_displacement():
    env = AssemblyEnv(EnvConfig(task="square_peg"))
    physics = env.reset(jax.random.key(0), jnp.asarray(env.init_high)).physics
    assert env.prior_part_displacements(physics).shape == (0,)
    assert float(env.prior_part_displacement(physics)) == 0.0


# ------------------------------------------------------------------ every stage (slow)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["c", "mjx"])
@pytest.mark.parametrize("task", ALL_STAGES)
def test_every_stage_scripted_insertion_succeeds_from_nominal(task, backend):
    env = AssemblyEnv(EnvConfig(task=task, backend=backend))
    nominal = jnp.array([0.0, 0.0, env.assembly.depth + 0.015])
    keys = jax.random.split(jax.random.key(0), 2)
    out = jax.jit(jax.vmap(lambda k, i: run_scripted_episode_metrics(env, k, i)))(keys, jnp.tile(nominal, (2, 1)))
    assert bool(jnp.all(out["success"])), out["success"]
    if backend == "mjx":
        assert float(jnp.max(out["penetration"])) < PENETRATION_BOUND
    assert float(jnp.max(out["prior_displacement"])) < DISTURBANCE_BOUND, out["prior_displacement"]


def test_registry_lists_the_multipart_assemblies():
    assert set(MULTIPART_ASSEMBLIES) == set(multipart_names())
    with pytest.raises(ValueError, match="ASSEMBLY/i"):
        registry.get_assembly("peg_tower/x")


# ------------------------------------------------------------------ a stage scored against the part it goes into


def test_mates_are_earlier_parts_and_a_stack_mates_with_the_block_below():
    for name in multipart_names():
        assembly = get_multipart(name)
        for index, part in enumerate(assembly.parts):
            assert part.mate is None or 0 <= part.mate < index, (name, part.name)
            assert assembly.stage(index).mate == part.mate
            assert assembly.stage(index, free_prior_parts=False).mate is None  # merged into the fixed socket
    tower = get_multipart("peg_tower")
    assert [p.mate for p in tower.parts] == [None, 0, 1, 2, 3]


@pytest.fixture(scope="module")
def tower_stage():
    env = AssemblyEnv(EnvConfig(task="peg_tower/2"))  # block_2 into block_1, which sits on block_0
    state = jax.jit(env.reset)(jax.random.key(3), jnp.zeros(3))  # the tip at its goal
    return env, state, jax.jit(env.advance_clock)


def test_goal_follows_the_mating_part_rigidly(tower_stage):
    """The goal moves with block_1's rigid motion from its assembled pose: a shift moves it by
    the shift, a yaw of 90° about the part's origin turns the goal's offset from that origin."""
    env, state, _ = tower_stage
    d, info = state.physics, state.info
    adr = int(env._free_qposadr[1])  # noqa: SLF001
    goal, goal_quat = (np.asarray(x) for x in env.goal_pose(d, info))
    # at reset (block_1 sunk by 2 x LOOSE_PART_SINK) the goal is the episode's
    assert np.allclose(goal, np.asarray(info.goal_pos), atol=3 * LOOSE_PART_SINK)
    shift = np.array([0.0008, -0.0003, 0.0002])
    moved = d.replace(qpos=d.qpos.at[adr: adr + 3].add(jnp.asarray(shift)))
    assert np.allclose(np.asarray(env.goal_pose(moved, info)[0]), goal + shift, atol=1e-7)
    yaw = jnp.array([np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)])  # 90° about world z
    part_pos, part_quat = np.asarray(d.qpos[adr: adr + 3]), d.qpos[adr + 3: adr + 7]
    turned = d.replace(qpos=d.qpos.at[adr + 3: adr + 7].set(quat_mul(yaw, part_quat)))
    offset = goal - part_pos
    expected = part_pos + np.array([-offset[1], offset[0], offset[2]])
    turned_goal, turned_quat = env.goal_pose(turned, info)
    assert np.allclose(np.asarray(turned_goal), expected, atol=1e-7)
    assert np.allclose(np.asarray(turned_quat), np.asarray(quat_mul(yaw, jnp.asarray(goal_quat))), atol=1e-6)


def test_a_plug_in_a_shifted_hole_succeeds_and_one_at_the_old_goal_fails(tower_stage):
    """block_1 shifted 1.5 mm (within its clearance stack-up and the 5 mm tolerance): the plug
    moved with it succeeds; the plug left at the assembled goal is 1.5 mm out of the hole."""
    env, state, advance = tower_stage
    assert bool(state.success)
    d, adr = state.physics, int(env._free_qposadr[1])  # noqa: SLF001
    shift = jnp.array([0.0015, 0.0, 0.0])
    hole_moved = d.replace(qpos=d.qpos.at[adr: adr + 3].add(shift))
    assert not bool(advance(state.replace(physics=hole_moved), 0).success)
    both_moved = hole_moved.replace(tip_pos=d.tip_pos + shift)
    assert bool(advance(state.replace(physics=both_moved), 0).success)
    assert float(env.prior_part_displacement(both_moved)) == pytest.approx(0.0015, abs=2e-5)
