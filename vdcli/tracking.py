"""Experiment tracking: a run's scalars and sample grids in TensorBoard (``train.log_to: tensorboard``).

``metrics.jsonl`` and the PNGs stay the record; TensorBoard is a view of them for people who
watch runs on rented machines. The trainer calls ``scalars`` on its logging steps (loss, lr,
images/s and the loss function's logs, under ``train/``), ``scalars`` again with the evaluation
metrics (under ``eval/``) and ``images`` with the PNGs that evaluation wrote (the sample grids),
all at the optimiser step. Only rank 0 writes; the other ranks get ``NoTracker``. The events go
to ``RUN/tensorboard/``: ``tensorboard --logdir runs`` shows every run.

A recipe key rather than a command-line option, because it then reaches every training loop of a
run (an LDM recipe's VAE and CLIP stages too) with no task knowing of it, ``--set
train.log_to=tensorboard`` turns it on from the command line, and the recipe load refuses it
before any work when the package is missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from vdcli.errors import VdError

INSTALL = 'pip install -e ".[tensorboard]"'


def check_installed(target: str | None) -> None:
    """Raise ValueError (a recipe error) when ``target`` needs a package that is not installed."""
    if target == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(f"train.log_to: tensorboard needs the tensorboard package, which is not installed; {INSTALL}")


class NoTracker:
    """Tracking off (or a rank other than 0): every call does nothing."""

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        pass

    def images(self, paths: Iterable[Path], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoard(NoTracker):
    def __init__(self, logdir: Path, resumed_at: int = 0):
        try:  # imported here: an optional extra, and torch's writer imports tensorboard at import time
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise VdError(f"train.log_to: tensorboard needs the tensorboard package; {INSTALL}") from None
        # A resumed run drops the events logged after its checkpoint, as metrics.jsonl drops those lines.
        self.writer = SummaryWriter(log_dir=str(logdir), purge_step=resumed_at + 1 if resumed_at else None)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{key}", float(value), step)
        self.writer.flush()

    def images(self, paths: Iterable[Path], step: int) -> None:
        for path in paths:  # the grid's file name without its step: samples_000500.png -> samples
            name = path.stem.rstrip("0123456789").rstrip("_") or path.stem
            pixels = np.asarray(Image.open(path).convert("RGB"))  # (H, W, 3) uint8
            self.writer.add_image(f"images/{name}", pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tracker(target: str | None, run_dir: Path, rank: int, resumed_at: int = 0) -> NoTracker:
    if target is None or rank != 0:
        return NoTracker()
    return TensorBoard(run_dir / "tensorboard", resumed_at)


def pictures(folder: Path) -> dict[Path, int]:
    """The PNGs in ``folder`` and their modification times: compared before and after an evaluation,
    what it wrote."""
    return {p: p.stat().st_mtime_ns for p in folder.glob("*.png")}


def written(before: dict[Path, int], after: dict[Path, int]) -> list[Path]:
    return sorted(p for p, t in after.items() if before.get(p) != t)
