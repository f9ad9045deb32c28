"""What experiments report while they run: TensorBoard scalars, progress bars, a log file.

`ScalarLogger` writes TensorBoard event files (tensorboardX, a dependency) plus a JSON-
lines copy (`metrics.jsonl`); `progress_bar` is a tqdm bar with an ETA; `RunLog` prints
timestamped lines above the bars and keeps them in the run's `log.txt`.
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
        from tensorboardX import SummaryWriter  # noqa: PLC0415

        self._tb = SummaryWriter(str(self.directory / "tensorboard"))

    def log(self, step: int, scalars: dict) -> None:
        """Record finite scalars at `step` (non-finite values go to the JSON line as null)."""
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._jsonl.flush()
        for name, value in clean.items():
            if value is not None:
                self._tb.add_scalar(name, value, int(step))
        self._tb.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress_bar(total: int, desc: str, unit: str = "it", initial: int = 0):
    """A tqdm bar with an ETA on stderr (redrawn every second on a terminal, every 30 s in a log)."""
    import sys  # noqa: PLC0415

    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, leave=False,
                mininterval=1.0 if sys.stderr.isatty() else 30.0)


class RunLog:
    """`log(message)`: a timestamped line on stdout (above any progress bar) and in `out/log.txt`."""

    def __init__(self, out):
        import time  # noqa: PLC0415

        self.start = time.time()
        self.path = pathlib.Path(out) / "log.txt"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")

    def __call__(self, message: str) -> None:
        import time  # noqa: PLC0415

        from tqdm.auto import tqdm  # noqa: PLC0415

        line = f"[{time.time() - self.start:7.0f} s] {message}"
        tqdm.write(line)
        self._file.write(line + "\n")
        self._file.flush()
