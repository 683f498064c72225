"""The contrastive loss and the CLIP towers, before any training."""

import math

import torch

from vdcli.data import synthetic_shapes, to_float
from vdcli.models.clip import CLIP, CLIPConfig, clip_loss
from vdcli.tokenizer import Tokenizer
from vdcli.trainer import seeded_init


def test_clip_loss_is_symmetric_and_zero_for_a_perfect_match():
    logits = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(clip_loss(logits), clip_loss(logits.T))
    assert clip_loss(100 * torch.eye(8)) < 1e-6
    assert torch.isclose(clip_loss(torch.zeros(8, 8)), torch.tensor(math.log(8)))


def test_clip_loss_at_initialisation_is_about_log_batch():
    """An untrained CLIP cannot tell which caption is whose: every pairing is about equally likely."""
    batch = 32
    shapes = synthetic_shapes(batch, 16, seed=0)
    tokenizer = Tokenizer.train([f"a {c}" for c in shapes.classes], max_length=8)
    with seeded_init(0, "clip"):
        model = CLIP(CLIPConfig(), 16, 1, tokenizer.vocab_size).eval()
    ids, mask = tokenizer.encode([f"a {shapes.classes[int(y)]}" for y in shapes.labels])
    with torch.no_grad():
        loss = clip_loss(model(to_float(shapes.images), ids, mask))
    assert abs(loss.item() - math.log(batch)) < 0.3, loss.item()


def _text_tower():
    tokenizer = Tokenizer.train(["a red disk", "a blue square on top"], max_length=8)
    with seeded_init(0, "clip"):
        model = CLIP(CLIPConfig(), 16, 1, tokenizer.vocab_size).eval()
    ids, mask = tokenizer.encode(["a red disk", "a blue square on top"])
    return model.text, ids, mask


def test_text_attention_maps_are_causal_probabilities_one_per_layer():
    text, ids, mask = _text_tower()
    maps = text.attention_maps(ids, mask)
    B, L = ids.shape
    assert len(maps) == text.cfg.depth and all(m.shape == (B, text.cfg.heads, L, L) for m in maps)
    above = torch.ones(L, L, dtype=torch.bool).triu(1)
    for m in maps:
        assert torch.allclose(m.sum(-1), torch.ones(B, text.cfg.heads, L), atol=1e-6)
        assert m[..., above].abs().max() == 0 and (m[..., ~above] > 0).all()


def test_text_attention_maps_are_the_probabilities_the_tower_computes():
    """The second layer's map depends on the first layer's output: the maps are of the real forward."""
    text, ids, mask = _text_tower()
    maps = text.attention_maps(ids, mask)
    with torch.no_grad():
        block = text.blocks[0]
        x = text.token_embed(ids) + text.pos_embed[:, :ids.shape[1]]
        _, first = block.attn(block.norm1(x), need_weights=True)
        second_block = text.blocks[1]
        _, second = second_block.attn(second_block.norm1(block(x)), need_weights=True)
    assert torch.allclose(maps[0], first, atol=1e-6) and torch.allclose(maps[1], second, atol=1e-6)


def _text_encoder():
    from vdcli.models.clip import TextConfig, TextTransformer
    from vdcli.tasks.clip import TextEncoder

    tokenizer = Tokenizer.train(["a bold seven leaning right", "a thin two"], max_length=8)
    with seeded_init(0, "clip"):
        tower = TextTransformer(TextConfig(dim=32, depth=2, heads=4, max_length=8), tokenizer.vocab_size)
    return TextEncoder(tower, tokenizer)


def test_words_attend_to_earlier_words_only_and_each_row_sums_to_one():
    from vdcli.tasks.text_attention import text_attention

    result = text_attention(_text_encoder(), "a bold seven leaning right")
    assert result.tokens == ["a", "bold", "seven", "leaning", "right", "<end>"] and result.unknown == []
    assert len(result.maps) == 2 and all(m.shape == (4, 6, 6) for m in result.maps)  # per layer (heads, L, L)
    for matrix in result.maps + result.per_layer() + result.per_layer(head=3):
        assert torch.allclose(matrix.sum(-1), torch.ones(matrix.shape[:-1]), atol=1e-5)
        assert (matrix.triu(1) == 0).all()  # token i reads tokens 0..i only
        assert (matrix[..., ~result.hidden] > 0).all()  # and every one of those a little
    assert torch.equal(result.hidden, torch.ones(6, 6, dtype=torch.bool).triu(1))


def test_the_text_attention_picture_marks_the_causal_mask(tmp_path):
    from vdcli import images
    from vdcli.tasks.text_attention import text_attention

    result = text_attention(_text_encoder(), "a bold seven")
    path = images.token_attention_image(result.per_layer(), result.tokens, ["layer 0", "layer 1"], tmp_path / "t.png", result.hidden)
    assert path.is_file() and path.stat().st_size > 2000


def test_a_text_ldm_and_its_clip_show_the_same_attention_and_an_image_model_is_refused():
    from pathlib import Path

    import pytest

    from vdcli.checkpoint import Checkpoint
    from vdcli.errors import VdError
    from vdcli.tasks.text_attention import load_text_tower, text_attention

    tokenizer = Tokenizer.train(["a bold seven leaning right"], max_length=8)
    cfg = CLIPConfig(embed_dim=16, image=dict(patch_size=4, dim=32, depth=1, heads=2), text=dict(dim=32, depth=2, heads=2, max_length=8))
    with seeded_init(0, "clip"):
        weights = CLIP(cfg, 16, 1, tokenizer.vocab_size).state_dict()
    meta = {"model": cfg.model_dump(), "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.to_json()}
    clip = Checkpoint(Path("c.safetensors"), "clip", meta, {f"model.{k}": v for k, v in weights.items()})
    ldm = Checkpoint(Path("t.safetensors"), "ldm", {"conditioning": "text", "clip": meta}, {f"clip.{k}": v for k, v in weights.items()})
    cpu = torch.device("cpu")
    a, b = (text_attention(load_text_tower(c, cpu), "a bold seven") for c in (clip, ldm))
    assert a.tokens == b.tokens and all(torch.equal(x, y) for x, y in zip(a.maps, b.maps))
    for kind, extra in (("ldm", {"conditioning": "class"}), ("vit", {}), ("vae", {})):
        with pytest.raises(VdError, match="no text tower"):
            load_text_tower(Checkpoint(Path("x.safetensors"), kind, extra, {}), cpu)
