"""One task through Refinery as the experiment scripts run it: specialists, then the comparison.

`refine_task` trains (or resumes) the specialists of S seeds in `out/specialists` and runs
the five-row comparison with every finished stage stored in `out/stages`, so a killed
run continues with `resume=True`. `experiments/refinery.py` runs it once;
`experiments/sequence.py` once per insertion stage of a multi-part assembly.
"""

from __future__ import annotations

import pathlib
from typing import Callable, NamedTuple, Optional

import jax

from refinery_jax.checkpoints import stage_cache
from refinery_jax.evaluation import make_evaluate
from refinery_jax.mesh import to_host
from refinery_jax.ppo.presets import Preset
from refinery_jax.ppo.train import Trainer, TrainState
from refinery_jax.refinery.comparison import (
    ComparisonConfig,
    ComparisonResult,
    comparison_table,
    make_comparison,
    run_comparison,
)
from refinery_jax.refinery.specialists import SPECIALISTS_DIR, build_trainer, train_specialists


class TaskRun(NamedTuple):
    trainer: Trainer
    evaluate: Callable          # make_evaluate(env, model): (policy, θ [N, 3], key) -> EvalResult
    baseline: TrainState        # the specialists [S]
    result: ComparisonResult
    table: dict                 # comparison_table(result)


def refine_task(spec: Preset, comparison_config: ComparisonConfig, train_keys: jax.Array, compare_keys: jax.Array,
                out: pathlib.Path, run_id: dict, resume: bool, progress: Callable = print,
                warm_start: Optional[TrainState] = None, logger=None, specialists: Optional[TrainState] = None,
                mesh=None) -> TaskRun:
    """Specialists ([S] keys `train_keys`, optionally warm-started; or given as `specialists`, e.g.
    `load_specialists` of an experiments/train_specialist.py run) → the comparison on `compare_keys`.

    run_id: stored with every checkpoint; a resumed run must match it. mesh: a device mesh
    (`refinery_jax.mesh`) the specialists' environments and the evaluation trials split over;
    the fine-tuning rounds, GP and GMM run on one device.
    """
    config = spec.config
    trainer, hparams = build_trainer(spec, progress)
    if specialists is None:
        baseline = train_specialists(trainer, hparams, train_keys, spec.chunk_updates, out / SPECIALISTS_DIR, run_id,
                                     resume, progress, warm_start=warm_start, logger=logger, mesh=mesh)
    else:
        baseline = specialists
    evaluate = make_evaluate(trainer.env, trainer.model, obs_clip=config.obs_clip)
    comparison = make_comparison(comparison_config, trainer, evaluate, mesh)
    cache = stage_cache(out / "stages", run_id, resume, progress)
    # the rest runs on one device: its GP and GMM fits call LAPACK, whose batched kernels on two host
    # devices at once deadlocked XLA:CPU's thread pool (2 threads); only the evaluations split
    baseline = baseline if mesh is None else to_host(baseline)
    result = run_comparison(comparison, trainer, compare_keys, baseline, progress=progress, cache=cache, logger=logger)
    table = comparison_table(result, trainer.env.init_low, trainer.env.init_high, comparison_config.cells)
    return TaskRun(trainer=trainer, evaluate=evaluate, baseline=baseline, result=result, table=table)
