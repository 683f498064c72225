"""Autoguidance: unconditional samples guided away from the model's own early weights."""

from pathlib import Path

import pytest
import torch
from test_cli import TINY_LDM, ok, recipe
from test_trainer import CPU, loss_fn, make_model, problem

from vdcli.checkpoint import load_checkpoint
from vdcli.recipe import TrainConfig
from vdcli.runs import Run, new_run
from vdcli.tasks.ldm import generate, load_ldm
from vdcli.trainer import Snapshot, StopFlag, TrainingInterrupted, fit


def _train(tmp_path, name, stop_at=None, run=None):
    cfg = TrainConfig(steps=12, batch_size=16, lr=1e-2, warmup_steps=3, log_every=4, eval_every=4, checkpoint_every=4, ema_decay=0.9)
    run = run or new_run(tmp_path / "runs", name)
    model, guide, seen, stop, calls = make_model(), make_model(), {}, StopFlag(), [0]

    def stopping_loss(model, batch):
        calls[0] += 1
        if calls[0] == stop_at:
            stop.request()
        return loss_fn(model, batch)

    def evaluate(ema_model, step):
        seen[step] = {k: v.clone() for k, v in ema_model.state_dict().items()}
        return {}

    fit(model, stopping_loss, problem(), cfg, run, kind="vit", meta={}, device=CPU, evaluate=evaluate,
        snapshots=[Snapshot("guide", 4, guide)], resume=stop_at is None and run.checkpoint.is_file(), quiet=True, stop=stop)
    return guide, seen, run


def test_the_guide_is_the_averaged_weights_of_its_step_and_a_resumed_run_reads_it_back(tmp_path):
    with pytest.raises(TrainingInterrupted):
        _train(tmp_path, "early", stop_at=3)  # stopped before the guide's step: no guide is saved yet
    assert not load_checkpoint(next((tmp_path / "runs" / "early").glob("2*")) / "checkpoint.safetensors").has("guide")
    guide, seen, _ = _train(tmp_path, "straight")
    assert all(torch.equal(guide.state_dict()[k], seen[4][k]) for k in seen[4])
    with pytest.raises(TrainingInterrupted):
        _train(tmp_path, "stopped", stop_at=6)
    resumed, _, run = _train(tmp_path, "stopped", run=Run(next((tmp_path / "runs" / "stopped").glob("2*"))))
    assert all(torch.equal(resumed.state_dict()[k], guide.state_dict()[k]) for k in seen[4])
    saved = load_checkpoint(run.checkpoint).weights("guide")
    assert all(torch.equal(saved[k], seen[4][k]) for k in seen[4])


def test_class_none_is_autoguided_when_the_recipe_kept_a_guide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok("train-ldm", recipe(tmp_path, "g", "ldm"), *TINY_LDM, "--set", "train.guide_at=0.5",
       "--set", "sample.autoguidance=2.5", "--quiet")
    ckpt = load_checkpoint(Path("runs/g/latest/checkpoint.safetensors"))
    assert ckpt.meta["guide_step"] == 5 and ckpt.has("guide")
    ldm = load_ldm(ckpt, CPU)
    assert ldm.guide is not None
    labels, names, w = ldm.request("none", None)
    assert (labels, names, w) == ([ldm.null_class], ["unconditional"], 2.5)
    assert ldm.request("none", 1.0)[2] == 1.0 and ldm.request("3", None)[2] == ldm.defaults.guidance
    null = torch.full((2,), ldm.null_class)
    plain = generate(ldm, null, steps=4, guidance=1.0, generator=torch.Generator().manual_seed(0))[0]
    guided = generate(ldm, null, steps=4, guidance=2.5, generator=torch.Generator().manual_seed(0))[0]
    assert not torch.equal(plain, guided)
    out = ok("sample", "--checkpoint", "runs/g/latest", "--class", "none", "--n", "2", "--out", "s.png")
    assert "autoguidance 2.5" in out


def test_without_a_guide_class_none_stays_unguided(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok("train-ldm", recipe(tmp_path, "n", "ldm"), *TINY_LDM, "--quiet")
    ldm = load_ldm(load_checkpoint(Path("runs/n/latest/checkpoint.safetensors")), CPU)
    assert ldm.guide is None and ldm.request("none", 4.0)[2] == 1.0
    out = ok("sample", "--checkpoint", "runs/n/latest", "--class", "none", "--guidance", "4", "--n", "2", "--out", "s")
    assert "--guidance 4 is not used" in out and "guidance 1," in out
