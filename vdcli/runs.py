"""Run folders: where a training run keeps everything it writes.

    runs/<recipe>/<YYYYmmdd-HHMMSS>/
        recipe.yaml                  the resolved recipe (defaults and --set applied)
        metrics.jsonl                one JSON object per logged step and per evaluation
        checkpoint.safetensors       weights + metadata; rebuilds the model alone
        checkpoint.state.safetensors optimizer state, for --resume
        *.png                        what the run shows (samples, curves, confusion matrix ...)
    runs/<recipe>/latest -> <YYYYmmdd-HHMMSS>

Commands that need a checkpoint take a file or a run folder, or else use the newest run of
the right kind under ``runs/``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from vdcli.checkpoint import KINDS, read_header
from vdcli.errors import VdError

CHECKPOINT = "checkpoint.safetensors"


def default_root() -> Path:
    return Path(os.environ.get("VD_RUNS", "runs"))


class Run:
    def __init__(self, folder: Path):
        self.dir = Path(folder)
        self.checkpoint = self.dir / CHECKPOINT
        self.metrics = self.dir / "metrics.jsonl"
        self.recipe = self.dir / "recipe.yaml"

    def __repr__(self) -> str:
        return f"Run({self.dir})"


def new_run(root: Path, name: str) -> Run:
    """A fresh run folder for recipe ``name``, and the ``latest`` pointer moved to it."""
    base = Path(root) / name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, n = base / stamp, 1
    while folder.exists():
        n += 1
        folder = base / f"{stamp}-{n}"
    folder.mkdir(parents=True)
    link = base / "latest"
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(folder.name, target_is_directory=True)
    except OSError:
        pass  # no symlinks here (some Windows set-ups): finding the newest run does not need them
    return Run(folder)


def last_run(root: Path, name: str) -> Run:
    """The newest run of recipe ``name``, for --resume."""
    base = Path(root) / name
    runs = sorted((p for p in base.glob("*") if p.is_dir() and not p.is_symlink()), key=lambda p: p.name)
    if not runs:
        raise VdError(f"nothing to resume: no runs of recipe '{name}' under {base}; start one without --resume")
    return Run(runs[-1])


def find_checkpoint(arg: str | Path | None, kind: str, root: Path | None = None) -> tuple[Path, str]:
    """(checkpoint path, how it was found) from a --checkpoint argument or the newest run of ``kind``."""
    if arg:
        path = Path(arg)
        if path.is_dir():
            for candidate in (path / CHECKPOINT, path / "latest" / CHECKPOINT):
                if candidate.is_file():
                    return candidate, f"checkpoint {candidate}"
            raise VdError(f"{path} is a folder without {CHECKPOINT}; pass a run folder or a .safetensors file")
        if not path.exists():
            raise VdError(f"checkpoint {path} not found")
        return path, f"checkpoint {path}"
    root = Path(root or default_root())
    found = []
    for ckpt in root.glob(f"*/*/{CHECKPOINT}"):
        if ckpt.parent.is_symlink():
            continue
        try:
            if read_header(ckpt).get("kind") == kind:
                found.append(ckpt)
        except VdError:
            continue
    if not found:
        raise VdError(f"no run of {KINDS[kind]} found under {root}/; train one first or pass --checkpoint PATH")
    newest = max(found, key=lambda p: p.stat().st_mtime)
    return newest, f"latest {kind} run: {newest}"
