"""Data parallel training under torchrun: who this process is, and the few collective steps.

    torchrun --nproc_per_node=N -m vdcli train-ldm RECIPE

torchrun starts N processes and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address in
their environment; without it WORLD_SIZE is 1 and everything here is a no-op, so one code path
serves a laptop and a GPU box. ``setup`` joins the process group (NCCL on CUDA, gloo on CPUs)
and pins each process to its GPU (cuda:LOCAL_RANK).

What the rest of vd does with it (``trainer.fit``, ``checkpoint.atomic_write``, ``cli/app.py``):
- ``train.batch_size`` is the global batch: every process draws the same batch rows for a step and
  trains on its share rows[rank::world]; DistributedDataParallel averages the gradients, which is
  then the gradient of the whole batch's mean loss, as in one process.
- Only rank 0 writes files. Checkpoints, images, latent shards and control maps go through
  ``atomic_write``, which does nothing on the other ranks; the run folder with its ``latest``
  link and ``recipe.yaml`` (``cli/app.py``) and the appended ``metrics.jsonl`` (``trainer.fit``)
  are written by rank 0 alone. The one exception: on resume ``trainer._truncate_metrics``
  rewrites ``metrics.jsonl`` on every rank. The other ranks wait at a barrier wherever they read
  back what rank 0 wrote.
- Each rank's random draws (noise, timesteps, dropout) come from (seed, step, rank): rank 0
  draws what a single process draws.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Whether torchrun (or another launcher that sets WORLD_SIZE) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; return the device this process trains on."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast(value):
    """Rank 0's ``value`` (any picklable object), on every rank."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the ranks (a copy; the input is untouched)."""
    if world_size() == 1:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()
