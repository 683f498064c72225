"""The U-Net denoiser: shape-preserving, conditioned on t and y, trainable, and strict about its config."""

import pytest
import torch
from pydantic import ValidationError

from vdcli.conditioning import Cond
from vdcli.models.unet import SelfAttention, UNet, UNetConfig

NUM_CLASSES = 10  # label 10 is the null class


def small(**overrides) -> UNetConfig:
    return UNetConfig(**{"channels": 16, "channel_mult": [1, 2], "blocks_per_level": 1, **overrides})


def perturbed(model: UNet) -> UNet:
    """The model with every weight nudged: the zero-initialised layers otherwise hide the conditioning."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize(
    "cfg, size, channels",
    [
        (UNetConfig(), 8, 4),  # the default, on 4x8x8 latents
        (small(), 8, 4),
        (small(channel_mult=[1]), 8, 4),  # one level: no resampling at all
        (small(channel_mult=[1, 2, 2], attention_levels=[1, 2]), 32, 3),  # pixels
        (small(blocks_per_level=3, attention_levels=[0, 1]), 16, 1),
    ],
)
def test_output_has_the_input_shape(cfg, size, channels):
    x = torch.randn(2, channels, size, size)
    out = perturbed(UNet(cfg, size, channels, NUM_CLASSES))(x, torch.tensor([0, 999]), Cond(labels=torch.tensor([3, NUM_CLASSES])))
    assert out.shape == x.shape


def test_untrained_model_predicts_exactly_zero():
    out = UNet(small(), 8, 4, NUM_CLASSES)(torch.randn(2, 4, 8, 8), torch.tensor([5, 900]), Cond(labels=torch.tensor([1, 2])))
    assert torch.count_nonzero(out) == 0


def test_output_depends_on_the_timestep():
    model = perturbed(UNet(small(), 8, 4, NUM_CLASSES)).eval()
    x, y = torch.randn(1, 4, 8, 8), torch.tensor([3])
    with torch.no_grad():
        assert not torch.allclose(model(x, torch.tensor([10]), Cond(labels=y)), model(x, torch.tensor([500]), Cond(labels=y)))


def test_output_depends_on_the_class_and_the_null_class_is_a_label():
    model = perturbed(UNet(small(), 8, 4, NUM_CLASSES)).eval()
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([250])
    with torch.no_grad():
        outs = [model(x, t, Cond(labels=torch.tensor([label]))) for label in (0, 7, NUM_CLASSES)]
    assert not torch.allclose(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


def test_fractional_timesteps_are_accepted_and_integer_ones_mean_the_same():
    model = perturbed(UNet(small(), 8, 4, NUM_CLASSES)).eval()
    x, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.allclose(model(x, torch.tensor([3, 40]), Cond(labels=y)), model(x, torch.tensor([3.0, 40.0]), Cond(labels=y)))
        assert model(x, torch.tensor([3.5, 40.25]), Cond(labels=y)).shape == x.shape


def test_each_sample_is_denoised_independently_of_the_rest_of_the_batch():
    model = perturbed(UNet(small(), 8, 4, NUM_CLASSES)).eval()
    x, t, y = torch.randn(4, 4, 8, 8), torch.tensor([1, 200, 400, 999]), torch.tensor([0, 1, 2, 10])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, Cond(labels=y))[:1], model(x[:1], t[:1], Cond(labels=y[:1])), atol=1e-5, rtol=1e-4)


def test_a_few_adam_steps_fit_a_fixed_target():
    torch.manual_seed(0)
    model = UNet(small(), 8, 4, NUM_CLASSES)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, t, y = torch.randn(8, 4, 8, 8), torch.randint(0, 1000, (8,)), torch.randint(0, NUM_CLASSES + 1, (8,))
    target = torch.randn(8, 4, 8, 8)
    losses = []
    for _ in range(20):
        loss = (model(x, t, Cond(labels=y)) - target).pow(2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.8 * losses[0]


def test_attention_defaults_to_the_lowest_resolution_only():
    cfg = small(channel_mult=[1, 2, 2])
    model = UNet(cfg, 16, 4, NUM_CLASSES)
    # level 2 only: 1 layer going down, the middle, 2 layers going up
    assert cfg.attended_levels() == {2}
    assert sum(isinstance(m, SelfAttention) for m in model.modules()) == 4


def test_an_attention_level_beyond_channel_mult_is_rejected():
    with pytest.raises(ValidationError, match=r"model.attention_levels \[2\] do not exist"):
        small(channel_mult=[1, 2], attention_levels=[1, 2])


def test_heads_must_divide_the_width_of_every_attended_level():
    with pytest.raises(ValidationError, match="model.heads"):
        small(channels=12, heads=16)  # the 4x4 level is 24 wide


def test_an_input_too_small_for_the_levels_is_rejected():
    with pytest.raises(ValueError, match="cannot be halved 2 times"):
        UNet(small(channel_mult=[1, 2, 2]), 6, 4, NUM_CLASSES)


def test_channels_last_computes_the_same_function():
    """What device.prepare does to a conv net on CUDA, checked where the tests run: the CPU."""
    from vdcli.device import channels_last

    model = perturbed(UNet(small(attention_levels=[0, 1]), 8, 4, NUM_CLASSES))
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999]), torch.tensor([1, 2, NUM_CLASSES])
    expected = model(x, t, Cond(labels=y))
    keys = list(model.state_dict())
    out = channels_last(model)(x.contiguous(memory_format=torch.channels_last), t, Cond(labels=y))
    assert model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
