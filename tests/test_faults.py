"""Faults that are not the user's input: a full disk, a second process on a run, a crash inside the loop.

Each is injected into a real tiny training run (a few seconds) and must end with one line on stderr
and its exit code (2: the user can fix it; 1: vd or the machine failed), lose nothing (the previous
checkpoint loads, and resuming gives the uninterrupted run bit for bit), and leave nothing behind
(no empty run folder, no temporary file, no lock). SIGTERM under torchrun is in test_distributed.py.
"""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from typer.testing import CliRunner

import vdcli.checkpoint as checkpoint
from test_cli import TINY_VIT
from vdcli.checkpoint import load_checkpoint, read_header
from vdcli.cli import app
from vdcli.models.vit import ViT

runner = CliRunner()
TINY = [*TINY_VIT, "--set", "train.checkpoint_every=10", "--device", "cpu"]  # 30 steps, checkpoints at 10, 20, 30


def vd(*args):
    return runner.invoke(app, [str(a) for a in args])


def train(name: str = "k", *extra, debug: bool = False):
    Path(f"{name}.yaml").write_text("kind: vit\n")
    return vd(*(["--debug"] if debug else []), "train-vit", f"{name}.yaml", *TINY, "--quiet", *extra)


def one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def leftovers(root: Path) -> list[str]:
    """Temporary files, a previous optimizer state kept for a save that never finished, locks."""
    return sorted(str(p) for p in Path(root).rglob("*")
                  if p.name.endswith(".tmp") or "state-prev" in p.name or p.name.startswith(".lock"))


def runs_of(name: str, root: str = "runs") -> list[Path]:
    return sorted(p for p in (Path(root) / name).glob("*") if not p.is_symlink())


def same_tensors(a: Path, b: Path) -> bool:
    x, y = load_checkpoint(a), load_checkpoint(b)
    return x.meta["step"] == y.meta["step"] and x.tensors.keys() == y.tensors.keys() and \
        all(torch.equal(x.tensors[k], y.tensors[k]) for k in x.tensors)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The checkpoint of the same run, never interrupted."""
    folder = tmp_path_factory.mktemp("straight")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert train().exit_code == 0
    finally:
        os.chdir(cwd)
    return folder / "runs" / "k" / "latest" / "checkpoint.safetensors"


def fail_writes(monkeypatch, error: OSError | Exception, which: str, nth: int) -> dict:
    """The nth safetensors write of ``which`` ("weights" or "state") writes half its bytes and raises."""
    real, seen, switch = checkpoint.save_file, {"weights": 0, "state": 0}, {"on": True}

    def writer(tensors, filename, metadata=None):
        kind = "state" if ".state" in filename else "weights"
        seen[kind] += 1
        real(tensors, filename, metadata=metadata)
        if switch["on"] and kind == which and seen[kind] == nth:
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])  # the disk filled up at this byte
            raise error

    monkeypatch.setattr(checkpoint, "save_file", writer)
    return switch


ENOSPC = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")  # what safetensors raises


# --- a full disk, a quota, no permission ----------------------------------------------------


@pytest.mark.parametrize("which", ["weights", "state"])
def test_a_disk_that_fills_during_a_checkpoint_is_one_line_and_the_previous_checkpoint_resumes(which, monkeypatch, straight):
    switch = fail_writes(monkeypatch, ENOSPC, which, nth=2)  # the checkpoint of step 20
    result = train()
    assert result.exit_code == 2, result.output
    line = one_line(result)
    name = "checkpoint.state.safetensors" if which == "state" else "checkpoint.safetensors"
    assert line.startswith("error: cannot write ") and f"/{name} (" in line and "kB): no space left" in line, line
    run = Path("runs/k/latest")
    assert load_checkpoint(run / "checkpoint.safetensors").meta["step"] == 10  # the previous checkpoint is whole
    assert read_header(run / "checkpoint.state.safetensors")["step"] == "10"  # and so is its optimizer state
    assert leftovers("runs") == []

    switch["on"] = False  # space freed
    assert train("k", "--resume").exit_code == 0
    assert same_tensors(run / "checkpoint.safetensors", straight)  # nothing lost


@pytest.mark.parametrize("error, says", [
    (ENOSPC, "no space left on the device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk quota is exceeded"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
    (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
], ids=["ENOSPC", "EDQUOT", "EACCES", "EROFS"])
def test_a_run_that_cannot_write_its_first_checkpoint_leaves_no_folder_and_latest_where_it_was(error, says, monkeypatch):
    assert train().exit_code == 0
    (before,) = runs_of("k")
    fail_writes(monkeypatch, error, "state", nth=1)  # the first checkpoint of the second run
    result = train()
    assert result.exit_code == 2
    assert says in one_line(result) and "checkpoint.state.safetensors" in one_line(result)
    assert runs_of("k") == [before] and os.readlink("runs/k/latest") == before.name
    assert leftovers("runs") == []


def test_a_first_run_on_a_full_disk_leaves_nothing_at_all(monkeypatch):
    fail_writes(monkeypatch, ENOSPC, "weights", nth=1)
    result = train()
    assert result.exit_code == 2 and "no space left" in one_line(result)
    assert not Path("runs").exists()  # new_run made runs/ and runs/k/ for it: both gone


def test_a_real_full_tmpfs_is_one_line_and_leaves_nothing_on_it(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root, or no mount in this container)")
    try:
        result = train("k", "--out", disk)
        assert result.exit_code == 2, result.output
        assert "no space left" in one_line(result) and str(disk) in one_line(result)
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# --- two processes on one run ---------------------------------------------------------------


def vd_process(*args) -> list[str]:
    return [sys.executable, "-m", "vdcli", *map(str, args)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_a_second_process_on_a_run_in_training_is_refused_naming_the_owner(tmp_path):
    Path("r.yaml").write_text("kind: vit\n")
    owner = subprocess.Popen(vd_process("train-vit", "r.yaml", *TINY, "--set", "train.steps=100000", "--quiet"),
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not Path("runs/r/latest/metrics.jsonl").is_file() and owner.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert Path("runs/r/latest/metrics.jsonl").is_file(), "the first process never started training"
        lock = json.loads(Path("runs/r/latest/.lock").read_text())
        assert lock["pid"] == owner.pid and lock["host"] == socket.gethostname()

        second = subprocess.run(vd_process("train-vit", "r.yaml", *TINY, "--resume", "--quiet"), env=ENV,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and f"pid {owner.pid} on {socket.gethostname()}, since {lock['since']}" in lines[0], second.stderr
        assert owner.poll() is None  # the owner trains on, untouched
    finally:
        owner.send_signal(signal.SIGTERM)
        out, err = owner.communicate(timeout=120)
    assert owner.returncode == 130, err
    step = load_checkpoint("runs/r/latest/checkpoint.safetensors").meta["step"]
    assert f"interrupted at step {step}/100000" in err
    assert leftovers("runs") == []  # the owner released its lock


def dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_note(straight):
    assert train().exit_code == 0
    stale = {"pid": dead_pid(), "host": socket.gethostname(), "since": "2026-01-01 00:00:00"}
    Path("runs/k/latest/.lock").write_text(json.dumps(stale))  # as a SIGKILLed run leaves it
    result = train("k", "--resume", "--set", "train.steps=40")
    assert result.exit_code == 0, result.output
    assert f"took over the stale lock of runs/k/{runs_of('k')[0].name}: its owner (pid {stale['pid']}" in one_line(result)
    assert load_checkpoint("runs/k/latest/checkpoint.safetensors").meta["step"] == 40
    assert leftovers("runs") == []


def test_a_lock_from_another_host_is_refused_with_how_to_clear_it():
    assert train().exit_code == 0
    Path("runs/k/latest/.lock").write_text(json.dumps({"pid": 1, "host": "gpu-node-7", "since": "2026-01-01 00:00:00"}))
    result = train("k", "--resume")
    assert result.exit_code == 2
    line = one_line(result)
    assert "pid 1 on gpu-node-7, since 2026-01-01 00:00:00" in line and "remove runs/k/" in line and line.endswith("/.lock")
    assert load_checkpoint("runs/k/latest/checkpoint.safetensors").meta["step"] == 30  # untouched


# --- an unexpected exception inside the loop ------------------------------------------------


def crash_at(monkeypatch, call: int, error=RuntimeError("boom: CUDA error: an illegal memory access")):
    """The ViT's forward pass raises at its ``call``-th call: during the loss of training step ``call``."""
    real, calls, switch = ViT.forward, [0], {"on": True}

    def forward(self, *args, **kwargs):
        calls[0] += 1
        if switch["on"] and calls[0] == call:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ViT, "forward", forward)
    return switch


def test_a_crash_in_a_step_saves_the_last_whole_step_and_says_where_the_traceback_is(monkeypatch, straight):
    switch = crash_at(monkeypatch, 15)
    result = train()
    assert result.exit_code == 1, result.output
    line = one_line(result)
    (run,) = runs_of("k")
    assert line.startswith("error: training stopped by an unexpected RuntimeError: boom: CUDA error"), line
    assert f"saved step 14 to {run}/checkpoint.safetensors" in line and line.endswith(f"the full traceback is in {run}/error.log")
    assert "Traceback" in (run / "error.log").read_text() and "boom" in (run / "error.log").read_text()
    assert load_checkpoint(run / "checkpoint.safetensors").meta["step"] == 14
    assert leftovers("runs") == []

    switch["on"] = False
    assert train("k", "--resume").exit_code == 0
    assert same_tensors(run / "checkpoint.safetensors", straight)  # the rescued step was a consistent one


def test_a_crash_in_the_first_step_leaves_no_folder_and_writes_the_traceback_to_a_temporary_file(monkeypatch):
    crash_at(monkeypatch, 1)
    result = train()
    assert result.exit_code == 1
    line = one_line(result)
    assert "unexpected RuntimeError" in line and "no checkpoint was saved" in line
    log = Path(line.rsplit("the full traceback is in ", 1)[1])
    try:
        assert log.parent != Path("runs") and "boom" in log.read_text()
    finally:
        log.unlink()
    assert not Path("runs").exists()


def test_vd_debug_shows_the_traceback_inline_and_still_saves(monkeypatch):
    crash_at(monkeypatch, 15)
    result = train(debug=True)
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
    assert any("saved step 14" in note for note in result.exception.__notes__)
    assert load_checkpoint(runs_of("k")[0] / "checkpoint.safetensors").meta["step"] == 14
    after = vd("train-vit", "nope.yaml")  # --debug was for that command only
    assert after.exit_code == 2 and one_line(after).startswith("error: recipe nope.yaml not found")


def test_a_crash_in_the_middle_of_an_update_saves_nothing_newer(monkeypatch, tmp_path):
    from test_trainer import loss_fn, make_model, problem
    from vdcli.recipe import TrainConfig
    from vdcli.runs import new_run
    from vdcli.trainer import EMA, fit

    real, calls = EMA.update, [0]

    def update(self, model, step):
        calls[0] += 1
        if calls[0] == 15:  # the optimizer has stepped, the EMA not: a mix of steps 14 and 15
            raise MemoryError("out of memory")
        real(self, model, step)

    monkeypatch.setattr(EMA, "update", update)
    cfg = TrainConfig(steps=20, batch_size=16, warmup_steps=3, log_every=5, checkpoint_every=10, ema_decay=0.9)
    run = new_run(tmp_path / "runs", "mid")
    with pytest.raises(MemoryError) as caught:
        fit(make_model(), loss_fn, problem(), cfg, run, kind="vit", meta={}, device=torch.device("cpu"), quiet=True)
    assert caught.value.__notes__ == [f"vd: it struck during the update of step 15, so that step was not saved; "
                                      f"{run.checkpoint} holds step 10"]
    assert load_checkpoint(run.checkpoint).meta["step"] == 10
