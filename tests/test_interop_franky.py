"""The Franka backend (`interop.franky`) against franky-sim: a simulated FR3 that speaks the
real libfranka protocol on a loopback address, stepped by MuJoCo at 1 kHz; the safety
envelope in front of it. Needs the interop extra; skipped without it."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("franky", reason="the interop extra is not installed (pip install -e '.[interop]')")
pytest.importorskip("franky_sim", reason="the interop extra is not installed (pip install -e '.[interop]')")

from refinery_jax.interop.franky import FrankyBackend, from_franky_quat, to_franky_quat  # noqa: E402
from refinery_jax.robot.safety import SafetyEnvelope, SafetyLimits, SafetyStopped  # noqa: E402

PERIOD = 1 / 15
UP = np.array([1.0, 0.0, 0.0, 0.0])


@pytest.fixture()
def franka():
    """A franky-sim server running in the background and a backend connected to it."""
    from franky_sim.mujoco_simulator import MujocoSimulator
    from franky_sim.simulation_server import SimulationServer

    with MujocoSimulator() as sim:
        robot = sim.add_robot()
        with SimulationServer(sim) as server:
            server.run_async(realtime=1.0)  # 1 kHz of simulation per second of wall time
            backend = FrankyBackend(robot.hostname, realtime=False)
            yield backend
            backend.close()
            server.running = False


def _loop(envelope, policy, steps):
    states = []
    for t in range(steps):
        state = envelope.state()
        states.append(state)
        try:
            envelope.command(*policy(state, t))
        except SafetyStopped:
            break
        time.sleep(PERIOD)
    return states


def test_quaternion_conventions_round_trip():
    rng = np.random.default_rng(0)
    for q in rng.normal(size=(5, 4)):
        q = q / np.linalg.norm(q)
        back = from_franky_quat(to_franky_quat(q))
        assert np.allclose(back, q if q[0] >= 0 else -q, atol=1e-12)
    np.testing.assert_allclose(to_franky_quat(UP), [1.0, 0.0, 0.0, 0.0], atol=1e-12)  # hand down, x y z w


def test_backend_reads_the_home_pose_and_tracks_targets(franka):
    home = franka.connect()
    # franky-sim's home pose: hand down over [0.554, 0, 0.521] (the project's fingertip upright)
    np.testing.assert_allclose(home.ee_pos, [0.554, 0.0, 0.521], atol=2e-3)
    assert abs(home.ee_quat[0]) > 0.999 and home.joint_pos.shape == (7,) and not home.moving
    target = home.ee_pos + np.array([0.0, 0.03, -0.03])
    for _ in range(30):
        franka.command(target, UP)
        time.sleep(PERIOD)
    reached = franka.state()
    assert reached.moving and np.linalg.norm(reached.ee_pos - target) < 5e-3
    franka.stop()
    time.sleep(0.3)
    rest = franka.state()
    assert not rest.moving and rest.speed < 0.01


def test_envelope_keeps_the_franka_in_its_workspace(franka):
    home = franka.connect()
    box_low, box_high = home.ee_pos - [0.03, 0.03, 0.04], home.ee_pos + [0.03, 0.03, 0.02]
    limits = SafetyLimits(workspace_low=tuple(box_low), workspace_high=tuple(box_high), max_step=0.005,
                          max_speed=0.3, watchdog=0.5)
    envelope = SafetyEnvelope(franka, limits)
    envelope.connect()
    # a policy that dives for a point 30 cm below and 20 cm to the side of the box
    states = _loop(envelope, lambda s, t: (s.ee_pos + np.array([0.2, 0.2, -0.3]), UP), 45)
    positions = np.stack([s.ee_pos for s in states])
    assert np.all(positions >= box_low - 5e-3) and np.all(positions <= box_high + 5e-3)
    assert np.linalg.norm(positions[-1] - [box_high[0], box_high[1], box_low[2]]) < 1e-2  # pinned in the corner
    speeds = np.array([s.speed for s in states])
    assert speeds.max() < limits.max_speed and envelope.hits["workspace"] > 0 and envelope.hits["step"] > 0
    envelope.close()


def test_watchdog_stops_the_franka_when_commands_stop(franka):
    home = franka.connect()
    limits = SafetyLimits(workspace_low=tuple(home.ee_pos - 0.1), workspace_high=tuple(home.ee_pos + 0.1),
                          watchdog=0.3)
    envelope = SafetyEnvelope(franka, limits)
    envelope.connect()
    _loop(envelope, lambda s, t: (home.ee_pos + np.array([0.0, 0.0, -0.05]), UP), 5)
    assert franka.state().moving
    time.sleep(1.0)  # the policy loop stalls
    assert envelope.stopped and envelope.hits["watchdog"] == 1
    time.sleep(0.3)
    state = franka.state()
    assert not state.moving and state.speed < 0.01  # TorqueStopMotion brought the arm to rest
    with pytest.raises(SafetyStopped):
        envelope.command(state.ee_pos, UP)
    envelope.recover()
    envelope.command(state.ee_pos, UP)  # a new motion after recover()
    assert franka.state().moving
    envelope.close()


@pytest.mark.slow  # an end-to-end script run (~20 s); the backend and envelope tests above run in CI
def test_deploy_script_runs_a_specialist_on_franky_sim(tmp_path, load_script_main, specialist_run):
    """experiments/deploy.py out of the box: franky-sim started in-process, a specialist's
    trials through the envelope, every step logged."""
    import json
    import pathlib

    run, _, _ = specialist_run
    main = load_script_main(pathlib.Path(__file__).resolve().parents[1] / "experiments" / "deploy.py")
    out = tmp_path / "deploy"
    results = main(["--run", str(run), "--trials", "2", "--out", str(out)])
    assert results["trials"] == 2 and 0 <= results["successes"] <= 2
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(trials) == 2 and trials[0]["reached_start"]
    config = json.loads((out / "config.json").read_text())
    low, high = np.array(config["limits"]["workspace_low"]), np.array(config["limits"]["workspace_high"])
    for trial in trials:
        if trial["reached_start"]:
            assert len(trial["steps"]) >= 1
        for step in trial["steps"]:  # a random policy, and the fingertip never left the box (5 mm of tracking lag)
            assert np.all(np.array(step["fingertip"]) >= low - 5e-3) and np.all(np.array(step["fingertip"]) <= high + 5e-3)
    with pytest.raises(SystemExit):  # nothing is overwritten
        main(["--run", str(run), "--out", str(out)])
