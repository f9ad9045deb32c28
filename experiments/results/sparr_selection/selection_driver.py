"""The selection runs of runs.jsonl (issue 20, 2026-12-06): experiments/sparr.py with another
residual_scale and initial temperature, 9,000 robot steps, evaluation seed 2000 (the table uses 1000).

    python experiments/results/sparr_selection/selection_driver.py SCALE INIT_TEMPERATURE NAME [GAP]

(from the repository root, the base at runs/square_peg)
"""
import dataclasses, sys
sys.path.insert(0, "experiments")
import sparr as S
scale, alpha, name = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
orig = S.row_config
def row_config(row, preset, budget):
    c = orig(row, preset, budget)
    return dataclasses.replace(c, residual_scale=scale, sac=dataclasses.replace(c.sac, init_temperature=alpha))
S.row_config = row_config
S.main(["--base-run", "runs/square_peg", "--gap", sys.argv[4] if len(sys.argv) > 4 else "friction",
        "--rows", "base", "sparr", "--seeds", "1", "--budget-steps", "9000", "--eval-seed", "2000",
        "--out", f"runs/sparr_selection/{name}"] + (["--resume"] if len(sys.argv) > 5 else []))
