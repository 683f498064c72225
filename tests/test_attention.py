"""The one attention module (self- or cross-), and the denoisers that use it for text."""

import pytest
import torch

from vdcli.conditioning import Cond
from vdcli.models.attention import Attention, attend, recording
from vdcli.models.dit import DiT, DiTConfig
from vdcli.models.unet import UNet, UNetConfig


def _context(B=2, L=5, D=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(B, L, D, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 3:] = False  # the second prompt is shorter: two padding tokens
    return states, mask


def _perturb_zero_inits(model: torch.nn.Module, seed=1) -> None:
    """Zero-initialised outputs hide every input; give all parameters small random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_cross_attention_maps_image_tokens_to_their_own_shape():
    attn = Attention(16, 4, context_dim=12)
    states, mask = _context()
    y, probs = attn(torch.randn(2, 9, 16), states, mask, need_weights=True)
    assert y.shape == (2, 9, 16)
    assert probs.shape == (2, 4, 9, 5)  # (B, heads, image tokens, text tokens)


def test_padding_tokens_get_no_probability_and_rows_sum_to_one():
    attn = Attention(16, 4, context_dim=12)
    states, mask = _context()
    _, probs = attn(torch.randn(2, 9, 16), states, mask, need_weights=True)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 9))
    assert probs[1, :, :, 3:].abs().max() == 0
    assert probs[1, :, :, :3].min() > 0


def test_explicit_and_fused_paths_compute_the_same_function():
    torch.manual_seed(0)
    attn = Attention(16, 4, context_dim=12).eval()
    x = torch.randn(2, 9, 16)
    states, mask = _context()
    fused = attn(x, states, mask)
    explicit, _ = attn(x, states, mask, need_weights=True)
    assert torch.allclose(fused, explicit, atol=1e-5)


def _compiled_ops(fn, *args) -> set[str]:
    """The aten ops of ``fn``'s compiled forward graph (compiled with aot_eager: no inductor)."""
    from torch._dynamo.backends.common import aot_autograd

    ops: set[str] = set()

    def record(gm, _):
        ops.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    torch._dynamo.reset()
    out = torch.compile(fn, backend=aot_autograd(fw_compiler=record))(*args)
    return ops, out


def test_compiled_short_attention_takes_the_math_path_and_computes_the_same_function():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(3, 1, 1, 16, generator=g) > 0.3
    for kwargs in ({}, {"attn_mask": mask}, {"is_causal": True}):
        q, k, v = (torch.randn(3, 4, 16, 8, generator=g) for _ in range(3))  # 16 x 16 pairs a head
        eager = torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)
        assert torch.equal(attend(q, k, v, **kwargs), eager)  # eager: the fused kernel itself
        ops, out = _compiled_ops(lambda q, k, v: attend(q, k, v, **kwargs), q, k, v)  # noqa: B023
        assert torch.allclose(out, eager, atol=1e-5), kwargs
        assert not any("flash" in op for op in ops) and any("bmm" in op for op in ops), ops
    q = torch.randn(3, 4, 32, 8, generator=g)  # 32 x 32 pairs: the fused kernel, compiled too
    ops, _ = _compiled_ops(attend, q, q, q)
    assert any("flash" in op for op in ops), ops


def test_changing_a_real_token_changes_the_output_and_a_padding_token_does_not():
    torch.manual_seed(0)
    attn = Attention(16, 4, context_dim=12)
    x = torch.randn(2, 9, 16)
    states, mask = _context()
    base = attn(x, states, mask)
    real = states.clone()
    real[1, 1] += 1.0
    assert (attn(x, real, mask)[1] - base[1]).abs().max() > 1e-3
    assert torch.equal(attn(x, real, mask)[0], base[0])  # the other prompt's images are untouched
    pad = states.clone()
    pad[1, 4] += 100.0
    assert torch.allclose(attn(x, pad, mask), base, atol=1e-6)


def test_self_attention_refuses_a_context_and_cross_attention_needs_one():
    with pytest.raises(ValueError, match="without a context_dim"):
        Attention(16, 4)(torch.randn(1, 3, 16), torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="needs a context"):
        Attention(16, 4, context_dim=8)(torch.randn(1, 3, 16))


def test_self_attention_has_the_vit_attention_state_dict_keys():
    assert set(Attention(16, 4).state_dict()) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}


def _unet(context_dim=None):
    cfg = UNetConfig(channels=16, channel_mult=[1, 2], blocks_per_level=1, heads=4)
    return UNet(cfg, 8, 4, 0 if context_dim else 10, context_dim=context_dim)


def _dit(context_dim=None):
    return DiT(DiTConfig(patch_size=2, dim=32, depth=2, heads=4), 8, 4, 0 if context_dim else 10, context_dim=context_dim)


@pytest.mark.parametrize("build", [_unet, _dit], ids=["unet", "dit"])
def test_text_denoiser_reads_its_prompt(build):
    torch.manual_seed(0)
    net = build(context_dim=12)
    _perturb_zero_inits(net)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    states, mask = _context()
    pooled = states[:, 0]
    out = net(x, t, Cond(states=states, mask=mask, pooled=pooled))
    assert out.shape == x.shape
    changed = states.clone()
    changed[0, 2] = torch.randn(12)
    out2 = net(x, t, Cond(states=changed, mask=mask, pooled=pooled))
    assert (out2[0] - out[0]).abs().max() > 1e-4
    assert torch.allclose(out2[1], out[1], atol=1e-6)


@pytest.mark.parametrize("build", [_unet, _dit], ids=["unet", "dit"])
def test_untrained_text_denoiser_predicts_zero_and_class_models_have_no_cross_attention(build):
    net = build(context_dim=12)
    states, mask = _context()
    out = net(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), Cond(states=states, mask=mask))
    assert out.abs().max() == 0
    assert any(".cross." in k for k in net.state_dict())
    assert not any("cross" in k or "text_proj" in k for k in build().state_dict())
    with pytest.raises(ValueError, match="give it a context"):
        net(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]))


@pytest.mark.parametrize("build", [_unet, _dit], ids=["unet", "dit"])
def test_recording_collects_every_cross_attention_call(build):
    net = build(context_dim=12)
    states, mask = _context()
    with recording(net) as maps:
        net(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), Cond(states=states, mask=mask))
    assert maps and all(m.shape[0] == 2 and m.shape[-1] == 5 for m in maps)
    n = len(maps)
    net(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), Cond(states=states, mask=mask))
    assert len(maps) == n  # nothing is kept after the block
