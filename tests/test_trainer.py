"""The shared training loop: reproducible, resumable bit for bit, interruptible without loss."""

import json
import math

import pytest
import torch

from vdcli.checkpoint import load_checkpoint
from vdcli.device import pick_device
from vdcli.errors import VdError
from vdcli.recipe import TrainConfig
from vdcli.runs import Run, new_run
from vdcli.trainer import EMA, StopFlag, TrainingInterrupted, adamw, clip_gradients, fit, lr_at

CPU = torch.device("cpu")


def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, :3].sum(1) > 0).long()
    return x, y


def loss_fn(model, batch):
    x, y = batch
    x = torch.nn.functional.dropout(x, 0.2)  # a random draw each step: resuming must replay it
    return torch.nn.functional.cross_entropy(model(x), y), {}


def make_model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 2))


def train(tmp_path, name, steps=20, stop_at=None, resume_run=None, **cfg):
    cfg = TrainConfig(steps=steps, batch_size=16, lr=1e-2, warmup_steps=3, log_every=5, eval_every=10, checkpoint_every=10, **cfg)
    run = resume_run or new_run(tmp_path / "runs", name)
    stop, calls = StopFlag(), [0]

    def stopping_loss(model, batch):  # as if Ctrl-C arrived during step `stop_at`
        calls[0] += 1
        if calls[0] == stop_at:
            stop.request()
        return loss_fn(model, batch)

    model = make_model()
    result = fit(model, stopping_loss, problem(), cfg, run, kind="vit", meta={}, device=CPU,
                 resume=resume_run is not None, quiet=True, stop=stop)
    return model, result


def test_resume_continues_bitwise(tmp_path):
    straight, _ = train(tmp_path, "a", steps=20, ema_decay=0.9)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 7/20"):
        train(tmp_path, "b", steps=20, stop_at=7, ema_decay=0.9)
    run = Run(next((tmp_path / "runs" / "b").glob("2*")))
    assert load_checkpoint(run.checkpoint).meta["step"] == 7
    resumed, _ = train(tmp_path, "b", steps=20, resume_run=run, ema_decay=0.9)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    ema_a = load_checkpoint(next((tmp_path / "runs" / "a").glob("2*")) / "checkpoint.safetensors").weights("ema")
    ema_b = load_checkpoint(run.checkpoint).weights("ema")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_resumed_metrics_have_no_duplicate_steps(tmp_path):
    with pytest.raises(TrainingInterrupted):
        train(tmp_path, "b", steps=20, stop_at=12)
    run = Run(next((tmp_path / "runs" / "b").glob("2*")))
    train(tmp_path, "b", steps=20, resume_run=run)
    steps = [json.loads(line)["step"] for line in run.metrics.read_text().splitlines() if "loss" in line]
    assert steps == [5, 10, 15, 20]


def test_same_seed_same_weights(tmp_path):
    a, _ = train(tmp_path, "a")
    b, _ = train(tmp_path, "b")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_training_reduces_the_loss(tmp_path):
    model = make_model()
    x, y = problem()
    before = torch.nn.functional.cross_entropy(model(x), y).item()
    trained, result = train(tmp_path, "a", steps=60)
    assert torch.nn.functional.cross_entropy(trained(x), y).item() < 0.7 * before


def test_run_writes_checkpoint_metrics_and_loss_curve(tmp_path):
    _, result = train(tmp_path, "a")
    names = {p.name for p in result.run.dir.iterdir()}
    assert {"checkpoint.safetensors", "checkpoint.state.safetensors", "metrics.jsonl", "loss.png"} <= names


def test_lr_warms_up_then_decays_to_zero():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.5) and lr_at(100, cfg) == pytest.approx(0.0)


def test_resuming_a_finished_run_says_how_to_continue(tmp_path):
    _, result = train(tmp_path, "a", steps=10)
    with pytest.raises(VdError, match="train.steps"):
        train(tmp_path, "a", steps=10, resume_run=result.run)


def test_asking_for_cuda_without_one_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(VdError, match="no CUDA device"):
        pick_device("cuda")


def test_a_real_sigint_saves_a_checkpoint_before_stopping(tmp_path):
    import os
    import signal

    calls = [0]

    def interrupted_loss(model, batch):
        calls[0] += 1
        if calls[0] == 4:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step 4
        return loss_fn(model, batch)

    cfg = TrainConfig(steps=20, batch_size=16, warmup_steps=2, log_every=5, checkpoint_every=10)
    run = new_run(tmp_path / "runs", "sig")
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest itself runs in a background job
    with pytest.raises(TrainingInterrupted, match="step 4/20"):
        fit(make_model(), interrupted_loss, problem(), cfg, run, kind="vit", meta={}, device=CPU, quiet=True)
    assert load_checkpoint(run.checkpoint).meta["step"] == 4
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored


def test_ctrl_c_during_the_last_step_just_finishes_the_run(tmp_path):
    _, result = train(tmp_path, "a", steps=10, stop_at=10)  # no TrainingInterrupted
    assert result.step == 10 and load_checkpoint(result.run.checkpoint).meta["step"] == 10


KILLED_MID_SAVE = """
import pathlib, sys, time
import vdcli.checkpoint as checkpoint
real, saves, marker = checkpoint.save_file, [0], pathlib.Path(sys.argv[1])

def half_then_hang(tensors, filename, metadata=None):
    if ".state" not in filename:
        saves[0] += 1
        if saves[0] == 2:  # the second checkpoint: cut off half-way through its weights
            real(tensors, filename, metadata=metadata)
            data = pathlib.Path(filename).read_bytes()
            pathlib.Path(filename).write_bytes(data[: len(data) // 2])
            marker.touch()
            time.sleep(600)
    real(tensors, filename, metadata=metadata)

checkpoint.save_file = half_then_hang
from vdcli.cli import main
sys.argv = ["vd", *sys.argv[2:]]
main()
"""


def test_a_process_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from test_cli import TINY_VIT, ok, recipe

    path = recipe(tmp_path, "k", "vit")
    args = ["train-vit", str(path), *TINY_VIT, "--set", "train.checkpoint_every=10", "--quiet"]
    marker = tmp_path / "half-written"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_SAVE, str(marker), *args, "--out", str(tmp_path / "a")],
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the training never reached its second checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    run = tmp_path / "a" / "k" / "latest"
    assert load_checkpoint(run / "checkpoint.safetensors").meta["step"] == 10  # the previous checkpoint is whole
    ok(*args, "--out", tmp_path / "a", "--resume")
    ok(*args, "--out", tmp_path / "b")  # the same run, never interrupted
    resumed = load_checkpoint(run / "checkpoint.safetensors")
    straight = load_checkpoint(tmp_path / "b" / "k" / "latest" / "checkpoint.safetensors")
    assert resumed.meta["step"] == straight.meta["step"] == 30
    assert all(torch.equal(resumed.tensors[k], straight.tensors[k]) for k in straight.tensors)


def test_train_compile_is_accepted_on_the_cpu_and_saves_plain_keys(tmp_path):
    model, result = train(tmp_path, "c", steps=6, compile=True)
    keys = load_checkpoint(result.run.checkpoint).weights("model").keys()
    assert set(keys) == set(make_model().state_dict()) and not any("_orig_mod" in k for k in keys)
    assert math.isfinite(result.loss)  # a loss was read at the last step, and it is a number


def test_a_nan_loss_stops_the_run_by_the_next_logging_step_and_saves_no_checkpoint(tmp_path):
    calls = [0]

    def nan_at_step_3(model, batch):
        calls[0] += 1
        loss, logs = loss_fn(model, batch)
        return (loss * float("nan") if calls[0] == 3 else loss), logs

    cfg = TrainConfig(steps=20, batch_size=16, lr=1e-2, warmup_steps=3, log_every=5, checkpoint_every=5)
    run = new_run(tmp_path / "runs", "nan")
    with pytest.raises(VdError, match="the loss became nan at step 3; lower train.lr"):
        fit(make_model(), nan_at_step_3, problem(), cfg, run, kind="vit", meta={}, device=CPU, quiet=True)
    assert calls[0] <= 5  # found at step 5, the first logging step, at the latest
    assert not run.checkpoint.exists()


def test_the_fused_optimizer_and_clipping_take_the_textbook_step():
    """trainer.adamw (fused) and clip_gradients (multi-tensor) against torch's per-parameter loop."""
    a, b = make_model(), make_model()
    x, y = problem()
    opt_a = adamw(a, 1e-2, 0.05)
    opt_b = torch.optim.AdamW([{"params": [p for p in b.parameters() if p.ndim >= 2], "weight_decay": 0.05},
                               {"params": [p for p in b.parameters() if p.ndim < 2], "weight_decay": 0.0}],
                              lr=1e-2, foreach=False)
    for _ in range(5):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).mul(50).backward()  # large: the clip acts
            if model is a:
                clip_gradients(a, 1.0)
            else:
                torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0, foreach=False)
            opt.step()
    assert [g["weight_decay"] for g in opt_a.param_groups] == [0.05, 0.0]
    assert opt_a.defaults["fused"]
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_the_ema_moves_every_weight_towards_the_model_by_one_minus_the_decay():
    model = make_model()
    ema = EMA(model, decay=0.9)
    before = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, step=1000)  # past the warm-up: the decay is 0.9
    for old, new, target in zip(before, ema.model.parameters(), model.parameters()):
        torch.testing.assert_close(new, old + 0.1 * (target - old))
    # In the warm-up the decay is (1 + step) / (10 + step), below ema_decay: 0.1 at step 0 (what
    # the recipes' comments rely on: 0.999 is not reached before step 9000).
    before = [p.clone() for p in ema.model.parameters()]
    ema.update(model, step=0)
    for old, new, target in zip(before, ema.model.parameters(), model.parameters()):
        torch.testing.assert_close(new, old + 0.9 * (target - old))
