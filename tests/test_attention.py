"""The one attention module (self-, causal or cross-), the models that use it, and the denoisers' text."""

import inspect

import pytest
import torch
from torch import nn

from vdcli.conditioning import Cond
from vdcli.models import attention, clip, controlnet, dit, embeddings, patches, unet, vae, vit
from vdcli.models.attention import Attention, attend, recording
from vdcli.models.clip import CLIP, CLIPConfig, TextConfig
from vdcli.models.dit import DiT, DiTConfig
from vdcli.models.unet import UNet, UNetConfig
from vdcli.models.vit import ViT, ViTConfig


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


# --- one module, every mode ---------------------------------------------------------------------

MODES = {  # name -> (module kwargs, call kwargs beyond x)
    "self": ({}, {}),
    "causal": ({"causal": True}, {}),
    "cross": ({"context_dim": 12}, {"context": _context()[0], "context_mask": _context()[1]}),
}


def _mode(name, seed=0):
    torch.manual_seed(seed)
    build, call = MODES[name]
    return Attention(16, 4, **build).eval(), call, torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", MODES)
def test_the_probabilities_compute_what_the_fused_kernel_computes_in_every_mode(mode):
    attn, call, x = _mode(mode)
    explicit, probs = attn(x, **call, need_weights=True)
    assert torch.allclose(attn(x, **call), explicit, atol=1e-6)
    assert (probs >= 0).all() and torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-6)


def test_causal_probabilities_are_zero_above_the_diagonal_and_the_first_token_sees_itself():
    attn, call, x = _mode("causal")
    _, probs = attn(x, need_weights=True)  # (B, h, T, T)
    T = x.shape[1]
    above = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert probs[..., above].abs().max() == 0
    assert (probs[..., ~above] > 0).all()  # and nothing below it is masked
    assert torch.equal(probs[..., 0, 0], torch.ones(2, 4))


def test_a_causal_output_does_not_depend_on_later_tokens():
    attn, _, x = _mode("causal")
    later = x.clone()
    later[:, 5:] += 1.0
    assert torch.equal(attn(later)[:, :5], attn(x)[:, :5])
    assert (attn(later)[:, 5:] - attn(x)[:, 5:]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_queries_are_the_first_rows_of_the_full_attention(mode):
    attn, call, x = _mode(mode)
    full, probs = attn(x, **call, need_weights=True)
    assert attn(x, **call, queries=3).shape == (2, 3, 16)
    assert torch.allclose(attn(x, **call, queries=3), attn(x, **call)[:, :3], atol=1e-6)
    first, first_probs = attn(x, **call, need_weights=True, queries=3)
    assert torch.allclose(first, full[:, :3], atol=1e-6) and torch.allclose(first_probs, probs[:, :, :3], atol=1e-6)


def test_a_cross_attention_cannot_be_causal_and_a_self_attention_takes_no_context_mask():
    with pytest.raises(ValueError, match="cannot be causal"):
        Attention(16, 4, context_dim=8, causal=True)
    with pytest.raises(ValueError, match="without a context_dim"):
        Attention(16, 4)(torch.randn(1, 3, 16), context_mask=torch.ones(1, 3, dtype=torch.bool))


def test_split_and_merge_heads_are_inverse_views_with_each_head_contiguous():
    x = torch.randn(2, 5, 12)
    heads = attention.split_heads(x, 3)  # (B, h, T, d)
    assert heads.shape == (2, 3, 5, 4) and heads.stride(-1) == 1
    assert torch.equal(heads[:, 1], x[..., 4:8])  # head 1 is features 4..7 of every token
    assert torch.equal(attention.merge_heads(heads), x)


# --- the models use it ----------------------------------------------------------------------------

MODEL_FILES = (attention, clip, controlnet, dit, embeddings, patches, unet, vae, vit)


def _models():
    torch.manual_seed(0)
    text = TextConfig(dim=16, depth=1, heads=2, max_length=4)
    return {
        "vit": ViT(ViTConfig(patch_size=4, dim=16, depth=1, heads=2), 8, 1, 3),
        "clip": CLIP(CLIPConfig(embed_dim=8, image=ViTConfig(patch_size=4, dim=16, depth=1, heads=2), text=text), 8, 1, 5),
        "dit": DiT(DiTConfig(patch_size=2, dim=16, depth=1, heads=2), 4, 1, 0, context_dim=8),
        "unet": UNet(UNetConfig(channels=8, channel_mult=[1], blocks_per_level=1, heads=2), 4, 1, 0, context_dim=6),
    }


def test_the_models_define_no_attention_class_but_the_one_and_the_unets_convolutional_pair():
    classes = {cls for module in MODEL_FILES for _, cls in inspect.getmembers(module, inspect.isclass)
               if issubclass(cls, nn.Module) and "attention" in cls.__name__.lower()}
    assert classes == {attention.Attention, unet.SelfAttention, unet.CrossAttention}


@pytest.mark.parametrize("name", ["vit", "clip", "dit", "unet"])
def test_every_attention_in_the_models_is_the_one_module(name):
    """Whatever holds query/key/value projections is ``Attention``, or the U-Net's conv SelfAttention."""
    model = _models()[name]
    holders = [m for m in model.modules() if any(hasattr(m, p) for p in ("qkv", "q", "kv"))]
    assert holders and all(type(m) in (attention.Attention, unet.SelfAttention) for m in holders)
    assert all(type(m.attn) is attention.Attention for m in model.modules() if isinstance(m, unet.CrossAttention))


# Captured from the code before the one Attention (280dded), for the models of _models():
# the ViT's, CLIP's and the DiT's whole state dicts; the U-Net's attention layers (its other
# layers are not this module's business).
STATE_DICTS = {
    "vit": {"cls_token": (1, 1, 16), "pos_embed": (1, 5, 16), "patch_embed.proj.weight": (16, 16), "patch_embed.proj.bias": (16,),
            "blocks.0.norm1.weight": (16,), "blocks.0.norm1.bias": (16,), "blocks.0.attn.qkv.weight": (48, 16),
            "blocks.0.attn.qkv.bias": (48,), "blocks.0.attn.proj.weight": (16, 16), "blocks.0.attn.proj.bias": (16,),
            "blocks.0.norm2.weight": (16,), "blocks.0.norm2.bias": (16,), "blocks.0.mlp.fc1.weight": (32, 16),
            "blocks.0.mlp.fc1.bias": (32,), "blocks.0.mlp.fc2.weight": (16, 32), "blocks.0.mlp.fc2.bias": (16,),
            "norm.weight": (16,), "norm.bias": (16,), "head.weight": (3, 16), "head.bias": (3,)},
    "clip": {"logit_scale": (), "text.pos_embed": (1, 4, 16), "text.token_embed.weight": (5, 16),
             "text.blocks.0.norm1.weight": (16,), "text.blocks.0.norm1.bias": (16,), "text.blocks.0.attn.qkv.weight": (48, 16),
             "text.blocks.0.attn.qkv.bias": (48,), "text.blocks.0.attn.proj.weight": (16, 16), "text.blocks.0.attn.proj.bias": (16,),
             "text.blocks.0.norm2.weight": (16,), "text.blocks.0.norm2.bias": (16,), "text.blocks.0.mlp.fc1.weight": (32, 16),
             "text.blocks.0.mlp.fc1.bias": (32,), "text.blocks.0.mlp.fc2.weight": (16, 32), "text.blocks.0.mlp.fc2.bias": (16,),
             "text.norm.weight": (16,), "text.norm.bias": (16,), "text_proj.weight": (8, 16)},  # + "image.": the ViT's
    "dit": {"pos_embed": (1, 4, 16), "patch_embed.proj.weight": (16, 4), "patch_embed.proj.bias": (16,),
            "cond.time_mlp.0.weight": (16, 256), "cond.time_mlp.0.bias": (16,), "cond.time_mlp.2.weight": (16, 16),
            "cond.time_mlp.2.bias": (16,), "cond.text_proj.weight": (16, 8), "cond.text_proj.bias": (16,),
            "blocks.0.attn.qkv.weight": (48, 16), "blocks.0.attn.qkv.bias": (48,), "blocks.0.attn.proj.weight": (16, 16),
            "blocks.0.attn.proj.bias": (16,), "blocks.0.mlp.fc1.weight": (64, 16), "blocks.0.mlp.fc1.bias": (64,),
            "blocks.0.mlp.fc2.weight": (16, 64), "blocks.0.mlp.fc2.bias": (16,), "blocks.0.ada.1.weight": (96, 16),
            "blocks.0.ada.1.bias": (96,), "blocks.0.norm_cross.weight": (16,), "blocks.0.norm_cross.bias": (16,),
            "blocks.0.cross.q.weight": (16, 16), "blocks.0.cross.q.bias": (16,), "blocks.0.cross.kv.weight": (32, 8),
            "blocks.0.cross.kv.bias": (32,), "blocks.0.cross.proj.weight": (16, 16), "blocks.0.cross.proj.bias": (16,),
            "ada.1.weight": (32, 16), "ada.1.bias": (32,), "out.weight": (4, 16), "out.bias": (4,)},
    "unet": {f"{layer}.{key}": shape for layer in ("down.0", "mid1", "up.0", "up.1") for key, shape in {
        "attn.norm.weight": (8,), "attn.norm.bias": (8,), "attn.qkv.weight": (24, 8, 1, 1), "attn.qkv.bias": (24,),
        "attn.proj.weight": (8, 8, 1, 1), "attn.proj.bias": (8,), "cross.norm.weight": (8,), "cross.norm.bias": (8,),
        "cross.attn.q.weight": (8, 8), "cross.attn.q.bias": (8,), "cross.attn.kv.weight": (16, 6),
        "cross.attn.kv.bias": (16,), "cross.attn.proj.weight": (8, 8), "cross.attn.proj.bias": (8,)}.items()},
}
STATE_DICTS["clip"].update({f"image.{k}": v for k, v in STATE_DICTS["vit"].items() if k != "head.weight" and k != "head.bias"})
STATE_DICTS["clip"].update({"image.head.weight": (8, 16), "image.head.bias": (8,)})


@pytest.mark.parametrize("name", ["vit", "clip", "dit", "unet"])
def test_state_dict_keys_and_shapes_are_those_of_the_checkpoints_already_written(name):
    state = {k: tuple(v.shape) for k, v in _models()[name].state_dict().items()}
    if name == "unet":
        state = {k: v for k, v in state.items() if ".attn." in k or ".cross." in k}
    assert state == STATE_DICTS[name]


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
