"""Time to a training success rate, and success vs wall time, from training runs.

    python experiments/train_specialist.py --preset quick --out runs/tts_quick --eval-episodes 1000
    python experiments/benchmarks/time_to_success.py runs/tts_quick [runs/tts_franka ...] --figure tts.png

For each run directory of `experiments/train_specialist.py` (its `metrics.jsonl`: per
chunk of updates, the training success of the episodes that ended in it, mean over
seeds, and the wall time since training started, compiles included), reports the first
wall time and env-step count at which training success reached `--threshold` (default
0.8; null if never), the final training success and the run's success on fresh trials
(results.json). `--figure` draws success vs wall time for all runs. The last line of
stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import pathlib


def read_run(run: pathlib.Path, threshold: float) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["train/wall_s"], r["train/chunk_success"]) for r in rows if "train/wall_s" in r]
    if not curve:
        raise SystemExit(f"error: {run} has no training curve (metrics.jsonl of experiments/train_specialist.py)")
    config = json.loads((run / "config.json").read_text())
    ppo = config.get("ppo", {})  # runs of other scripts may not record it
    results = json.loads((run / "results.json").read_text()) if (run / "results.json").exists() else {}
    reached = next(((steps, wall) for steps, wall, success in curve if success >= threshold), None)
    return {"run": str(run), "task": config["task"], "preset": config["preset"],
            "embodiment": config.get("embodiment", "floating_hand"), "backend": config.get("backend"),
            "memory": ppo.get("memory", "none"), "memory_size": ppo.get("memory_size"),
            "seeds": config["seeds"], "threshold": threshold,
            "wall_s_to_threshold": None if reached is None else reached[1],
            "env_steps_to_threshold": None if reached is None else reached[0],
            "final_train_success": curve[-1][2], "train_wall_s": curve[-1][1], "env_steps": curve[-1][0],
            "fresh_trial_success": results.get("success_rate"), "curve": curve}


def _label(row: dict) -> str:
    memory = "" if row["memory"] == "none" else f" / {row['memory']} {row['memory_size']}"
    return f"{row['preset']} / {row['embodiment']}{memory} / {len(row['seeds'])} seed(s)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("runs", nargs="+", type=pathlib.Path)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--figure", type=pathlib.Path, default=None)
    args = parser.parse_args()
    rows = [read_run(run, args.threshold) for run in args.runs]
    for row in rows:
        print(f"{row['run']}: {_label(row)} / {row['task']}: training success "
              f"{row['final_train_success']:.3f} after {row['env_steps']:,} env steps, {row['train_wall_s']:.0f} s; "
              f">= {args.threshold} at {row['wall_s_to_threshold']} s; fresh trials {row['fresh_trial_success']}")
    if args.figure is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4))
        for row in rows:
            _, wall, success = zip(*row["curve"])
            ax.plot([w / 60 for w in wall], success, label=_label(row))
        ax.axhline(args.threshold, color="grey", lw=0.8, ls="--")
        ax.set(xlabel="wall time (min, compiles included)", ylabel="training success", ylim=(0, 1),
               title=f"{rows[0]['task']}: training success vs wall time")
        ax.legend()
        fig.tight_layout()
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=120)
    print(json.dumps({"rows": [{k: v for k, v in r.items() if k != "curve"} | {"curve": r["curve"]} for r in rows]}))


if __name__ == "__main__":
    main()
