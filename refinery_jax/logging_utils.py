"""Scalar logging for experiments: TensorBoard event files plus a JSON-lines copy.

TensorBoard events are written with tensorboardX when it is importable (it comes
with brax); `metrics.jsonl` is always written, so nothing depends on it.
"""

from __future__ import annotations

import json
import math
import pathlib


class ScalarLogger:
    def __init__(self, directory):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.directory / "metrics.jsonl", "a")
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # pragma: no cover - depends on the installation
            self._tb = None
        else:
            self._tb = SummaryWriter(str(self.directory / "tensorboard"))

    @property
    def tensorboard(self) -> bool:
        return self._tb is not None

    def log(self, step: int, scalars: dict) -> None:
        """Record finite scalars at `step` (non-finite values go to the JSON line as null)."""
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for name, value in clean.items():
                if value is not None:
                    self._tb.add_scalar(name, value, int(step))
            self._tb.flush()

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
