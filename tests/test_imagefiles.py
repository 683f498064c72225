"""Image files: transparency is composited onto a background, 16 bits are scaled to 8, and an
image folder's files come with their captions from one listing."""

import json
import warnings

import pytest
import torch
from PIL import Image

from vdcli.data import load_input, load_split
from vdcli.errors import VdError
from vdcli.folders import read_folder
from vdcli.imagefiles import read_image
from vdcli.recipe import DataConfig, validate_recipe


def rgba(path, pixels):
    """A 1 x len(pixels) RGBA PNG."""
    im = Image.new("RGBA", (len(pixels), 1))
    im.putdata(pixels)
    im.save(path)
    return path


def test_a_half_transparent_pixel_is_blended_with_white(tmp_path):
    path = rgba(tmp_path / "a.png", [(0, 100, 200, 128)])
    # (a * colour + (255 - a) * 255) / 255 with a = 128, rounded
    expected = [round((128 * c + 127 * 255) / 255) for c in (0, 100, 200)]
    assert read_image(path)[:, 0, 0].tolist() == expected == [127, 177, 227]


def test_a_fully_transparent_pixel_is_the_background_whatever_colour_it_hides(tmp_path):
    path = rgba(tmp_path / "a.png", [(255, 0, 0, 0), (0, 255, 0, 0), (10, 20, 30, 255)])
    image = read_image(path)
    assert image.shape == (3, 1, 3)
    assert image[:, 0, 0].tolist() == image[:, 0, 1].tolist() == [255, 255, 255]
    assert image[:, 0, 2].tolist() == [10, 20, 30]  # opaque: the colour itself
    assert read_image(path, "#102030")[:, 0, 0].tolist() == [16, 32, 48]


def test_data_background_black_composites_a_folder_onto_black(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "f" / name).mkdir(parents=True)
        for i in range(10):
            im = Image.new("RGBA", (8, 8), (200, 200, 200, 0))  # transparent, hiding light gray
            im.paste((200, 100, 0, 255), (4, 0, 8, 8))  # the right half opaque orange
            im.save(tmp_path / "f" / name / f"{i}.png")
    black = load_split(DataConfig(name="folder", path=str(tmp_path / "f"), image_size=8, background="black"), "train")
    white = load_split(DataConfig(name="folder", path=str(tmp_path / "f"), image_size=8), "train")
    streamed = load_split(DataConfig(name="folder", path=str(tmp_path / "f"), image_size=8, background="black",
                                     stream=True, workers=0), "train")
    assert black.images[0, :, 0, 0].tolist() == [0, 0, 0] and white.images[0, :, 0, 0].tolist() == [255, 255, 255]
    assert torch.equal(streamed.images[torch.arange(len(streamed))], black.images)
    assert black.images[0, :, 0, 7].tolist() == white.images[0, :, 0, 7].tolist() == [200, 100, 0]


def test_data_background_must_be_a_colour():
    assert DataConfig(background="#ff8000").background == "#ff8000"
    with pytest.raises(VdError, match="data.background.*not a colour"):
        validate_recipe({"kind": "vae", "data": {"background": "blurple"}}, "vae")


def test_a_16_bit_gradient_spans_0_to_255(tmp_path):
    ramp = torch.arange(0, 65536, 257, dtype=torch.int32).repeat(4, 1)  # (4, 256): 0, 257, ..., 65535
    im = Image.new("I;16", (256, 4))
    im.frombytes(ramp.to(torch.int16).numpy().astype("<u2").tobytes())  # 16-bit little-endian samples
    im.save(tmp_path / "ramp.png")
    with Image.open(tmp_path / "ramp.png") as opened:
        assert opened.mode in ("I;16", "I")  # Pillow's reading of a 16-bit grayscale PNG
    image = read_image(tmp_path / "ramp.png")
    assert image.shape == (1, 4, 256) and image.dtype == torch.uint8
    assert image.min() == 0 and image.max() == 255 and abs(image.float().mean().item() - 127.5) < 0.01
    assert image[0, 0].tolist() == list(range(256))  # x / 257: each step of 257 is one level


def test_a_palette_png_with_a_transparency_byte_reads_without_a_warning_and_composites(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    im.putdata([0, 1, 2])
    alpha = bytes([0, 51, 255])  # red transparent, green one fifth opaque, blue opaque: a tRNS of bytes
    im.save(tmp_path / "p.png", transparency=alpha)
    with Image.open(tmp_path / "p.png") as opened:
        assert opened.mode == "P" and opened.info["transparency"] == alpha
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(tmp_path / "p.png", "black")
    assert [str(w.message) for w in caught] == []
    assert image[:, 0].T.tolist() == [[0, 0, 0], [0, 51, 0], [0, 0, 255]]


def test_gray_with_alpha_stays_one_channel_on_a_gray_background(tmp_path):
    im = Image.new("LA", (2, 1))
    im.putdata([(10, 0), (10, 255)])
    im.save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").tolist() == [[[255, 10]]]
    assert read_image(tmp_path / "la.png", "#ff0000")[:, 0, 0].tolist() == [255, 0, 0]  # a colour makes it RGB


def test_patchify_input_of_a_transparent_file_shows_the_background(tmp_path):
    path = rgba(tmp_path / "a.png", [(255, 0, 0, 0)] * 4)
    image, _ = load_input(str(path), None, None)
    assert image.unique().tolist() == [255]


def test_the_folder_listing_gives_each_file_its_captions(tmp_path):
    root = tmp_path / "f"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (4, 4), (i, 0, 0)).save(root / name / f"{i}.png")
    lines = [{"file_name": "cat/0.png", "text": "a sleepy cat"}, {"file_name": "dog/3.png", "text": ["a dog", "a good dog"]}]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    train = read_folder(root, "train")
    assert train.classes == ["cat", "dog"] and len(train.files) == len(train.labels) == len(train.captions) == 18
    by_name = {f"{f.parent.name}/{f.name}": (label, texts) for f, label, texts in zip(train.files, train.labels, train.captions)}
    assert by_name["cat/0.png"] == (0, ["a sleepy cat"]) and by_name["dog/3.png"] == (1, ["a dog", "a good dog"])
    assert by_name["dog/4.png"] == (1, [])  # no line: captioned from its class
    loaded = load_split(DataConfig(name="folder", path=str(root), image_size=4, limit=5), "train")
    assert loaded.texts == train.captions[:5] and len(loaded) == 5


def test_a_folder_without_metadata_has_no_captions_of_its_own(tmp_path):
    (tmp_path / "f").mkdir()
    for i in range(10):
        Image.new("L", (4, 4), i).save(tmp_path / "f" / f"{i}.png")
    assert read_folder(tmp_path / "f", "train").captions is None


def test_a_broken_metadata_line_names_the_file_and_the_line(tmp_path):
    (tmp_path / "f").mkdir()
    for i in range(10):
        Image.new("L", (4, 4), i).save(tmp_path / "f" / f"{i}.png")
    (tmp_path / "f" / "metadata.jsonl").write_text('{"file_name": "0.png", "text": "zero"}\n{"file_name": "gone.png", "text": "x"}\n')
    with pytest.raises(VdError, match=r"metadata.jsonl:2: file_name 'gone.png'"):
        read_folder(tmp_path / "f", "train")
    (tmp_path / "f" / "metadata.jsonl").write_text("not json\n")
    with pytest.raises(VdError, match=r"metadata.jsonl:1: not a JSON object"):
        read_folder(tmp_path / "f", "test")
