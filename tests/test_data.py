"""Datasets: one loader for every source, images fitted to the recipe's size, clear misses."""

import pytest
import torch
from PIL import Image

from vdcli.conditioning import parse_classes
from vdcli.data import fit_images, load_input, load_split, synthetic_shapes
from vdcli.errors import VdError
from vdcli.recipe import DataConfig


def test_synthetic_data_is_deterministic_and_balanced():
    a, b = synthetic_shapes(600, seed=0), synthetic_shapes(600, seed=0)
    assert torch.equal(a.images, b.images) and a.images.shape == (600, 1, 28, 28) and a.images.dtype == torch.uint8
    counts = torch.bincount(a.labels, minlength=len(a.classes))
    assert counts.min() > 60


def test_small_images_are_zero_padded_keeping_every_pixel():
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    padded = fit_images(images, 32, None)
    assert padded.shape == (2, 1, 32, 32) and torch.equal(padded[:, :, 2:30, 2:30], images)
    assert padded[:, :, :2].sum() == 0


def test_large_images_are_resized_and_centre_cropped_to_a_square():
    images = torch.zeros(1, 3, 40, 80, dtype=torch.uint8)
    assert fit_images(images, 20, 1).shape == (1, 1, 20, 20)


def test_folder_dataset_reads_one_class_per_sub_folder(tmp_path):
    for name, value in (("cats", 50), ("dogs", 200)):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (20, 16), (value, value, i)).save(tmp_path / "imgs" / name / f"{i}.png")
    cfg = DataConfig(name="folder", path=str(tmp_path / "imgs"), image_size=8)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert train.classes == ["cats", "dogs"] and train.images.shape == (18, 3, 8, 8) and len(test) == 2
    assert train.labels.tolist() == [0] * 9 + [1] * 9


def test_missing_dataset_offline_names_the_folder_and_the_fix(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(VdError, match="MNIST.*VD_DATA_ROOT"):
        load_split(DataConfig(name="mnist"), "train", tmp_path / "nowhere")


def test_dataset_reference_picks_one_image():
    image, what = load_input("synthetic:test:3", 28, 1)
    assert torch.equal(image, synthetic_shapes(500, seed=1).images[3]) and "synthetic:test:3" in what


def test_dataset_reference_out_of_range_is_an_error():
    with pytest.raises(VdError, match="has 500 images"):
        load_input("synthetic:test:999", 28, 1)


def test_missing_image_file_is_an_error():
    with pytest.raises(VdError, match="not found"):
        load_input("no/such.png", 28, 1)


def test_classes_by_name_index_list_or_all():
    classes = ["zero", "one", "two"]
    assert parse_classes("1", classes) == [1] and parse_classes("Two", classes) == [2]
    assert parse_classes("0,two", classes) == [0, 2] and parse_classes("all", classes) == [0, 1, 2]
    with pytest.raises(VdError, match="did you mean 'two'"):
        parse_classes("tow", classes)


def test_a_dataset_reference_without_a_size_keeps_its_native_size():
    image, _ = load_input("synthetic:test:0", None, None)
    assert image.shape == (1, 28, 28)


def test_an_image_file_without_a_size_is_left_as_it_is(tmp_path):
    Image.new("RGB", (48, 32)).save(tmp_path / "x.png")
    image, _ = load_input(str(tmp_path / "x.png"), None, None)
    assert image.shape == (3, 32, 48)


def test_mask_from_a_box_or_from_an_image(tmp_path):
    from vdcli.data import read_mask

    box = read_mask("box:0,4,8,8", 8)
    assert box[4:].all() and not box[:4].any()
    Image.fromarray((box.numpy() * 255).astype("uint8")).save(tmp_path / "m.png")
    assert torch.equal(read_mask(str(tmp_path / "m.png"), 8), box)
    with pytest.raises(VdError, match="box:X0,Y0,X1,Y1"):
        read_mask("box:1,2", 8)
