"""The UTD selection run of runs.jsonl (clr_utd20): the quick preset with 20 critic updates per
robot step (RLPD's ratio) instead of 4.

    python experiments/results/sparr_selection/selection_driver_utd.py 20 clr_utd20 clearance

(from the repository root, the base at runs/square_peg)
"""
import dataclasses, sys
sys.path.insert(0, "experiments")
import sparr as S
utd, name, gap = int(sys.argv[1]), sys.argv[2], sys.argv[3]
orig = S.row_config
def row_config(row, preset, budget):
    c = orig(row, preset, budget)
    return dataclasses.replace(c, sac=dataclasses.replace(c.sac, utd=utd))
S.row_config = row_config
S.main(["--base-run", "runs/square_peg", "--gap", gap,
        "--rows", "base", "sparr", "--seeds", "1", "--budget-steps", "9000", "--eval-seed", "2000",
        "--out", f"runs/sparr_selection/{name}"])
