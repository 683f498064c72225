"""Data parallel training: two CPU processes under torchrun (gloo) train as one process does."""

import json
import os
import subprocess
import sys
from pathlib import Path

from test_cli import TINY_LDM, TINY_VIT, ok, recipe


def torchrun(*args, procs: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               "-m", "vdcli", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in rows if "loss" in r]


def test_two_processes_log_the_losses_of_one_process_at_the_same_global_batch(tmp_path):
    ok("train-vit", recipe(tmp_path, "one"), *TINY_VIT, "--out", tmp_path / "single", "--quiet", "--device", "cpu")
    torchrun("train-vit", recipe(tmp_path, "one"), *TINY_VIT, "--out", tmp_path / "ddp", "--device", "cpu")
    single, ddp = losses(tmp_path / "single" / "one" / "latest"), losses(tmp_path / "ddp" / "one" / "latest")
    assert len(single) == len(ddp) >= 3
    # Each rank trains on half of the same global batch and DDP averages the gradients: the same updates,
    # up to the order of float additions.
    for a, b in zip(single, ddp):
        assert abs(a - b) <= 1e-4 * abs(a), (single, ddp)


def test_only_rank_zero_writes_one_run_folder_and_one_checkpoint(tmp_path):
    out = torchrun("train-ldm", recipe(tmp_path, "l", "ldm"), *TINY_LDM, "--out", tmp_path / "runs", "--device", "cpu")
    assert out.stdout.count("denoiser trained") == 1  # one summary, from rank 0
    runs = [p for p in (tmp_path / "runs" / "l").iterdir() if not p.is_symlink()]
    assert len(runs) == 1
    assert sorted(p.name for p in runs[0].rglob("checkpoint.safetensors")) == ["checkpoint.safetensors"] * 2  # denoiser, VAE stage
    ok("sample", "--checkpoint", runs[0], "--n", 1, "--steps", 2, "--out", tmp_path / "s")


def test_sigterm_stops_both_ranks_at_one_step_with_one_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path):
    import signal
    import time

    import torch

    from vdcli.checkpoint import load_checkpoint

    args = ["train-vit", recipe(tmp_path, "t"), *TINY_VIT, "--set", "train.steps=120", "--set", "train.eval_every=120",
            "--set", "train.checkpoint_every=1000", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vdcli"]
    proc = subprocess.Popen([*launcher, *map(str, args), "--out", str(tmp_path / "a")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "a" / "t" / "latest" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while (not metrics.is_file() or len(metrics.read_text().splitlines()) < 3) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)  # to torchrun, as a job scheduler does: it passes SIGTERM to both ranks
    _, err = proc.communicate(timeout=300)

    run = (tmp_path / "a" / "t" / "latest").resolve()
    step = load_checkpoint(run / "checkpoint.safetensors").meta["step"]
    assert 30 <= step < 120 and step % 10 == 0  # the ranks agree on a stop at a logging step
    assert err.count(f"interrupted at step {step}/120") == 1 and "torchrun --nproc_per_node=2 -m vdcli" in err  # rank 0's line
    assert json.loads(metrics.read_text().splitlines()[-1])["step"] == step
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.safetensors", "checkpoint.state.safetensors",
                                                     "metrics.jsonl", "recipe.yaml"]  # one checkpoint; no lock, no temporary file

    torchrun(*args, "--out", tmp_path / "a", "--resume")
    torchrun(*args, "--out", tmp_path / "b")
    resumed, straight = load_checkpoint(run / "checkpoint.safetensors"), load_checkpoint(tmp_path / "b" / "t" / "latest" / "checkpoint.safetensors")
    assert resumed.meta["step"] == straight.meta["step"] == 120
    assert all(torch.equal(resumed.tensors[k], straight.tensors[k]) for k in straight.tensors)


def test_two_processes_accumulating_micro_batches_log_the_losses_of_one_unsplit_process(tmp_path):
    """train.micro_batch under torchrun: each rank runs its 16 rows as two micro-batches of 8, all-reducing
    only after the second (no_sync); the updates are those of one process on the whole batch."""
    ok("train-vit", recipe(tmp_path, "one"), *TINY_VIT, "--out", tmp_path / "single", "--quiet", "--device", "cpu")
    torchrun("train-vit", recipe(tmp_path, "one"), *TINY_VIT, "--set", "train.micro_batch=8", "--out", tmp_path / "ddp",
             "--device", "cpu")
    single, ddp = losses(tmp_path / "single" / "one" / "latest"), losses(tmp_path / "ddp" / "one" / "latest")
    assert len(single) == len(ddp) >= 3
    for a, b in zip(single, ddp):
        assert abs(a - b) <= 1e-4 * abs(a), (single, ddp)
