"""Captions are measured on the pixels, and the tokenizer turns them into ids and back."""

import pytest
import torch

from vdcli.captions import measure
from vdcli.tokenizer import Tokenizer


def stroke(width: int, shear: float = 0.0, length: int = 16) -> torch.Tensor:
    """A vertical bar ``width`` pixels wide on a 28x28 canvas; ``shear`` > 0 moves its top right."""
    image = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    top = (28 - length) // 2
    for y in range(top, top + length):
        x0 = 14 - width // 2 + round(shear * (top + length / 2 - y))
        image[0, 0, y, x0 : x0 + width] = 255
    return image


def test_thickness_is_the_stroke_width_in_pixels():
    thin, bold = measure(torch.cat([stroke(2), stroke(6)]))["thickness"].tolist()
    assert abs(thin - 2) < 1 and abs(bold - 6) < 1.5 and bold > thin


def test_slant_is_positive_for_a_stroke_whose_top_leans_right():
    left, upright, right = measure(torch.cat([stroke(3, -0.4), stroke(3), stroke(3, 0.4)]))["slant"].tolist()
    assert left < -0.2 and abs(upright) < 0.05 and right > 0.2


def test_size_grows_with_the_stroke():
    small, large = measure(torch.cat([stroke(3, length=8), stroke(3, length=20)]))["size"].tolist()
    assert large > small * 2


def test_an_images_measurements_depend_neither_on_its_batch_nor_on_where_the_stroke_sits():
    images = torch.cat([stroke(2), stroke(6, 0.3), stroke(3, -0.2, length=10)])
    batch = measure(images)
    moved = measure(torch.roll(images, (3, -4), dims=(2, 3)))  # every stroke 3 rows down, 4 columns left
    for i in range(len(images)):
        alone = measure(images[i : i + 1])
        for k in batch:
            assert batch[k][i].item() == pytest.approx(alone[k].item(), abs=1e-5), k
            assert moved[k][i].item() == pytest.approx(alone[k].item(), abs=1e-4), k


def test_tokenizer_round_trip_ends_every_prompt_and_pads_batches():
    tok = Tokenizer.train(["a bold seven leaning right", "the digit two", "7"], max_length=8)
    ids, mask = tok.encode(["a bold seven", "7", ""])
    assert ids.shape == mask.shape == (3, 4) and mask.sum(1).tolist() == [4, 2, 1]  # [END] even for ""
    assert tok.decode(ids[0]) == "a bold seven" and tok.decode(ids[2]) == ""
    assert (ids[~mask] == tok.pad_id).all()
    again = Tokenizer.from_json(tok.to_json(), 8)
    assert torch.equal(again.encode(["a bold seven"])[0], ids[:1, :4])


def test_an_unknown_word_is_named_and_becomes_unk():
    tok = Tokenizer.train(["a bold seven"], max_length=8)
    assert tok.unknown("a purple seven") == ["purple"]
    assert tok.encode(["purple"])[0][0, 0].item() == tok.unk_id
