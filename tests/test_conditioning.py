"""What the denoiser is conditioned on: a class, the null class, or nothing; and the latents it sees."""

from pathlib import Path

import pytest
import torch
from test_cli import TINY_LDM, ok, recipe, vd

from vdcli.checkpoint import load_checkpoint
from vdcli.conditioning import Cond, guided
from vdcli.models.embeddings import ConditionEmbedding
from vdcli.models.unet import UNet, UNetConfig
from vdcli.models.vae import LatentNorm
from vdcli.tasks.ldm import load_ldm


def test_latent_norm_standardises_every_element_including_the_posterior_noise():
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.03, 1.0, 2.0]).view(3, 1, 1)  # a quiet element and two loud ones
    mean = torch.randn(20000, 3, 1, 1, generator=g) * scale + 5.0
    logvar = torch.full_like(mean, 2 * torch.log(torch.tensor(0.01)))
    norm = LatentNorm.fit(mean, logvar)
    z = norm(mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g))
    assert torch.allclose(z.mean(0), torch.zeros(3, 1, 1), atol=0.03)
    assert torch.allclose(z.std(0), torch.ones(3, 1, 1), atol=0.03)
    assert torch.allclose(norm.inverse(norm(mean)), mean, atol=1e-5)


def test_latent_norm_puts_a_floor_under_an_element_that_never_varies():
    mean = torch.randn(100, 2, 1, 1)
    mean[:, 1] = 0.0
    norm = LatentNorm.fit(mean, torch.full_like(mean, -60.0))
    assert torch.isfinite(norm(mean)).all() and norm.std[1].item() > 0


def test_the_null_label_reaches_the_network_at_sampling_as_in_training(tmp_path):
    ok("train-ldm", recipe(tmp_path, "l", "ldm"), *TINY_LDM, "--quiet")
    ldm = load_ldm(load_checkpoint(Path("runs/l/latest/checkpoint.safetensors")), torch.device("cpu"))
    seen = []
    ldm.denoiser.register_forward_hook(lambda module, args, out: seen.append(args[2].labels.clone()))
    x, t = torch.randn(2, *ldm.latent_shape), torch.tensor([500, 500])
    ldm.model_fn(torch.full((2,), ldm.null_class), guidance=1.0)(x, t)
    assert seen[-1].tolist() == [ldm.null_class] * 2  # the same label the training loss drops to
    ldm.model_fn(torch.tensor([0, 1]), guidance=3.0)(x, t)
    assert seen[-1].tolist() == [0, 1, ldm.null_class, ldm.null_class]  # guided: cond and null in one batch


def test_class_embeddings_start_small_beside_the_time_embedding():
    emb = ConditionEmbedding(10, 128)
    t = torch.arange(0, 1000, 100)
    time_norm = emb.time_mlp[2](torch.nn.functional.silu(emb.time_mlp[0](torch.randn(10, 256)))).norm(dim=1).mean()
    assert emb.class_emb.weight.norm(dim=1).max() < 0.5 * time_norm
    assert emb(t, torch.arange(10)).shape == (10, 128)


def test_an_unconditional_denoiser_has_no_label_input():
    net = UNet(UNetConfig(channels=16, blocks_per_level=1), 8, 4, num_classes=0)
    assert net.cond.class_emb is None
    assert net(torch.randn(2, 4, 8, 8), torch.tensor([1, 2])).shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="without a class input"):
        net(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), Cond(labels=torch.tensor([0, 1])))


def test_conditioning_none_trains_samples_and_inpaints_without_classes(tmp_path):
    out = ok("train-ldm", recipe(tmp_path, "u", "ldm"), *TINY_LDM, "--set", "conditioning=none")
    assert "denoiser trained" in out
    ckpt = load_checkpoint(Path("runs/u/latest/checkpoint.safetensors"))
    assert ckpt.meta["conditioning"] == "none"
    assert not any("class_emb" in k for k in ckpt.tensors)
    out = ok("sample", "--steps", 3, "--n", 4, "--out", tmp_path / "s")
    assert "4 images" in out and "unconditional" in out
    ok("inpaint", "synthetic:test:0", "--mask", "box:0,0,8,16", "--steps", 3, "--n", 2, "--out", tmp_path / "i")


@pytest.mark.parametrize("command", [("sample", "--class", "3"), ("inpaint", "synthetic:test:0", "--mask", "box:0,0,8,8", "--class", "3")])
def test_an_unconditional_model_refuses_a_class_in_one_line(tmp_path, command):
    ok("train-ldm", recipe(tmp_path, "u", "ldm"), *TINY_LDM, "--set", "conditioning=none", "--quiet")
    result = vd(*command, "--steps", 2, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "conditioning: none" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2 and not (tmp_path / "o").exists()


# --- guidance, once -------------------------------------------------------------------------------


def scaled_by_class(x, t, cond):
    return x * (cond.labels[:, None].float() + 1)  # each class scales x differently


def test_guidance_with_w_one_is_exactly_the_conditional_prediction():
    x, t, y = torch.randn(3, 2), torch.zeros(3, dtype=torch.long), Cond(labels=torch.tensor([1, 2, 3]))
    null = Cond(labels=torch.full((3,), 10))
    assert torch.equal(guided(scaled_by_class, y, 1.0, reference=null)(x, t), scaled_by_class(x, t, y))


def test_guidance_with_w_zero_is_the_reference():
    x, t, y = torch.randn(3, 2), torch.zeros(3, dtype=torch.long), Cond(labels=torch.tensor([1, 2, 3]))
    null = Cond(labels=torch.full((3,), 10))
    assert torch.allclose(guided(scaled_by_class, y, 0.0, reference=null)(x, t), scaled_by_class(x, t, null))


def test_guidance_extrapolates_from_the_reference_through_the_condition():
    x, t, w = torch.randn(3, 2), torch.zeros(3, dtype=torch.long), 3.0
    y, null = Cond(labels=torch.tensor([1, 2, 3])), Cond(labels=torch.full((3,), 10))
    cond, uncond = scaled_by_class(x, t, y), scaled_by_class(x, t, null)
    assert torch.equal(guided(scaled_by_class, y, w, reference=null)(x, t), uncond + w * (cond - uncond))


def test_guidance_makes_one_batched_call_and_w_one_makes_a_conditional_one():
    calls = []

    def net(x, t, cond):
        calls.append(cond.labels.tolist())
        return x

    x, t = torch.randn(2, 3), torch.zeros(2, dtype=torch.long)
    y, null = Cond(labels=torch.tensor([1, 2])), Cond(labels=torch.full((2,), 10))
    guided(net, y, 4.0, reference=null)(x, t)
    guided(net, y, 1.0, reference=null)(x, t)
    assert calls == [[1, 2, 10, 10], [1, 2]]


def test_autoguidance_is_the_same_formula_with_a_guide_network_as_the_reference():
    x, t = torch.randn(3, 4), torch.tensor([1, 2, 3])
    net, guide = (lambda x, t, c: 2 * x), (lambda x, t, c: x)
    assert torch.equal(guided(net, None, 1.0, guide=guide)(x, t), 2 * x)
    assert torch.equal(guided(net, None, 0.0, guide=guide)(x, t), x)
    assert torch.equal(guided(net, None, 3.0, guide=guide)(x, t), x + 3 * (2 * x - x))
    with pytest.raises(ValueError, match="exactly one reference"):
        guided(net, None, 3.0)


def test_a_condition_concatenates_and_splits_field_by_field():
    a = Cond(states=torch.randn(2, 5, 3), mask=torch.ones(2, 5, dtype=torch.bool), pooled=torch.randn(2, 3))
    b = Cond(states=torch.randn(1, 5, 3), mask=torch.zeros(1, 5, dtype=torch.bool), pooled=torch.randn(1, 3))
    both = Cond.cat([a, b])
    assert both.labels is None and both.states.shape == (3, 5, 3)
    assert torch.equal(both[2:].states, b.states) and torch.equal(both[:2].mask, a.mask)
