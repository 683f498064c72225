"""Time a training recipe end to end and record its quality figure.

    VD_DATA_ROOT=../shared/datasets python bench/train.py vit recipes/mnist_vit.yaml
    VD_DATA_ROOT=../shared/datasets python bench/train.py vae recipes/mnist_vae.yaml
    VD_DATA_ROOT=../shared/datasets python bench/train.py ldm recipes/mnist_latent.yaml

Runs the real command (`vd train-<kind> RECIPE --out bench/runs`), measures its wall time,
reads the figures from the checkpoint it wrote, and appends one JSON line to
bench/results.jsonl with the command, the machine, the figures and the command's peak memory (RSS). RESULTS.md quotes them.
"""

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from vdcli.checkpoint import load_checkpoint

HERE = Path(os.path.relpath(Path(__file__).parent))  # relative, so that the recorded command reads as typed


def main(kind: str, recipe: str, *extra: str) -> None:
    command = ["vd", f"train-{kind}", recipe, "--out", str(HERE / "runs"), "--device", "cpu", *extra]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - t0
    ckpt = load_checkpoint(HERE / "runs" / Path(recipe).stem / "latest" / "checkpoint.safetensors")
    row = {
        "command": " ".join(command),
        "wall_seconds": round(seconds, 1),
        "metrics": ckpt.meta.get("metrics", {}),
        "step": ckpt.meta["step"],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),  # Linux: KiB
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    with open(HERE / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
