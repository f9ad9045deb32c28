"""A Refinery results directory: `results.json` (the table) and `arrays.npz` (the data behind it).

`pack_arrays` flattens a `ComparisonResult` into named numpy arrays; `load_run` reads
a directory back into a `RunData` with the GP and GMM parameters rebuilt, which is
what the notebook explores. Keys of `arrays.npz`:

    low, high                      [3] θ box
    rounds, control_rounds         [S] fine-tuning rounds (BO run, control)
    fresh/<method>/{inits,success} [S, N, 3], [S, N] the reported trials per row
    history/<field>                [S, R, ...] per-round record of the BO run
    history/gp_params/<field>      [S, R, ...] fitted GP hyper-parameters per round
    gmm/<baseline|finetuned>/...   [S, ...] mixture parameters, fit data, usable flag
    success_map/...                seed 0's success maps before / after fine-tuning (optional)
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import NamedTuple, Optional

import jax
import numpy as np

from refinery_jax.success_models import GPParams
from refinery_jax.success_models.gmm import GMMParams


def pack_arrays(result, low, high, finetune) -> dict:
    """Named numpy arrays of a ComparisonResult (all seeds); `finetune`: its FineTuneConfig."""
    fresh = jax.device_get(result.fresh)
    history = jax.device_get(result.finetune.history)
    arrays = {"low": np.asarray(low), "high": np.asarray(high), "rounds": np.asarray(result.finetune.rounds),
              "control_rounds": np.asarray(result.control.rounds), "gp_rounds": np.asarray(finetune.gp_rounds),
              "gp_decay": np.asarray(finetune.gp_decay)}
    for method, ev in fresh.items():
        arrays[f"fresh/{method}/inits"], arrays[f"fresh/{method}/success"] = np.asarray(ev.inits), np.asarray(ev.success)
    for name in ("success_rate", "eval_inits", "eval_success", "proposals", "trained", "env_steps", "train_success"):
        arrays[f"history/{name}"] = np.asarray(getattr(history, name))
    for name, value in dataclasses.asdict(history.gp_params).items():
        arrays[f"history/gp_params/{name}"] = np.asarray(value)
    for which, model in result.deployment.items():
        model = jax.device_get(model)
        for name, value in dataclasses.asdict(model.gmm.params).items():
            arrays[f"gmm/{which}/{name}"] = np.asarray(value)
        arrays[f"gmm/{which}/fit_inits"] = np.asarray(model.fit_inits)
        arrays[f"gmm/{which}/fit_success"] = np.asarray(model.fit_success)
        arrays[f"gmm/{which}/usable"] = np.asarray(model.usable)
    return arrays


def add_success_map(arrays: dict, tag: str, smap) -> None:
    arrays[f"success_map/{tag}/rate"], arrays[f"success_map/{tag}/trials"] = smap.rate, np.asarray(smap.trials)
    arrays["success_map/x"], arrays["success_map/y"], arrays["success_map/z"] = smap.x, smap.y, smap.z


class RunData(NamedTuple):
    results: dict            # results.json
    arrays: dict             # arrays.npz as a dict
    low: np.ndarray
    high: np.ndarray
    methods: tuple

    @classmethod
    def from_memory(cls, results: dict, arrays: dict) -> "RunData":
        return cls(results=results, arrays=arrays, low=np.asarray(arrays["low"]), high=np.asarray(arrays["high"]),
                   methods=tuple(results["methods"]))

    def fresh(self, method: str, seed: int = 0):
        """(inits [N, 3], success [N]) of one row's reported trials."""
        return self.arrays[f"fresh/{method}/inits"][seed], self.arrays[f"fresh/{method}/success"][seed]

    def gp_round(self, seed: int = 0, round_: int = -1):
        """(GPParams, θ [M, d], outcomes [M], weights [M], proposals [q, d]) of one BO round (-1: the
        last): the data its GP was fitted to (`finetune.gp_data`: this round's and, down-weighted,
        the rounds before; runs saved before that kept one round)."""
        from refinery_jax.refinery.finetune import gp_data  # noqa: PLC0415

        a = self.arrays
        r = int(a["rounds"][seed]) - 1 if round_ < 0 else round_
        params = GPParams(**{f.name: a[f"history/gp_params/{f.name}"][seed, r] for f in dataclasses.fields(GPParams)})
        rounds, decay = (int(a["gp_rounds"]), float(a["gp_decay"])) if "gp_rounds" in a else (1, 1.0)
        x, y, weights = (np.asarray(v) for v in gp_data(a["history/eval_inits"][seed], a["history/eval_success"][seed],
                                                        r, rounds, decay))
        return params, x, y, weights, a["history/proposals"][seed, r]

    def gmm(self, which: str = "finetuned", seed: int = 0) -> GMMParams:
        return GMMParams(**{f.name: self.arrays[f"gmm/{which}/{f.name}"][seed] for f in dataclasses.fields(GMMParams)})

    def success_map(self, tag: str) -> Optional[dict]:
        """Seed 0's success map ("before" / "after"): dict of x, y, z, rate [nz, ny, nx], trials; None if absent."""
        if f"success_map/{tag}/rate" not in self.arrays:
            return None
        return {"x": self.arrays["success_map/x"], "y": self.arrays["success_map/y"],
                "z": self.arrays["success_map/z"], "rate": self.arrays[f"success_map/{tag}/rate"],
                "trials": int(self.arrays[f"success_map/{tag}/trials"])}


def save_run(directory, results: dict, arrays: dict) -> None:
    directory = pathlib.Path(directory)
    np.savez_compressed(directory / "arrays.npz", **arrays)
    (directory / "results.json").write_text(json.dumps(results, indent=2))


def load_run(directory) -> RunData:
    directory = pathlib.Path(directory)
    for name in ("results.json", "arrays.npz"):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory} has no {name}: not a finished experiments/refinery.py run")
    results = json.loads((directory / "results.json").read_text())
    with np.load(directory / "arrays.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return RunData.from_memory(results, arrays)
