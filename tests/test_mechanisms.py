"""Mechanisms of training that no sample shows directly, observed where they act.

Each test watches what the network receives (or what the loss weighs) during a real ``fit``, so
that a training step that never drops a label to the null class, never drops a caption to the
empty prompt, never drops a control map, or ignores ``min_snr_gamma`` fails a test. (Each was
checked by breaking the mechanism on purpose: see the CHANGELOG.)
"""

from pathlib import Path

import pytest
import torch
from test_cli import TINY_LDM, ok, recipe
from test_text_ldm import TINY_TEXT

from vdcli.diffusion import NoiseSchedule, diffusion_loss, snr_weight
from vdcli.models.controlnet import ControlNet
from vdcli.models.unet import UNet
from vdcli.tasks import controlnet as controlnet_task
from vdcli.tasks import ldm_train


def _watch_training_calls(monkeypatch, cls, record):
    """Record what every training-mode forward of ``cls`` receives (evaluations run in eval mode)."""
    forward = cls.forward

    def watched(self, *args, **kwargs):
        if self.training:
            record(*args, **kwargs)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", watched)


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_class_training_drops_labels_to_the_null_class_at_its_rate(tmp_path, monkeypatch, rate):
    seen = []
    _watch_training_calls(monkeypatch, UNet, lambda x, t, cond=None, control=None: seen.append(cond.labels.clone()))
    ok("train-ldm", recipe(tmp_path, "l", "ldm"), *TINY_LDM, "--set", f"train.cond_drop_prob={rate}", "--quiet")
    labels = torch.cat(seen)
    null = 6  # synthetic shapes: classes 0..5, the null class 6
    assert len(labels) == 10 * 32 and labels.max() <= null
    share = (labels == null).float().mean().item()
    assert (share == 0.0) if rate == 0.0 else (0.4 < share < 0.6)  # 320 draws: a binomial s.e. of 0.028


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_text_training_drops_captions_to_the_empty_prompt_at_its_rate(tmp_path, monkeypatch, rate):
    seen = []
    _watch_training_calls(monkeypatch, UNet, lambda x, t, cond=None, control=None: seen.append(cond.mask.sum(1)))
    ok("train-ldm", recipe(tmp_path, "t", "ldm"), *TINY_LDM, *TINY_TEXT, "--set", f"train.cond_drop_prob={rate}", "--quiet")
    lengths = torch.cat(seen)
    share = (lengths == 1).float().mean().item()  # the empty prompt is the single token [END]; no caption is
    assert len(lengths) == 10 * 32
    assert (share == 0.0) if rate == 0.0 else (0.4 < share < 0.6)


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_controlnet_training_drops_control_maps_to_an_empty_map_at_its_rate(tmp_path, monkeypatch, rate):
    ok("train-ldm", recipe(tmp_path, "base", "ldm"), *TINY_LDM, "--quiet")
    seen = []
    _watch_training_calls(monkeypatch, ControlNet, lambda x, t, hint, cond=None: seen.append(hint.flatten(1).amax(1) == 0))
    cn = tmp_path / "cn.yaml"
    cn.write_text("kind: controlnet\nbase: runs/base/latest\ncontrol: edges\n")
    ok("train-controlnet", cn, "--set", "train.steps=8", "--set", "train.batch_size=32", "--set", "train.eval_every=8",
       "--set", f"train.control_drop_prob={rate}", "--quiet")
    empty = torch.cat(seen).float()
    assert len(empty) == 8 * 32
    assert (empty.mean() < 0.05) if rate == 0.0 else (0.4 < empty.mean() < 0.6)


def test_min_snr_weights_are_min_snr_gamma_over_snr_plus_one_on_a_known_batch():
    schedule, gamma = NoiseSchedule("linear", 1000, "v"), 1.0
    x0 = torch.randn(64, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    loss = diffusion_loss(lambda x, t: torch.zeros_like(x), x0, schedule, gamma, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # the same draws, by hand: t, then ε
    t = torch.randint(0, 1000, (64,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    a = schedule.alpha_bar(t)
    v = a.sqrt().float()[:, None, None, None] * eps - (1 - a).sqrt().float()[:, None, None, None] * x0
    snr = a / (1 - a)
    weights = snr.clamp(max=gamma) / (snr + 1)
    assert torch.allclose(snr_weight(schedule, t, gamma), weights)
    expected = (v.pow(2).flatten(1).mean(1).double() * weights).mean()
    assert torch.allclose(loss.double(), expected, rtol=1e-5)
    plain = diffusion_loss(lambda x, t: torch.zeros_like(x), x0, schedule, None, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(plain, loss)  # the weights change the loss


@pytest.mark.parametrize("task", [ldm_train, controlnet_task], ids=["ldm", "controlnet"])
def test_training_weighs_its_loss_with_the_recipes_min_snr_gamma(tmp_path, monkeypatch, task):
    gammas = []
    loss = task.diffusion_loss

    def watched(model_fn, x0, schedule, min_snr_gamma=None, generator=None):
        gammas.append(min_snr_gamma)
        return loss(model_fn, x0, schedule, min_snr_gamma, generator)

    if task is controlnet_task:
        ok("train-ldm", recipe(tmp_path, "base", "ldm"), *TINY_LDM, "--set", "diffusion.min_snr_gamma=2.5", "--quiet")
    monkeypatch.setattr(task, "diffusion_loss", watched)
    if task is ldm_train:
        ok("train-ldm", recipe(tmp_path, "l", "ldm"), *TINY_LDM, "--set", "diffusion.min_snr_gamma=2.5", "--quiet")
    else:
        cn = tmp_path / "cn.yaml"
        cn.write_text("kind: controlnet\nbase: runs/base/latest\ncontrol: edges\n")
        ok("train-controlnet", cn, "--set", "train.steps=4", "--set", "train.batch_size=16", "--set", "train.eval_every=4", "--quiet")
    assert len(gammas) >= 4 and set(gammas) == {2.5}
    assert Path("runs").is_dir()
