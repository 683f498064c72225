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


def test_identical_captions_are_all_positives():
    """Two images captioned "7" cannot be told apart by their captions: scoring both "7"s equally
    is then the best answer (no gradient), where the plain loss would push them apart."""
    from vdcli.tasks.clip import same_strings

    captions = ["7", "a bold 2", "7", "3"]
    same = same_strings(captions)
    assert same.tolist() == [[True, False, True, False], [False, True, False, False],
                             [True, False, True, False], [False, False, False, True]]
    logits = (50 * same.float()).requires_grad_()  # each image equally sure of every caption with its string
    clip_loss(logits, same).backward()
    assert logits.grad.abs().max() < 1e-6
    logits.grad = None
    clip_loss(logits).backward()
    assert logits.grad.abs().max() > 0.1
    distinct = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(clip_loss(distinct, torch.eye(4, dtype=torch.bool)), clip_loss(distinct))


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
