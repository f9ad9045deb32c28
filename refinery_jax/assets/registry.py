"""Named 2-part tasks, from easy (loose, symmetric) to hard (tight, keyed, several pins).

`get_assembly(name)` returns the geometry; the environment adds robot, noise and timing.
All parts fit a 10 cm box with the socket upright at its origin (the paper's dataset
conventions); 0.5 mm clearance per side is the default.
"""

from __future__ import annotations

from typing import Callable

from refinery_jax.assets import parts
from refinery_jax.assets.multipart import MULTIPART_ASSEMBLIES, get_multipart
from refinery_jax.assets.parts import TwoPartAssembly

DEFAULT_TASK = "square_peg"

_TASKS: dict[str, Callable[[str], TwoPartAssembly]] = {
    # square pegs: 4-fold symmetric, so any yaw within ±45° can be corrected to fit
    "square_peg_loose": lambda n: parts.square_peg(n, clearance=0.002),
    "square_peg": lambda n: parts.square_peg(n, clearance=0.0005),
    "square_peg_tight": lambda n: parts.square_peg(n, clearance=0.0001),
    "square_peg_chamfered_tight": lambda n: parts.square_peg(n, clearance=0.0001, chamfer=0.002),
    # rectangular pegs: only 180° symmetric
    "rect_peg": lambda n: parts.rect_peg(n, clearance=0.0005),
    "rect_peg_tight": lambda n: parts.rect_peg(n, clearance=0.0002, chamfer=0.0015),
    # round pegs: yaw-free, but the polygonal hole makes contact line up with the faces
    "round_peg_loose": lambda n: parts.round_peg(n, clearance=0.001),
    "round_peg": lambda n: parts.round_peg(n, clearance=0.0005),
    "round_peg_tight": lambda n: parts.round_peg(n, clearance=0.0002, sides=16),
    # keyed peg: one yaw only
    "keyed_peg": lambda n: parts.keyed_peg(n, clearance=0.0005),
    "keyed_peg_tight": lambda n: parts.keyed_peg(n, clearance=0.0002),
    # multi-pin plugs: every pin must find its hole
    "two_pin_plug": lambda n: parts.multi_pin(n, pins=((-0.012, 0.0), (0.012, 0.0))),
    "three_pin_plug": lambda n: parts.multi_pin(n, pins=((-0.014, -0.008), (0.014, -0.008), (0.0, 0.012)),
                                                clearance=0.0003),
}


def task_names() -> tuple[str, ...]:
    return tuple(_TASKS)


def get_assembly(name: str) -> TwoPartAssembly:
    """A registered 2-part task, or stage i of a multi-part assembly named "ASSEMBLY/i"."""
    if name in _TASKS:
        return _TASKS[name](name)
    if "/" in name:
        assembly, _, stage = name.partition("/")
        if stage.isdigit():
            return get_multipart(assembly).stage(int(stage))
    raise ValueError(f"unknown task {name!r}; registered tasks: {', '.join(_TASKS)}; "
                     f"multi-part stages are named ASSEMBLY/i with ASSEMBLY in {', '.join(MULTIPART_ASSEMBLIES)}")


def register_task(name: str, factory: Callable[[str], TwoPartAssembly]) -> None:
    """Add a task (e.g. from a notebook). Refuses to overwrite an existing name."""
    if name in _TASKS:
        raise ValueError(f"task {name!r} is already registered")
    _TASKS[name] = factory
