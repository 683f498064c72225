"""What every benchmark script shares: the judge, the data root, and the results file.

- **The judge** (``load_judge``, ``judge``): a LeNet-like CNN trained on MNIST by
  ``python bench/classifier.py``, independent of every vd model, saved to
  bench/runs/classifier.safetensors and trained on first use when that file is missing. It takes
  uint8 digits at 28x28 or the LDM's zero-padded 32x32 and returns class probabilities and its
  64-d penultimate features (the feature network of the Fréchet distances). A sample is
  *confident* when its top probability is at least ``CONFIDENT``.
- **The data root** (``data_root``): ``$VD_DATA_ROOT``, else ``../shared/datasets`` beside the
  repository (the development machine's real MNIST files).
- **The results** (``record``): one JSON line per measurement, appended to bench/results.jsonl,
  stamped with what it was measured on (``provenance``): the git revision and whether tracked
  files differed from it, the date, torch's version and thread count, the machine and its load
  average. A figure quoted in RESULTS.md names the row it came from.

Pictures the scripts draw go to ``RUNS`` (bench/runs/, ignored by git). Scripts in bench/
import this module as ``common``; those in bench/experiments/ put bench/ on ``sys.path`` first.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from vdcli.data import to_float

ROOT = Path(__file__).resolve().parent.parent  # the repository
BENCH = Path(os.path.relpath(Path(__file__).parent))  # relative, so that recorded commands and paths read as typed
RUNS = BENCH / "runs"
RESULTS = BENCH / "results.jsonl"
JUDGE = RUNS / "classifier.safetensors"
CONFIDENT = 0.9  # the judge's top probability at which a sample counts as one clear digit


def data_root() -> Path:
    """$VD_DATA_ROOT, else ../shared/datasets beside the repository."""
    return Path(os.environ.get("VD_DATA_ROOT") or ROOT.parent / "shared" / "datasets").expanduser()


# --- the judge ---


class Judge(nn.Module):
    """Two conv blocks and a linear head; ``forward`` returns (logits [N, 10], features [N, 64])."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
            nn.Flatten(), nn.Linear(64 * 49, 64), nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.head(f), f


def centre28(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 1, S, S] -> float [N, 1, 28, 28]: the LDM's 32x32 digits are MNIST padded by 2."""
    if images.shape[-1] != 28:
        off = (images.shape[-1] - 28) // 2
        images = images[..., off : off + 28, off : off + 28]
    return to_float(images)


def load_judge() -> Judge:
    """The trained judge, in eval mode; trains it (about a minute, bench/classifier.py) if it is missing."""
    if not JUDGE.is_file():
        import classifier  # only on the first run: classifier.py itself imports this module

        return classifier.train()
    model = Judge()
    model.load_state_dict(load_file(str(JUDGE)))
    return model.eval()


@torch.no_grad()
def judge(model: nn.Module, images: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(class probabilities [N, 10], features [N, 64]) of uint8 digits."""
    outs = [model(centre28(images[i : i + batch])) for i in range(0, len(images), batch)]
    return torch.cat([o[0] for o in outs]).softmax(1), torch.cat([o[1] for o in outs])


def confident_share(probs: torch.Tensor) -> float:
    """The fraction of rows of class probabilities [N, K] whose top probability is at least CONFIDENT."""
    return (probs.max(1).values >= CONFIDENT).float().mean().item()


# --- the results file ---


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def provenance() -> dict:
    """What a measurement was taken on: revision, dirty tree, date, torch, threads, machine, load average."""
    # the results file is the one tracked file a benchmark itself changes: it does not make the code differ
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results.jsonl")
    return {
        "commit": _git("rev-parse", "--short=7", "HEAD") or None,
        "dirty": bool(changed),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def record(row: dict, path: Path = RESULTS) -> dict:
    """Append ``row`` and its provenance (which wins over same-named keys) as one JSON line; returns it."""
    row = {**row, **provenance()}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row
