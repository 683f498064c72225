"""Fine-tuning (init_from): a new run starts from another run's trained weights, with a fresh optimiser."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vdcli import trainer
from vdcli.checkpoint import load_checkpoint, save_checkpoint
from vdcli.cli import app
from vdcli.errors import VdError
from vdcli.finetune import init_from
from vdcli.models.unet import UNetConfig
from vdcli.tasks.ldm import build_denoiser
from vdcli.tasks.vit import build_classifier

TINY_VIT = [
    "--set", "data.name=synthetic", "--set", "data.limit=128",
    "--set", "model.dim=32", "--set", "model.depth=1", "--set", "model.heads=2", "--set", "model.patch_size=7",
    "--set", "train.steps=6", "--set", "train.batch_size=32", "--set", "train.eval_every=6",
    "--set", "train.warmup_steps=2", "--set", "train.log_every=3", "--set", "train.ema_decay=0.9", "--device", "cpu",
]


def vd(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def recipe(tmp_path, name, kind="vit"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"kind: {kind}\n")
    return path


@pytest.fixture
def source(tmp_path):
    result = vd("train-vit", recipe(tmp_path, "source"), *TINY_VIT)
    assert result.exit_code == 0, result.output
    return Path("runs/source/latest").resolve()


def test_init_from_starts_from_the_source_weights_with_a_fresh_optimiser(tmp_path, source, monkeypatch):
    at_start = {}
    adamw = trainer.adamw

    def first_weights(model, *args):  # the optimiser is made after init_from and before the first step
        at_start.update({k: v.clone() for k, v in model.state_dict().items()})
        return adamw(model, *args)

    def no_state(*args):
        raise AssertionError("the optimiser state of a run was read")

    monkeypatch.setattr(trainer, "adamw", first_weights)
    monkeypatch.setattr(trainer, "load_train_state", no_state)
    result = vd("train-vit", recipe(tmp_path, "tuned"), *TINY_VIT, "--set", f"init_from={source}")
    assert result.exit_code == 0, result.output
    assert "init_from: weights of" in result.output and "EMA" in result.output
    trained = load_checkpoint(source / "checkpoint.safetensors").trained()  # the EMA weights
    assert at_start.keys() == trained.keys() and all(torch.equal(at_start[k], trained[k]) for k in trained)
    tuned = Path("runs/tuned/latest").resolve()
    assert tuned != source
    ckpt = load_checkpoint(tuned / "checkpoint.safetensors")
    assert ckpt.meta["step"] == 6 and ckpt.meta["init_from"] == str(source / "checkpoint.safetensors")


def test_a_mismatched_shape_is_one_line_and_exit_2(tmp_path, source):
    result = vd("train-vit", recipe(tmp_path, "wider"), *TINY_VIT, "--set", "model.dim=64", "--set", f"init_from={source}")
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert "init_from:" in result.output and "is (" in result.output and "in the recipe's network" in result.output
    assert not list(Path("runs/wider").glob("2*/checkpoint.safetensors"))


def test_a_checkpoint_of_another_kind_is_one_line(tmp_path, source):
    tiny = ["--set", "data.name=synthetic", "--set", "data.limit=64", "--set", "data.image_size=16", "--set", "model.channels=8",
            "--set", "train.steps=2", "--set", "train.batch_size=32", "--set", "train.warmup_steps=1"]  # cheap if it trained anyway
    result = vd("train-vae", recipe(tmp_path, "vae", kind="vae"), *tiny, "--set", f"init_from={source}", "--device", "cpu")
    assert result.exit_code == 2
    assert "init_from:" in result.output and "ViT" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_new_class_count_reinitialises_only_the_head(source):
    meta = load_checkpoint(source / "checkpoint.safetensors").meta
    three = {**meta, "data": {**meta["data"], "classes": ["a", "b", "c"]}}
    torch.manual_seed(5)
    model = build_classifier(three)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    _, note = init_from(model, str(source), "vit")
    trained = load_checkpoint(source / "checkpoint.safetensors").trained()
    for key, value in model.state_dict().items():
        expected = fresh[key] if key.startswith("head.") else trained[key]
        assert torch.equal(value, expected), key
    assert model.head.weight.shape[0] == 3 and "label table (head.weight, head.bias) re-initialised for 3 rows" in note


def test_a_denoiser_keeps_all_but_its_class_embedding(tmp_path):
    def denoiser(classes):
        meta = {"model": {"arch": "unet", **UNetConfig(channels=16, channel_mult=[1], blocks_per_level=1, heads=2).model_dump()},
                "latent_shape": [2, 8, 8], "data": {"classes": [str(c) for c in range(classes)]}}
        return build_denoiser(meta)

    torch.manual_seed(0)
    mnist = denoiser(10)
    save_checkpoint(tmp_path / "ldm.safetensors", "ldm", {"model": mnist}, {"step": 100})
    torch.manual_seed(1)
    fashion = denoiser(4)
    table = fashion.cond.class_emb.weight.clone()
    _, note = init_from(fashion, str(tmp_path / "ldm.safetensors"), "ldm")
    assert torch.equal(fashion.cond.class_emb.weight, table) and "cond.class_emb.weight" in note
    others = [k for k in mnist.state_dict() if k != "cond.class_emb.weight"]
    assert others and all(torch.equal(fashion.state_dict()[k], mnist.state_dict()[k]) for k in others)
    with pytest.raises(VdError, match="init_from: .* in the recipe's network"):
        wide = build_denoiser({"model": {"arch": "unet", **UNetConfig(channels=32, channel_mult=[1], blocks_per_level=1, heads=2).model_dump()},
                               "latent_shape": [2, 8, 8], "data": {"classes": ["a"]}})
        init_from(wide, str(tmp_path / "ldm.safetensors"), "ldm")
