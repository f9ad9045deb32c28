"""The benchmark scripts' bookkeeping (their measurements are run by hand, see README)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
TIME_TO_SUCCESS = REPO / "experiments" / "benchmarks" / "time_to_success.py"


def _load(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(run: pathlib.Path, successes, memory="none", with_results=True):
    run.mkdir()
    lines = [{"step": 6400 * (i + 1), "train/wall_s": 10.0 * (i + 1), "train/chunk_success": s}
             for i, s in enumerate(successes)]
    lines.append({"step": 6400 * len(successes), "eval/success": 0.9})  # the evaluation line has no curve
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    (run / "config.json").write_text(json.dumps({"task": "square_peg", "preset": "quick", "seeds": [0, 1],
                                                 "embodiment": "franka", "backend": "c",
                                                 "ppo": {"memory": memory, "memory_size": 4}}))
    if with_results:
        (run / "results.json").write_text(json.dumps({"success_rate": 0.77}))
    return run


def test_time_to_success_finds_the_first_crossing_and_reports_misses(tmp_path):
    tts = _load(TIME_TO_SUCCESS)
    row = tts.read_run(_fake_run(tmp_path / "a", [0.1, 0.79, 0.8, 0.6, 0.95], memory="history"), 0.8)
    assert (row["wall_s_to_threshold"], row["env_steps_to_threshold"]) == (30.0, 19200)  # the first >= 0.8
    assert row["final_train_success"] == 0.95 and row["fresh_trial_success"] == 0.77
    assert tts._label(row) == "quick / franka / history 4 / 2 seed(s)"
    never = tts.read_run(_fake_run(tmp_path / "b", [0.1, 0.5], with_results=False), 0.8)
    assert never["wall_s_to_threshold"] is None and never["fresh_trial_success"] is None


def test_time_to_success_script_prints_json_and_draws(tmp_path):
    run = _fake_run(tmp_path / "a", [0.2, 0.9])
    out = subprocess.run([sys.executable, str(TIME_TO_SUCCESS), str(run), "--figure", str(tmp_path / "f.png")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout.strip().splitlines()[-1])["rows"]
    assert rows[0]["wall_s_to_threshold"] == 20.0 and (tmp_path / "f.png").stat().st_size > 0


def test_time_to_success_rejects_a_run_without_a_curve(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/success": 0.5}) + "\n")
    (run / "config.json").write_text(json.dumps({"task": "t", "preset": "quick", "seeds": [0]}))
    out = subprocess.run([sys.executable, str(TIME_TO_SUCCESS), str(run)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "has no training curve" in out.stderr
