"""Time a training recipe end to end and record its quality figure.

    VD_DATA_ROOT=../shared/datasets python bench/train.py vit recipes/mnist_vit.yaml
    VD_DATA_ROOT=../shared/datasets python bench/train.py vae recipes/mnist_vae.yaml
    VD_DATA_ROOT=../shared/datasets python bench/train.py ldm recipes/mnist_latent.yaml

Runs the real command (`vd train-<kind> RECIPE --out bench/runs`, with the data root of
``common.data_root``), measures its wall time, reads the figures from the checkpoint it wrote, and
appends one JSON line to bench/results.jsonl with the command, the figures, the command's peak
memory (RSS) and the provenance every row carries (``common.provenance``). RESULTS.md quotes them.
"""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import RUNS, data_root, record

from vdcli.checkpoint import load_checkpoint


def main(kind: str, recipe: str, *extra: str) -> None:
    command = ["vd", f"train-{kind}", recipe, "--out", str(RUNS), "--device", "cpu", *extra]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1", "VD_DATA_ROOT": str(data_root())})
    seconds = time.perf_counter() - t0
    ckpt = load_checkpoint(RUNS / Path(recipe).stem / "latest" / "checkpoint.safetensors")
    row = record({
        "bench": "train",
        "command": " ".join(command),
        "wall_seconds": round(seconds, 1),
        "metrics": ckpt.meta.get("metrics", {}),
        "step": ckpt.meta["step"],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),  # Linux: KiB
    })
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] in ("-h", "--help"):
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
