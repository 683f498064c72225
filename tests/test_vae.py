"""The KL autoencoder: latent shapes, the KL term, learning, and the errors a recipe can hit."""

import math

import pytest
import torch
from pydantic import ValidationError

from vdcli.models.vae import AutoencoderKL, VAEConfig, kl_divergence, vae_loss


def squares_and_discs(n: int, size: int) -> torch.Tensor:
    """n white squares and discs on black, [n, 1, size, size] in [-1, 1], at fixed places."""
    g = torch.Generator().manual_seed(0)
    centre = size / 4 + torch.rand(n, 2, generator=g) * size / 2  # (n, 2)
    radius = size / 8 + torch.rand(n, generator=g) * size / 8  # (n,)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dy = (coords[None, :, None] - centre[:, 0, None, None]).abs()  # (n, size, 1)
    dx = (coords[None, None, :] - centre[:, 1, None, None]).abs()  # (n, 1, size)
    r = radius[:, None, None]
    square = torch.maximum(dx, dy) <= r
    disc = dx**2 + dy**2 <= r**2
    is_square = (torch.arange(n) % 2 == 0)[:, None, None]
    return torch.where(is_square, square, disc).float()[:, None] * 2 - 1  # (n, 1, size, size)


@pytest.mark.parametrize("downsample", [1, 2, 4, 8])
@pytest.mark.parametrize("latent_channels", [1, 4])
def test_latent_grid_is_downsample_times_smaller(downsample, latent_channels):
    vae = AutoencoderKL(VAEConfig(downsample=downsample, latent_channels=latent_channels, channels=8), 32, 3)
    x = torch.randn(2, 3, 32, 32)
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (2, latent_channels, 32 // downsample, 32 // downsample)
    assert vae.latent_shape == mean.shape[1:]
    assert vae.decode(mean).shape == x.shape
    recon, mean2, logvar2 = vae(x)
    assert recon.shape == x.shape and mean2.shape == logvar2.shape == mean.shape


def test_the_same_generator_draws_the_same_sample():
    vae = AutoencoderKL(VAEConfig(downsample=2, channels=8), 16, 1)
    x = squares_and_discs(2, 16)
    a, *_ = vae(x, generator=torch.Generator().manual_seed(1))
    b, *_ = vae(x, generator=torch.Generator().manual_seed(1))
    c, *_ = vae(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_log_variance_is_clamped_to_a_finite_range():
    vae = AutoencoderKL(VAEConfig(downsample=2, channels=8), 16, 1)
    with torch.no_grad():
        vae.encoder.conv_out.bias.fill_(1e4)  # an encoder gone wild
    mean, logvar = vae.encode(squares_and_discs(2, 16))
    assert logvar.max().item() == 20.0
    assert torch.isfinite(kl_divergence(mean, logvar))


def test_kl_of_an_exact_standard_normal_is_zero():
    assert kl_divergence(torch.zeros(3, 4, 8, 8), torch.zeros(3, 4, 8, 8)).item() == 0.0


@pytest.mark.parametrize("mean, logvar", [(0.5, 0.0), (0.0, 1.0), (0.0, -1.0), (-2.0, 0.3)])
def test_kl_is_positive_away_from_the_standard_normal(mean, logvar):
    assert kl_divergence(torch.full((2, 4, 8, 8), mean), torch.full((2, 4, 8, 8), logvar)).item() > 0


def test_kl_is_the_closed_form_summed_over_latents_and_averaged_over_the_batch():
    # KL(N(1, e) || N(0, 1)) = 0.5 (1 + e - 1 - 1) per element; sample 0 has 4 such elements,
    # sample 1 is exactly N(0, 1): the batch mean is half of sample 0's sum.
    mean = torch.tensor([[1.0] * 4, [0.0] * 4])
    logvar = torch.tensor([[1.0] * 4, [0.0] * 4])
    expected = 4 * 0.5 * (1 + math.e - 1 - 1) / 2
    assert kl_divergence(mean, logvar).item() == pytest.approx(expected, rel=1e-6)


def test_loss_is_summed_squared_error_plus_weighted_kl():
    x, recon = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)
    mean, logvar = torch.ones(2, 3), torch.zeros(2, 3)
    loss, parts = vae_loss(recon, x, mean, logvar, kl_weight=0.1)
    assert parts["recon"].item() == pytest.approx(16 * 0.25)  # per image: 16 pixels, each off by 0.5
    assert parts["kl"].item() == pytest.approx(3 * 0.5)
    assert loss.item() == pytest.approx(4.0 + 0.1 * 1.5)


def test_reconstruction_error_falls_within_thirty_adam_steps():
    torch.manual_seed(0)
    x = squares_and_discs(16, 16)
    vae = AutoencoderKL(VAEConfig(downsample=2, latent_channels=4, channels=16), 16, 1)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        recon, mean, logvar = vae(x, generator=g)
        loss, parts = vae_loss(recon, x, mean, logvar, kl_weight=1e-4)
        losses.append(parts["recon"].item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.3 * losses[0]


def test_image_size_must_divide_by_the_downsample_factor():
    with pytest.raises(ValueError, match="28 is not a multiple of model.downsample 8"):
        AutoencoderKL(VAEConfig(downsample=8), 28, 1)


@pytest.mark.parametrize("downsample", [3, 6, 12])
def test_downsample_must_be_a_power_of_two(downsample):
    with pytest.raises(ValidationError, match="power of 2"):
        VAEConfig(downsample=downsample)
