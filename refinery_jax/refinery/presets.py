"""Named settings of the Refinery comparison, paired with the PPO presets of the same name."""

from __future__ import annotations

import dataclasses
from typing import Optional

from refinery_jax.refinery.comparison import ComparisonConfig
from refinery_jax.refinery.finetune import FineTuneConfig
from refinery_jax.success_models import DeploymentConfig, ProposalConfig


def comparison_preset(name: str, acquisition: str = "ucb") -> ComparisonConfig:
    """`quick` (2 CPU cores: 256 θ per GP round, at most 6 rounds of 4 PPO updates of the quick
    specialist's 6400 env steps) or
    `paper` (1000 θ per round as the paper's evaluations, up to 30 rounds). Both report
    every row on 1000 fresh trials and fit the GMMs on N = 1000 (Algorithm 2)."""
    proposal = ProposalConfig(kind=acquisition, q=32)
    if name == "quick":
        finetune = FineTuneConfig(eval_points=256, updates_per_round=4, max_rounds=6, proposal=proposal)
    elif name == "paper":
        finetune = FineTuneConfig(eval_points=1000, updates_per_round=10, max_rounds=30, learning_rate=1e-4,
                                  proposal=proposal)
    else:
        raise ValueError(f"unknown preset {name!r}; presets: quick, paper")
    return ComparisonConfig(eval_trials=1000, gmm_inits=1000, finetune=finetune)


def configure(name: str, task: str, acquisition: str = "ucb", selection: str = "argmax",
              baseline_updates: Optional[int] = None, max_rounds: Optional[int] = None,
              eval_trials: Optional[int] = None, gmm_inits: Optional[int] = None, backend: str = "auto",
              init_xy: Optional[float] = None, init_height: Optional[tuple[float, float]] = None,
              theta_yaw: bool = False):
    """(PPO `Preset`, `ComparisonConfig`) of preset `name` for `task` on physics `backend`, with
    the experiment scripts' overrides (None keeps the preset's value; `init_xy` and
    `init_height` set the θ box, m; `theta_yaw` adds the plug's yaw error to θ). Raises ValueError on bad values, before anything is compiled."""
    from refinery_jax.ppo.presets import preset

    spec = preset(name, task, backend)
    box = {k: v for k, v in (("init_xy", init_xy), ("init_height", init_height), ("theta_yaw", theta_yaw or None))
           if v is not None}
    if box:  # EnvConfig validates the box
        env = dataclasses.replace(spec.config.env, **{k: tuple(v) if k == "init_height" else v for k, v in box.items()})
        if not (env.init_xy > 0 and env.init_height[0] < env.init_height[1]):  # the GP and GMM normalise by it
            raise ValueError(f"the θ box needs a positive width on every axis: --init-xy {env.init_xy}, "
                             f"--init-height {env.init_height[0]} {env.init_height[1]}")
        spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config, env=env))
    if baseline_updates is not None:
        if baseline_updates < 1 or baseline_updates % spec.chunk_updates:
            raise ValueError(f"baseline updates must be a positive multiple of the chunk size {spec.chunk_updates}")
        spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config, num_updates=baseline_updates))
    comparison = comparison_preset(name, acquisition)
    finetune = comparison.finetune
    if max_rounds is not None:
        finetune = dataclasses.replace(finetune, max_rounds=max_rounds)
    comparison = dataclasses.replace(
        comparison, finetune=finetune, eval_trials=eval_trials or comparison.eval_trials,
        gmm_inits=gmm_inits or comparison.gmm_inits, deployment=DeploymentConfig(selection=selection))
    return spec, comparison


BUDGET_OPTIONS = ("baseline_updates", "max_rounds", "eval_trials", "gmm_inits")


def add_backend_argument(parser) -> None:
    """`--backend {auto,mjx,c}`: the physics backend (every experiment script has it)."""
    from refinery_jax.envs.physics import BACKENDS

    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="physics: C MuJoCo (c, the default on CPU) or MJX (mjx, the default on GPU/TPU)")


def add_device_arguments(parser, distributed: bool = True) -> None:
    """`--devices`, `--seed-axis` and (with `distributed`) the multi-process options."""
    group = parser.add_argument_group("devices (README: Scale-out)")
    group.add_argument("--devices", default="all",
                       help="devices to split seeds and environments over: a number or 'all' (default: all of "
                            "them, every process's; one device runs as before)")
    group.add_argument("--seed-axis", type=int, default=1,
                       help="devices along the mesh's seeds axis (default 1: every device splits each seed's "
                            "environments); must divide --devices and the number of seeds")
    if not distributed:
        return
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run first (jax.distributed.initialize: TPU pods, SLURM and "
                            "Open MPI are detected; elsewhere give --coordinator, --num-processes, --process-id)")
    group.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (with --distributed)")
    group.add_argument("--num-processes", type=int, default=None, help="processes in the run (with --distributed)")
    group.add_argument("--process-id", type=int, default=None, help="this process's index (with --distributed)")


def mesh_from_args(parser, args):
    """The (seeds x envs) mesh the device arguments ask for, or None for one device. Call after
    `resolve_backend_arg` (which joins a multi-process run first)."""
    import jax

    from refinery_jax.mesh import make_mesh

    try:
        count = None if args.devices == "all" else int(args.devices)
        mesh = make_mesh(count, args.seed_axis)
    except ValueError as error:
        parser.error(f"--devices {args.devices} --seed-axis {args.seed_axis}: {error}")
    if mesh.size == 1 and jax.process_count() == 1:
        return None
    return mesh


def resolve_backend_arg(parser, args) -> None:
    """Replace `args.backend` by the backend that will run; first thing after parsing, before
    any JAX computation (choosing MJX sets its XLA CPU flag; a multi-process run, `--distributed`,
    is joined here, before JAX looks at its devices). Bad choices end in `parser.error`."""
    from refinery_jax.envs.physics import resolve_backend

    if getattr(args, "distributed", False):
        from refinery_jax.mesh import initialize_distributed

        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    try:
        args.backend = resolve_backend(args.backend)
    except ValueError as error:
        parser.error(str(error))


def add_budget_arguments(parser) -> None:
    """The command-line options behind `configure` (experiments/refinery.py and sequence.py)."""
    from refinery_jax.ppo.presets import PRESETS
    from refinery_jax.success_models.acquisition import ACQUISITIONS

    add_backend_argument(parser)
    parser.add_argument("--preset", default="quick", choices=PRESETS, help="budgets (default quick)")
    parser.add_argument("--acquisition", default="ucb", choices=ACQUISITIONS, help="BO acquisition (default ucb)")
    parser.add_argument("--selection", default="argmax", choices=("argmax", "random"),
                        help="deployment: highest-density GMM sample (paper) or a random one (Refinery's code)")
    parser.add_argument("--baseline-updates", type=int, default=None,
                        help="override the preset's PPO updates for the specialists (multiple of its chunk)")
    parser.add_argument("--max-rounds", type=int, default=None, help="override the preset's fine-tuning rounds")
    parser.add_argument("--eval-trials", type=int, default=None, help="override the 1000 fresh trials per row")
    parser.add_argument("--gmm-inits", type=int, default=None, help="override N = 1000 of Algorithm 2")
    parser.add_argument("--init-xy", type=float, default=None, metavar="M",
                        help="θ box: the plug tip starts within ±M metres of its goal in x and y (default 0.01)")
    parser.add_argument("--init-height", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="θ box: the tip starts LOW..HIGH metres above the socket's top face (default 0.01 0.02)")
    parser.add_argument("--theta-yaw", action="store_true",
                        help="θ includes the plug's yaw error (±5°): the GP and GMMs model it, BO and deployment choose it")


def configure_from_args(parser, args, task: str):
    """`configure` with the options of `add_budget_arguments`; bad values end in `parser.error`."""
    for name in BUDGET_OPTIONS:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    try:
        return configure(args.preset, task, args.acquisition, args.selection,
                         *(getattr(args, name) for name in BUDGET_OPTIONS), backend=args.backend,
                         init_xy=args.init_xy, init_height=args.init_height, theta_yaw=args.theta_yaw)
    except ValueError as error:
        parser.error(str(error))
