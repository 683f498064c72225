"""The U-Net and DiT denoisers: same interface, shape-preserving, conditioned on t and y."""

import pytest
import torch

from vdcli.models.dit import DiT, DiTConfig
from vdcli.models.unet import UNet, UNetConfig


def unet(size=8):
    return UNet(UNetConfig(channels=16, channel_mult=[1, 2], blocks_per_level=1), size, 4, 10)


def dit(size=8):
    return DiT(DiTConfig(patch_size=2, dim=32, depth=2, heads=2), size, 4, 10)


@pytest.mark.parametrize("make", [unet, dit], ids=["unet", "dit"])
@pytest.mark.parametrize("size", [8, 32])
def test_output_has_the_input_shape(make, size):
    x = torch.randn(3, 4, size, size)
    assert make(size)(x, torch.tensor([0, 500, 999]), torch.tensor([0, 9, 10])).shape == x.shape


@pytest.mark.parametrize("make", [unet, dit], ids=["unet", "dit"])
def test_untrained_denoiser_predicts_zero(make):
    # zero-initialised output layers (U-Net) and adaLN-Zero (DiT): training starts from "no noise"
    out = make()(torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 10]))
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("make", [unet, dit], ids=["unet", "dit"])
def test_training_steps_make_the_output_depend_on_time_and_class(make):
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(8, 4, 8, 8)
    t, y = torch.randint(0, 1000, (8,)), torch.randint(0, 11, (8,))
    target = torch.randn(8, 4, 8, 8)
    losses = []
    for _ in range(15):
        loss = (model(x, t, y) - target).pow(2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]
    with torch.no_grad():
        base = model(x[:1], t[:1], y[:1])
        assert not torch.allclose(base, model(x[:1], t[:1] + 1, y[:1]))
        assert not torch.allclose(base, model(x[:1], t[:1], (y[:1] + 1) % 11))
