"""The insertion environment: pure `reset(key, init)` and `step(state, action)`.

An initial condition is an explicit array `init = θ` (3,): the plug tip's offset from
its goal pose, in the socket (goal) frame (with `theta_yaw`, (4,): and the plug's yaw error). Everything else that varies between
episodes (socket pose, the plug's yaw error, observation and action-frame noise) is
drawn from `key`, so the success rate J(θ) is an expectation over those nuisances.
A reset distribution is any function `key -> init`; see `samplers.py`.

Timing follows AutoMate: 15 Hz policy, 5 s episodes (75 steps). Episodes end only by
time limit (`truncated`) or by a diverged simulation (`terminated`, state restored);
success is read at every step and counted at the last one.

Multi-part stages ("ASSEMBLY/i") run in this same class: the parts assembled in earlier
stages are free bodies, placed at reset at their assembled poses relative to the
episode's randomised socket pose; `prior_part_displacement` says how far the stage has
pushed them, and success also needs every loose part within `loose_part_tolerance` (5 mm)
of its assembled pose; a stage whose part goes into one loose part (`assembly.mate`) is
scored against that part's current pose (`goal_pose`). Observation and action are those of
the 2-part tasks. For chained
sequences (`refinery.sequence`), `reset(key, init, start=StageStart(...))` takes the socket
pose and the loose parts' world poses instead (the previous stage's physical end state);
without `start` the code path is the one above.

Physics is a backend (`envs.physics`): MJX, or C MuJoCo behind a callback (the default on
CPU). Everything here (reset, observation, reward, success) is JAX and reads the
simulation only through `Physics`, the same on both.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct

from refinery_jax.assets.registry import DEFAULT_TASK, get_assembly
from refinery_jax.assets.scene import PhysicsConfig, check_actuation, embodiment_spec, free_part_body_name, scene_xml
from refinery_jax.envs import control
from refinery_jax.envs.control import ControlConfig
from refinery_jax.envs.kinematics import chain_from_model, fingertip_pose, fingertip_pose_and_jacobian, solve_ik
from refinery_jax.envs.physics import Physics, PhysicsSpec, make_backend, resolve_backend
from refinery_jax.envs.rotations import canonical, quat_mul, quat_yaw, rotate, yaw_quat

# Loose part j (0-based, insertion order) starts this much times (j + 1) below its assembled pose,
# so that every resting contact penetrates from the first step: MJX's box-box collision ignores
# penetrations under 1 um, and a part placed exactly touching would free-fall for a step.
# Parts rest only on the base and on parts inserted before them, so each support penetrates
# at least this much. See scene.LOOSE_PART_SOLIMP.
LOOSE_PART_SINK = 5e-6  # m

ACTION_SIZE = 6
MAX_JOINTS = 7  # observation pads joint vectors to the Franka's 7 so embodiments share spaces
# the policy observation, in order (name, size); the critic's adds CRITIC_EXTRA after it
POLICY_OBS = (("joint_pos", MAX_JOINTS), ("fingertip_pos", 3), ("fingertip_quat", 4), ("goal_pos", 3),
              ("goal_quat", 4), ("goal_minus_fingertip", 3), ("prev_action", ACTION_SIZE), ("progress", 1))
CRITIC_EXTRA = (("joint_vel", MAX_JOINTS), ("fingertip_vel", 6), ("tip_minus_true_goal", 3),
                ("fingertip_quat", 4))
POLICY_OBS_SIZE = sum(n for _, n in POLICY_OBS)                    # 31
CRITIC_OBS_SIZE = POLICY_OBS_SIZE + sum(n for _, n in CRITIC_EXTRA)  # 51


def observation_slice(name: str) -> slice:
    """Where a named part of the policy observation lies (POLICY_OBS)."""
    start = 0
    for part, size in POLICY_OBS:
        if part == name:
            return slice(start, start + size)
        start += size
    raise KeyError(f"no {name!r} in the policy observation; parts: {[p for p, _ in POLICY_OBS]}")

DEFAULT_REWARD_WEIGHTS = (
    ("keypoint_baseline", 1.0),
    ("keypoint_coarse", 1.0),
    ("keypoint_fine", 1.0),
    ("engaged", 0.0),
    ("success", 1.0),
)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Static environment configuration: changing any field builds a new model/compile."""

    task: str = DEFAULT_TASK
    embodiment: str = "floating_hand"
    backend: str = "auto"         # physics: "mjx", "c" (C MuJoCo) or "auto" (c on CPU, mjx on GPU/TPU)
    physics: PhysicsConfig = PhysicsConfig()
    control: ControlConfig = ControlConfig()
    control_hz: float = 15.0
    episode_seconds: float = 5.0
    # θ box (the reset distribution's support): tip offset from the goal, socket frame (m)
    init_xy: float = 0.01                         # ±x, ±y
    init_height: tuple[float, float] = (0.01, 0.02)  # tip height above the socket's top face
    # θ_yaw: the plug's yaw error (±init_yaw_noise) is a 4th coordinate of θ, chosen like the
    # position (the paper's GMM input includes orientation), instead of a nuisance drawn from the key
    theta_yaw: bool = False
    # nuisances drawn from the key at each reset
    init_yaw_noise: float = math.radians(5.0)     # plug yaw error (±rad, uniform)
    socket_pos_noise: tuple[float, float, float] = (0.05, 0.05, 0.05)
    socket_yaw_range: tuple[float, float] = (0.0, math.radians(10.0))
    obs_pos_noise: float = 0.002                  # per-episode goal-position noise (±m)
    obs_yaw_noise: float = math.radians(10.0)     # per-episode goal-yaw noise (±rad)
    action_frame_noise: float = 0.001             # per-episode target bias, N(0, σ) m
    # success: tip within this fraction of the depth of the goal, and keypoints aligned
    success_depth_fraction: float = 0.1
    success_keypoint_fraction: float = 0.15
    # multi-part stages: success also needs every loose part within this of its assembled pose
    # (largest bounding-box corner displacement, m; `prior_part_displacement`). A part seated in
    # its 0.5 mm-clearance socket moves well under 5 mm; a tipped or knocked-out one does not.
    loose_part_tolerance: float = 0.005
    reward_weights: tuple[tuple[str, float], ...] = DEFAULT_REWARD_WEIGHTS
    num_keypoints: int = 4

    def __post_init__(self):
        steps = self.control_hz * self.episode_seconds
        substeps = 1.0 / (self.control_hz * self.physics.timestep)
        if abs(substeps - round(substeps)) > 1e-6 or round(substeps) < 1:
            raise ValueError(f"1/(control_hz*timestep) = {substeps:.4f} must be a positive integer")
        if abs(steps - round(steps)) > 1e-6:
            raise ValueError(f"control_hz * episode_seconds = {steps} must be an integer")
        if self.theta_yaw and self.init_yaw_noise <= 0:  # a zero-width θ axis: the GP and GMM normalise by it
            raise ValueError("theta_yaw needs init_yaw_noise > 0 (the yaw range of θ)")
        if self.loose_part_tolerance <= 0:
            raise ValueError(f"loose_part_tolerance must be positive, got {self.loose_part_tolerance}")
        if self.init_height[0] > self.init_height[1] or self.init_xy < 0:
            raise ValueError(f"bad init box: init_xy={self.init_xy}, init_height={self.init_height}")

    @property
    def decimation(self) -> int:
        return round(1.0 / (self.control_hz * self.physics.timestep))

    @property
    def episode_steps(self) -> int:
        return round(self.control_hz * self.episode_seconds)


@struct.dataclass
class EpisodeInfo:
    """Per-episode quantities fixed at reset, plus the step counter and action memory."""

    step: jax.Array            # [] int
    init: jax.Array            # [3] (or [4]) θ this episode started from: the plug tip's offset from the goal
                               #     (socket frame; and the plug's yaw) that IK achieved, which success models learn from
    ik_residual: jax.Array     # [] m: distance of the tip reached from the tip asked for (θ's position part; 0 up
                               #     to rounding for the floating hand)
    goal_pos: jax.Array        # [3] true plug-tip goal position (world)
    goal_quat: jax.Array       # [4] true goal orientation (socket yaw)
    obs_goal_pos: jax.Array    # [3] noisy fingertip-goal position the policy sees
    obs_goal_quat: jax.Array   # [4] noisy goal orientation the policy sees
    frame_noise: jax.Array     # [3] action-frame bias
    prev_action: jax.Array     # [6] smoothed action


@struct.dataclass
class StageStart:
    """Where a chained stage starts: the socket pose and the loose parts' world poses.

    Replaces the socket pose the key would draw and the loose parts' assembled poses, so a
    stage can start from the previous stage's physical end state (`refinery.sequence`).
    """

    socket_pos: jax.Array      # [3] world position of the socket body
    socket_quat: jax.Array     # [4] its orientation
    part_pos: jax.Array        # [k, 3] loose parts' frame origins (world), insertion order
    part_quat: jax.Array       # [k, 4] their orientations


@struct.dataclass
class EnvState:
    physics: Physics
    obs: jax.Array             # [31] policy observation
    critic_obs: jax.Array      # [51] privileged observation
    reward: jax.Array          # []
    terms: dict                # named reward terms (unweighted), each []
    success: jax.Array         # [] bool, success at this step
    terminated: jax.Array      # [] bool (divergence)
    truncated: jax.Array       # [] bool (time limit)
    info: EpisodeInfo

    @property
    def done(self) -> jax.Array:
        return self.terminated | self.truncated


def combine_reward(terms: dict, weights: dict) -> jax.Array:
    """Weighted sum of named reward terms; weights may be traced (vmappable)."""
    return sum(weights[name] * terms[name] for name in weights)


def _squash(x, a, b):
    """Factory's keypoint squashing 1 / (e^{ax} + b + e^{-ax}); peaks at 1/(2+b) for x = 0."""
    return 1.0 / (jnp.exp(a * x) + b + jnp.exp(-a * x))


class AssemblyEnv:
    """One 2-part insertion task. Construct once per static config; methods are pure."""

    def __init__(self, config: EnvConfig = EnvConfig()):
        self.config = config
        self.assembly = get_assembly(config.task)
        self.spec = embodiment_spec(config.embodiment)
        self.backend_name = resolve_backend(config.backend)
        self.xml = scene_xml(self.assembly, config.embodiment, config.physics)
        self.mj_model = mujoco.MjModel.from_xml_string(self.xml)
        check_actuation(self.mj_model)
        self.fingertip_body = self.mj_model.body("fingertip").id
        self._socket_mocap = int(self.mj_model.body("socket").mocapid[0])
        self.physics = make_backend(self.backend_name, PhysicsSpec(
            mj_model=self.mj_model, xml=self.xml, fingertip_body=self.fingertip_body, socket_mocap=self._socket_mocap,
            num_dofs=self.spec.num_dofs, home_qpos=np.asarray(self.spec.home_qpos),
            torque_limits=np.asarray(self.spec.torque_limits), control=config.control, decimation=config.decimation))
        self.chain = chain_from_model(self.mj_model, self.fingertip_body, self.spec.num_dofs)
        self._qpos0 = jnp.asarray(self.mj_model.qpos0, jnp.float32)
        # loose parts (earlier stages of a multi-part assembly): free joints after the robot's dofs
        free = self.assembly.free_parts
        self._free_qposadr = np.array([self.mj_model.joint(f"{free_part_body_name(j)}_free").qposadr[0]
                                       for j in range(len(free))], dtype=np.int32)
        self._free_pos = jnp.asarray(np.array([p.pos for p in free], dtype=np.float32).reshape(-1, 3))
        # the corners of each part's bounding box (part frame): displacement is measured on them
        corners = [np.array([[(hi if (k >> a) & 1 else lo)[a] for a in range(3)] for k in range(8)])
                   for lo, hi in (p.bounds() for p in free)]
        self._free_corners = jnp.asarray(np.array(corners, dtype=np.float32).reshape(-1, 8, 3))
        self._n = self.spec.num_dofs
        self._home = jnp.asarray(self.spec.home_qpos, jnp.float32)
        self._weights = dict(config.reward_weights)
        a = self.assembly
        # keypoints along the plug axis, tip to grasp, in the plug frame
        self._keypoints = jnp.stack([jnp.zeros(config.num_keypoints), jnp.zeros(config.num_keypoints),
                                     jnp.linspace(0.0, a.plug_length, config.num_keypoints)], axis=-1)

    # ------------------------------------------------------------------ spaces

    @property
    def theta_size(self) -> int:
        """3 (tip offset x, y, z) or 4 (and the plug's yaw error, rad) with `theta_yaw`."""
        return 4 if self.config.theta_yaw else 3

    @property
    def init_low(self) -> np.ndarray:
        c, d = self.config, self.assembly.depth
        return np.array([-c.init_xy, -c.init_xy, d + c.init_height[0], -c.init_yaw_noise][: self.theta_size],
                        dtype=np.float32)

    @property
    def init_high(self) -> np.ndarray:
        c, d = self.config, self.assembly.depth
        return np.array([c.init_xy, c.init_xy, d + c.init_height[1], c.init_yaw_noise][: self.theta_size],
                        dtype=np.float32)

    observation_size = POLICY_OBS_SIZE
    critic_observation_size = CRITIC_OBS_SIZE
    action_size = ACTION_SIZE

    # ------------------------------------------------------------------ reset

    def reset(self, key: jax.Array, init: jax.Array, start: StageStart | None = None) -> EnvState:
        """Start an episode with the plug tip at goal + θ (socket frame). init: [3]. The state's
        `info.init` is the θ reached (IK may miss), `info.ik_residual` how far it missed.

        start: a chained stage's socket pose and loose-part poses (placed exactly as given);
        None (the default) draws the socket pose from `key` and places loose parts assembled.
        """
        if init.shape != (self.theta_size,):
            raise ValueError(f"init must have shape ({self.theta_size},) (plug-tip offset from the goal"
                             f"{', plug yaw' if self.config.theta_yaw else ''}), got {init.shape}")
        c = self.config
        k_sock, k_syaw, k_yaw, k_obs_p, k_obs_y, k_frame = jax.random.split(key, 6)
        if start is None:
            socket_pos = jnp.asarray(self.mj_model.body("socket").pos) + jax.random.uniform(
                k_sock, (3,), minval=-1.0, maxval=1.0) * jnp.asarray(c.socket_pos_noise)
            socket_quat = yaw_quat(jax.random.uniform(k_syaw, (), minval=c.socket_yaw_range[0],
                                                      maxval=c.socket_yaw_range[1]))
        else:
            k = len(self._free_qposadr)
            if start.part_pos.shape != (k, 3) or start.part_quat.shape != (k, 4):
                raise ValueError(f"{self.config.task} has {k} loose part(s): start needs part_pos [{k}, 3] and "
                                 f"part_quat [{k}, 4], got {start.part_pos.shape} and {start.part_quat.shape}")
            socket_pos, socket_quat = start.socket_pos, start.socket_quat
        goal_pos = socket_pos + rotate(socket_quat, jnp.asarray(self.assembly.goal_in_socket, jnp.float32))
        goal_quat = socket_quat

        if c.theta_yaw:
            plug_yaw = init[3]
        else:
            plug_yaw = jax.random.uniform(k_yaw, (), minval=-c.init_yaw_noise, maxval=c.init_yaw_noise)
        start_quat = quat_mul(socket_quat, yaw_quat(plug_yaw))
        tip = goal_pos + rotate(socket_quat, init[:3])
        fingertip = tip + jnp.array([0.0, 0.0, self.assembly.plug_length])

        qpos = self._qpos0
        if start is not None:
            qpos = self._set_free_parts(qpos, start.part_pos, start.part_quat)
        elif len(self._free_qposadr):
            qpos = self._place_free_parts(qpos, socket_pos, socket_quat)
        q = solve_ik(self.chain, fingertip, start_quat, self._home)
        tip_pos, tip_quat = fingertip_pose(self.chain, q)
        physics = self.physics.init(qpos.at[: self._n].set(q), socket_pos, socket_quat, tip_pos, tip_quat)
        # the θ the episode really starts from: IK can miss the requested pose (an arm's reach, joint limits)
        socket_inverse = socket_quat * jnp.array([1.0, -1.0, -1.0, -1.0])
        achieved = rotate(socket_inverse, self.plug_tip(physics) - goal_pos)
        if c.theta_yaw:
            achieved = jnp.append(achieved, quat_yaw(quat_mul(socket_inverse, tip_quat)))

        obs_pos_noise = jax.random.uniform(k_obs_p, (3,), minval=-c.obs_pos_noise, maxval=c.obs_pos_noise)
        obs_yaw_noise = jax.random.uniform(k_obs_y, (), minval=-c.obs_yaw_noise, maxval=c.obs_yaw_noise)
        info = EpisodeInfo(
            step=jnp.zeros((), jnp.int32),
            init=achieved,
            ik_residual=jnp.linalg.norm(achieved[:3] - init[:3]),
            goal_pos=goal_pos,
            goal_quat=goal_quat,
            obs_goal_pos=goal_pos + jnp.array([0.0, 0.0, self.assembly.plug_length]) + obs_pos_noise,
            obs_goal_quat=canonical(quat_mul(yaw_quat(obs_yaw_noise), goal_quat)),
            frame_noise=c.action_frame_noise * jax.random.normal(k_frame, (3,)),
            prev_action=jnp.zeros(ACTION_SIZE),
        )
        return self._observe(physics, info, terminated=jnp.zeros((), bool))

    def _assembled_poses(self, socket_pos, socket_quat):
        """World positions [k, 3] of the loose parts' frames when assembled (their yaw is the socket's)."""
        return socket_pos + jax.vmap(lambda p: rotate(socket_quat, p))(self._free_pos)

    def _place_free_parts(self, qpos, socket_pos, socket_quat):
        pos = self._assembled_poses(socket_pos, socket_quat)
        for j, adr in enumerate(self._free_qposadr):
            sunk = pos[j] - jnp.array([0.0, 0.0, (j + 1) * LOOSE_PART_SINK])
            qpos = qpos.at[adr: adr + 3].set(sunk).at[adr + 3: adr + 7].set(socket_quat)
        return qpos

    def _set_free_parts(self, qpos, part_pos, part_quat):
        for j, adr in enumerate(self._free_qposadr):
            qpos = qpos.at[adr: adr + 3].set(part_pos[j]).at[adr + 3: adr + 7].set(part_quat[j])
        return qpos

    def assembled_start(self, socket_pos: jax.Array, socket_quat: jax.Array) -> StageStart:
        """A `StageStart` with every loose part exactly at its assembled pose (no sink)."""
        pos = self._assembled_poses(socket_pos, socket_quat).reshape(-1, 3)
        return StageStart(socket_pos=socket_pos, socket_quat=socket_quat, part_pos=pos,
                          part_quat=jnp.broadcast_to(socket_quat, (pos.shape[0], 4)))

    def socket_pose(self, d: Physics) -> tuple[jax.Array, jax.Array]:
        """(position [3], quaternion [4]) of the socket this episode."""
        return d.socket_pos, d.socket_quat

    def loose_part_poses(self, d: Physics) -> tuple[jax.Array, jax.Array]:
        """World (positions [k, 3], unit quaternions [k, 4]) of the loose parts, insertion order."""
        if not len(self._free_qposadr):
            return jnp.zeros((0, 3)), jnp.zeros((0, 4))
        pos = jnp.stack([d.qpos[adr: adr + 3] for adr in self._free_qposadr])
        quat = jnp.stack([d.qpos[adr + 3: adr + 7] for adr in self._free_qposadr])
        return pos, quat / jnp.linalg.norm(quat, axis=-1, keepdims=True)

    def prior_part_displacements(self, d: Physics) -> jax.Array:
        """How far each loose part is from its assembled pose: [k] metres.

        The largest displacement of the corners of the part's bounding box, so tilting
        counts as well as sliding. Zero-length for tasks without loose parts.
        """
        if not len(self._free_qposadr):
            return jnp.zeros((0,))
        socket_pos, socket_quat = d.socket_pos, d.socket_quat
        goal = self._assembled_poses(socket_pos, socket_quat)

        def one(j, adr):
            pos, quat = d.qpos[adr: adr + 3], d.qpos[adr + 3: adr + 7]
            quat = quat / jnp.linalg.norm(quat)
            now = pos + jax.vmap(lambda c: rotate(quat, c))(self._free_corners[j])
            then = goal[j] + jax.vmap(lambda c: rotate(socket_quat, c))(self._free_corners[j])
            return jnp.max(jnp.linalg.norm(now - then, axis=-1))

        return jnp.stack([one(j, int(adr)) for j, adr in enumerate(self._free_qposadr)])

    def prior_part_displacement(self, d: Physics) -> jax.Array:
        """The largest displacement of any loose part from its assembled pose: [] metres (0 if none)."""
        return jnp.max(self.prior_part_displacements(d), initial=0.0)

    # ------------------------------------------------------------------ step

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """One 15 Hz control step: action [6] in [-1, 1] (x, y, z, roll, pitch, yaw)."""
        info = state.info
        fingertip_goal = info.goal_pos + jnp.array([0.0, 0.0, self.assembly.plug_length])
        smoothed, pos_target, quat_target = control.smooth_and_target(
            action, info.prev_action, state.physics.tip_pos, state.physics.tip_quat, fingertip_goal, info.frame_noise,
            self.config.control)

        physics, failed = self.physics.step(state.physics, pos_target, quat_target)
        diverged = failed | self._diverged(physics, info)
        # never propagate a blown-up simulation: fall back to the previous state, at rest and
        # scrubbed of non-finite values, and end the episode so the auto-reset restarts it
        fallback = self.physics.at_rest(state.physics)
        physics = jax.tree.map(lambda new, old: jnp.where(diverged, old, new), physics, fallback)
        info = info.replace(step=info.step + 1, prev_action=smoothed)
        return self._observe(physics, info, terminated=diverged)

    def track(self, physics: Physics, pos_target: jax.Array, quat_target: jax.Array) -> Physics:
        """One control period of physics with the impedance controller on a fingertip target."""
        return self.physics.step(physics, pos_target, quat_target)[0]

    def _diverged(self, d: Physics, info: EpisodeInfo) -> jax.Array:
        finite = jnp.all(jnp.isfinite(d.qpos)) & jnp.all(jnp.isfinite(d.qvel))
        fast = jnp.max(jnp.abs(d.qvel)) > 1e3
        far = jnp.linalg.norm(d.tip_pos - info.goal_pos) > 1.0
        return ~finite | fast | far

    # ------------------------------------------------------------------ observation, reward, success

    def plug_tip(self, d: Physics) -> jax.Array:
        return d.tip_pos + rotate(d.tip_quat, jnp.array([0.0, 0.0, -self.assembly.plug_length]))

    def fingertip_velocity(self, d: Physics):
        """(linear [3], angular [3]) world-frame velocity of the fingertip."""
        return d.tip_vel[:3], d.tip_vel[3:]

    def contact_wrench(self, d: Physics) -> jax.Array:
        """What a wrist force/torque sensor would read of the contacts: [6] force (N) then torque
        (N m, about the fingertip origin) that the rest of the scene exerts on the fingertip body
        and the plug it holds, in the fingertip frame.

        Read from the robot's joint-space constraint forces τ = Jᵀ w (`Physics.constraint_force`;
        only the plug's geoms collide on the robot side), solved for w in least squares,
        w = (J Jᵀ)⁻¹ J τ, as a Franka estimates its external wrench from joint torques. No gravity
        or inertia of the plug is in it (an ideal, tared sensor); joint-limit forces would be (the
        floating hand has none). Checked against MuJoCo's own per-contact forces in the tests.
        """
        n = self._n
        _, _, jac = fingertip_pose_and_jacobian(self.chain, d.qpos[:n])
        world = jnp.linalg.solve(jac @ jac.T, jac @ d.constraint_force[:n])
        inverse = d.tip_quat * jnp.array([1.0, -1.0, -1.0, -1.0])
        return jnp.concatenate([rotate(inverse, world[:3]), rotate(inverse, world[3:])])

    def goal_pose(self, d: Physics, info: EpisodeInfo) -> tuple[jax.Array, jax.Array]:
        """Where the plug tip belongs now: (position [3], quaternion [4]), world frame.

        The episode's goal (`info.goal_pos/goal_quat`, fixed at reset), carried along with
        the loose part the plug goes into when the stage has one (`assembly.mate`): that
        part's rigid motion from its assembled pose moves its hole with it.
        """
        j = self.assembly.mate
        if j is None:
            return info.goal_pos, info.goal_quat
        adr = int(self._free_qposadr[j])
        part_pos, part_quat = d.qpos[adr: adr + 3], d.qpos[adr + 3: adr + 7]
        part_quat = part_quat / jnp.linalg.norm(part_quat)
        assembled_pos = self._assembled_poses(d.socket_pos, d.socket_quat)[j]  # assembled at the socket's yaw
        motion = quat_mul(part_quat, d.socket_quat * jnp.array([1.0, -1.0, -1.0, -1.0]))
        return part_pos + rotate(motion, info.goal_pos - assembled_pos), quat_mul(motion, info.goal_quat)

    def goal_errors(self, d: Physics, info: EpisodeInfo):
        """(tip height above the goal, tip xy distance, mean keypoint distance) in metres,
        against `goal_pose` (the goal as moved by the mating loose part, if any)."""
        goal_pos, goal_quat = self.goal_pose(d, info)
        quat = d.tip_quat
        tip = self.plug_tip(d)
        offset = rotate(goal_quat * jnp.array([1.0, -1.0, -1.0, -1.0]), tip - goal_pos)
        kp_plug = jax.vmap(lambda k: tip + rotate(quat, k))(self._keypoints)
        kp_goal = jax.vmap(lambda k: goal_pos + rotate(goal_quat, k))(self._keypoints)
        kp_dist = jnp.mean(jnp.linalg.norm(kp_plug - kp_goal, axis=-1))
        return offset[2], jnp.linalg.norm(offset[:2]), kp_dist

    def shift_observed_goal(self, state: EnvState, pos_offset: jax.Array, yaw_offset: jax.Array) -> EnvState:
        """The same state with the goal the policy sees moved by `pos_offset` [3] (world, m) and
        turned by `yaw_offset` [] (rad) for the rest of the episode (a perception error)."""
        info = state.info.replace(obs_goal_pos=state.info.obs_goal_pos + pos_offset,
                                  obs_goal_quat=canonical(quat_mul(yaw_quat(yaw_offset), state.info.obs_goal_quat)))
        return self._observe(state.physics, info, state.terminated)

    def advance_clock(self, state: EnvState, steps: jax.Array) -> EnvState:
        """The same state, `steps` control steps later in its episode (the physics is unchanged).

        A learner staggers its environments' episode starts with it, so that a rollout
        does not see every episode in the same phase.
        """
        info = state.info.replace(step=state.info.step + steps)
        return self._observe(state.physics, info, state.terminated)

    def _observe(self, d: Physics, info: EpisodeInfo, terminated) -> EnvState:
        c, depth = self.config, self.assembly.depth
        z_err, xy_err, kp_dist = self.goal_errors(d, info)
        success = ((z_err < c.success_depth_fraction * depth) & (kp_dist < c.success_keypoint_fraction * depth)
                   & (self.prior_part_displacement(d) <= c.loose_part_tolerance))  # always true without loose parts
        engaged = (z_err < depth) & (xy_err < 2.0 * self.assembly.clearance + 0.002)
        terms = {
            "keypoint_baseline": _squash(kp_dist, 5.0, 4.0),
            "keypoint_coarse": _squash(kp_dist, 50.0, 2.0),
            "keypoint_fine": _squash(kp_dist, 100.0, 0.0),
            "engaged": engaged.astype(jnp.float32),
            "success": success.astype(jnp.float32),
        }
        pos, quat = d.tip_pos, canonical(d.tip_quat)
        qpos = jnp.zeros(MAX_JOINTS).at[: self._n].set(d.qpos[: self._n])
        qvel = jnp.zeros(MAX_JOINTS).at[: self._n].set(d.qvel[: self._n])
        progress = (info.step / c.episode_steps)[None]
        obs = jnp.concatenate([qpos, pos, quat, info.obs_goal_pos, info.obs_goal_quat, info.obs_goal_pos - pos,
                               info.prev_action, progress])
        critic_obs = jnp.concatenate([obs, qvel, d.tip_vel, self.plug_tip(d) - self.goal_pose(d, info)[0], quat])
        return EnvState(
            physics=d, obs=obs, critic_obs=critic_obs,
            reward=combine_reward(terms, self._weights), terms=terms, success=success,
            terminated=terminated, truncated=info.step >= c.episode_steps, info=info)


def max_penetration(physics: Physics) -> jax.Array:
    """Deepest contact penetration (m, >= 0) MJX computed in the last substep (MJX backend only)."""
    from refinery_jax.envs.physics.mjx_backend import max_penetration as from_mjx  # noqa: PLC0415  (MJX on demand)

    return from_mjx(physics)
