"""Gradient accumulation: a step split into micro-batches is the unsplit step, to float tolerance."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from vdcli import trainer
from vdcli.diffusion import NoiseSchedule, diffusion_loss
from vdcli.errors import VdError
from vdcli.recipe import CLIPTrainConfig, TrainConfig
from vdcli.runs import Run, new_run
from vdcli.trainer import StopFlag, TrainingInterrupted, fit

CPU = torch.device("cpu")
SCHEDULE = NoiseSchedule("linear", 50)


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)


class Denoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.label, self.out = torch.nn.Linear(9, 32), torch.nn.Embedding(4, 32), torch.nn.Linear(32, 8)
        self.drop = torch.nn.Dropout(0.2)

    def forward(self, x, t, y):
        h = self.inp(torch.cat([x, t[:, None].float() / 50], 1)) + self.label(y)
        return self.out(self.drop(F.gelu(h)))


def loss_fn(model, batch):
    """An LDM's draws: a posterior sample (randn_like), a label drop (rand), then diffusion_loss's
    time steps (randint) and noise (randn), and dropout inside the network."""
    x, y = batch
    x = x + 0.1 * torch.randn_like(x)
    y = torch.where(torch.rand(y.shape) < 0.3, torch.full_like(y, 3), y)
    return diffusion_loss(lambda z, t: model(z, t, y), x, SCHEDULE), {"rows": torch.tensor(float(len(x)))}


def train(tmp_path, name, steps=6, stop_at=None, resume_run=None, **cfg):
    cfg = TrainConfig(steps=steps, batch_size=16, lr=1e-2, warmup_steps=2, log_every=2, eval_every=100, checkpoint_every=100,
                      ema_decay=0.9, **cfg)
    run = resume_run or new_run(tmp_path / "runs", name)
    stop, calls = StopFlag(), [0]

    def stopping_loss(model, batch):
        calls[0] += 1
        if calls[0] == stop_at:
            stop.request()
        return loss_fn(model, batch)

    with trainer.seeded_init(0, "denoiser"):
        model = Denoiser()
    result = fit(model, stopping_loss, data(), cfg, run, kind="ldm", meta={}, device=CPU, resume=resume_run is not None,
                 quiet=True, stop=stop)
    return model, result


def close(a, b, atol=1e-5):
    return all(torch.allclose(x, y, atol=atol, rtol=1e-4) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("micro", [8, 4, 1])
def test_micro_batches_give_the_full_batch_weights(tmp_path, micro):
    full, a = train(tmp_path, "full")
    split, b = train(tmp_path, f"split{micro}", micro_batch=micro)
    assert close(full, split)
    assert a.loss == pytest.approx(b.loss, rel=1e-5)  # the logged loss is the whole batch's mean


def test_without_replaying_the_draws_the_weights_differ(tmp_path, monkeypatch):
    """The replay of the whole batch's draws is what makes a split step the unsplit one."""
    full, _ = train(tmp_path, "full")
    monkeypatch.setattr(trainer, "whole_batch_draws", lambda part, rows: contextlib.nullcontext())
    split, _ = train(tmp_path, "split", micro_batch=4)
    assert not close(full, split)


def gradients(micro):
    with trainer.seeded_init(0, "denoiser"):
        model = Denoiser()
    x, y = data()
    loss, logs = trainer._accumulate(model, None, loss_fn, (x[:16], y[:16]), micro, CPU, step_seed=7)
    return loss, logs, [p.grad for p in model.parameters()]


@pytest.mark.parametrize("micro", [8, 2])
def test_summed_gradients_are_the_full_batch_mean_loss_gradient(micro):
    """AdamW hardly sees a gradient's scale, so the scaling is checked on the gradients themselves."""
    torch.manual_seed(7)
    loss, logs, grads = gradients(None)
    split_loss, split_logs, split_grads = gradients(micro)
    assert split_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    assert split_logs["rows"].item() == pytest.approx(micro)  # a logged mean is the mean of the micro-batches'
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(grads, split_grads))


def test_accumulated_run_resumes_bitwise(tmp_path):
    straight, _ = train(tmp_path, "a", steps=8, micro_batch=4)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 3/8"):
        train(tmp_path, "b", steps=8, micro_batch=4, stop_at=3 * 4)  # during step 3's last micro-batch
    run = Run(next((tmp_path / "runs" / "b").glob("2*")))
    resumed, _ = train(tmp_path, "b", steps=8, micro_batch=4, resume_run=run)
    assert all(torch.equal(x, y) for x, y in zip(straight.state_dict().values(), resumed.state_dict().values()))


def test_micro_batch_must_divide_the_batch():
    with pytest.raises(ValueError, match="train.micro_batch 5 does not divide train.batch_size 16"):
        TrainConfig(batch_size=16, micro_batch=5)


def test_clip_refuses_micro_batches():
    with pytest.raises(ValueError, match="contrastive loss"):
        CLIPTrainConfig(batch_size=16, micro_batch=4)


def test_unsplit_step_is_unchanged(tmp_path):
    """micro_batch equal to the batch is the plain path, bitwise."""
    a, _ = train(tmp_path, "a")
    b, _ = train(tmp_path, "b", micro_batch=16)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_draws_have_their_unsplit_values():
    from vdcli.accumulate import WholeBatchDraws
    torch.manual_seed(3)
    whole = (torch.randn(8, 2), torch.rand((8,)), torch.randint(0, 9, (8, 3)), torch.randn_like(torch.zeros(8, 4)),
             F.dropout(torch.ones(8, 5), 0.5, True))
    for k in range(4):
        torch.manual_seed(3)
        with WholeBatchDraws(slice(2 * k, 2 * k + 2), 8):
            part = (torch.randn(2, 2), torch.rand((2,)), torch.randint(0, 9, (2, 3)), torch.randn_like(torch.zeros(2, 4)),
                    F.dropout(torch.ones(2, 5), 0.5, True))
        for w, p in zip(whole, part):
            assert torch.equal(w[2 * k : 2 * k + 2], p)
