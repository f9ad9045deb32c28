"""Output directories of experiment scripts: never reuse or overwrite a user's run silently."""

from __future__ import annotations

import pathlib
import sys
import time


def prepare_run_dir(out: pathlib.Path, resume: bool, overwrite: bool, unfinished_markers: tuple[str, ...]) -> bool:
    """Check what `out` holds before any compile; returns True when an unfinished run should be resumed.

    A finished run (results.json) is never reused; an unfinished one (holding one of
    `unfinished_markers`) needs `resume`; `overwrite` moves the old directory aside to
    `out.old-<time>` (nothing is deleted). Exits with a message otherwise.
    """
    out = pathlib.Path(out)
    if not out.exists() or not any(out.iterdir()):
        if resume:
            print(f"--resume: {out} holds no run yet; starting a new one")
        return False
    finished = (out / "results.json").exists()
    unfinished = not finished and any((out / m).exists() for m in unfinished_markers)
    if overwrite:
        aside = out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(aside)
        print(f"--overwrite: moved the previous contents of {out} to {aside}")
        return False
    if finished:
        sys.exit(f"error: {out} holds a finished run (results.json); pass --overwrite to start over")
    if unfinished and resume:
        return True
    if unfinished:
        sys.exit(f"error: {out} holds an unfinished run; pass --resume to continue it or --overwrite to start over")
    sys.exit(f"error: {out} is not empty and holds no run of this script; choose another --out or pass --overwrite")


def write_run_config(out: pathlib.Path, config: dict, resume: bool, must_match: tuple[str, ...] = ("fingerprint",)) -> None:
    """Write `out/config.json`; when resuming, first check that the stored run was started
    with the same settings (dotted keys in `must_match`, e.g. "args.acquisitions") and exit
    with a message otherwise, so the record of the original settings is never replaced."""
    import json

    path = pathlib.Path(out) / "config.json"
    if resume and path.exists():
        stored = json.loads(path.read_text())
        for dotted in must_match:
            old, new = stored, config
            for part in dotted.split("."):
                old, new = (old or {}).get(part), (new or {}).get(part)
            if old != new:
                sys.exit(f"error: {out} was started with {dotted} = {old!r}, this command has {new!r}; resume it with "
                         f"its original settings (see {path}) or pass --overwrite")
    path.write_text(json.dumps(config, indent=2, default=str))
