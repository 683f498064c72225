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
import shutil
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
        self._undo: tuple[list[Path], str | None] | None = None  # set by new_run: what discard() restores

    def discard(self) -> bool:
        """Remove a run that was refused before it saved anything (bad data path, unusable VAE ...):
        its folder, the folders ``new_run`` made for it, and the ``latest`` pointer put back.
        A run with a checkpoint, or one not made by ``new_run``, is kept. True if removed."""
        if self._undo is None or any(self.dir.rglob("*.safetensors")):  # a VAE stage's checkpoint counts too
            return False
        made, previous = self._undo
        shutil.rmtree(self.dir, ignore_errors=True)
        link = self.dir.parent / "latest"
        try:
            if link.is_symlink():
                link.unlink()
            if previous is not None:
                link.symlink_to(previous, target_is_directory=True)
        except OSError:
            pass
        for folder in made:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break  # not empty: something else lives there
        self._undo = None
        return True

    def __repr__(self) -> str:
        return f"Run({self.dir})"


def new_run(root: Path, name: str) -> Run:
    """A fresh run folder for recipe ``name``, and the ``latest`` pointer moved to it."""
    base = Path(root) / name
    made, missing = [], base
    while not missing.exists() and missing != missing.parent:  # the folders mkdir makes, innermost first
        made.append(missing)
        missing = missing.parent
    link = base / "latest"
    previous = os.readlink(link) if link.is_symlink() else None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, n = base / stamp, 1
    while folder.exists():
        n += 1
        folder = base / f"{stamp}-{n}"
    folder.mkdir(parents=True)
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(folder.name, target_is_directory=True)
    except OSError:
        pass  # no symlinks here (some Windows set-ups): finding the newest run does not need them
    run = Run(folder)
    run._undo = (made, previous)
    return run


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
